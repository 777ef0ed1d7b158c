"""Shared fixtures: loopback-only ICE (no STUN, 127.0.0.1 candidates) and SDK validators for every event.

Also, for the whole suite: each test is marked after the folder it lives in (tests/unit -> `unit`, and so on), so
`make test-fast` (-m unit) runs every unit test, a new file included; and hypothesis never judges a test by how
fast the machine is (no per-example deadline, no too-slow health check), only by what it asserts.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, settings
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter

from voicebridge import eventloop
from voicebridge.emulator.server import Emulator
from voicebridge.emulator.voice import Voice
from voicebridge.media.loopback import loopback_only, set_loopback_only

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])

# Settings given on a test (@settings(...)) override these per field; suppress_health_check is replaced, not merged,
# so a test that lists its own health checks adds HealthCheck.too_slow itself.
settings.register_profile("voicebridge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("voicebridge")

# No refusal for event-loop lag anywhere in the suite, in this process or the servers it starts: how late a loop
# runs is how loaded the machine is, and no test's outcome may depend on that. The lag measure's own tests set it
# explicitly and drive it with an injected meter. The budgets (calls or sessions per core) stay on, counted on 2
# cores whatever the machine has, so a test meets the same budget on a 1-core and on a 64-core machine.
for _setting, _value in (
    ("VOICEBRIDGE_MAX_LAG_MS", "0"),
    ("VOICEBRIDGE_EMULATOR_MAX_LAG_MS", "0"),
    ("VOICEBRIDGE_CORES", "2"),
):
    os.environ.setdefault(_setting, _value)

TESTS = Path(__file__).resolve().parent
MARK_BY_FOLDER = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "browser": pytest.mark.browser}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Async tests run on the event loop the bridge's commands run on (VOICEBRIDGE_LOOP: uvloop by default,
    asyncio's when uvloop is missing or VOICEBRIDGE_LOOP=asyncio), so the suite tests what ships."""
    import asyncio

    factory = eventloop.loop_factory()
    return {eventloop.requested() if factory else "asyncio": factory or asyncio.new_event_loop}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # not under tests/
            continue
        mark = MARK_BY_FOLDER.get(folder)
        if mark is not None and item.get_closest_marker(mark.name) is None:
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    """Real peers connect over 127.0.0.1 only, in milliseconds, and never touch another interface."""
    before = loopback_only()
    set_loopback_only(True)
    yield
    set_loopback_only(before)


# One cache of spoken lines for the whole test run: espeak runs once per line, whichever emulator speaks it.
SHARED_VOICE = Voice()
StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start_emulator() -> AsyncIterator[StartEmulator]:
    """The one way tests get an emulator: `await start_emulator(**Emulator arguments)` starts one on a free
    loopback port (with the shared voice unless given another); every emulator started is stopped at the end."""
    started: list[Emulator] = []

    async def start(**kwargs: Any) -> Emulator:
        kwargs.setdefault("voice", SHARED_VOICE)
        emulator = Emulator(**kwargs)
        await emulator.start("127.0.0.1", 0)
        started.append(emulator)
        return emulator

    yield start
    for emulator in reversed(started):
        await emulator.stop()


def validate_server_event(event: dict[str, Any]) -> None:
    SERVER_EVENT.validate_python(event)


def validate_client_event(event: dict[str, Any]) -> None:
    CLIENT_EVENT.validate_python(event)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A real redis-server on a free 127.0.0.1 port with a password, stopped at the end (tests/redis_server.py)."""
    from tests.redis_server import start_redis

    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()

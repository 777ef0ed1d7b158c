"""Limits that concurrent requests must not slip past, each hit with real HTTP requests at once (asyncio.gather):

* the listener cap of a call (16 at once): 20 joins at once give exactly 16 listeners, and a listener that left
  frees its seat;
* take-over: two at once give one human and one 409;
* browsers that get their answer but never connect are dropped after the join time-out (seat and peer connection
  freed): only that test has a short one; everywhere else real browsers have the server's default to connect in;
* the number of live calls (`max_live_calls`) and the per-client rate limits of call creation and joins.

The limit is checked and the seat taken in one synchronous step (before any await); the listener cap and the
take-over used to check first and await after (20 concurrent joins gave 20 listeners, two take-overs both won).
A call is held in "connecting" by a gate (realtime_gate.py) holding its CS session's answer, not by being quick.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.realtime_gate import Gate
from tests.integration.test_join import LATE_ORDER, SECRET, Browser, browsers, start_call, token  # noqa: F401 (fixture)
from voicebridge.bridge.participants import MAX_LISTENERS
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.emulator.server import Emulator
from voicebridge.signaling.app import create_app
from voicebridge.signaling.http import MANAGER
from voicebridge.signaling.security import RateLimit, SecurityPolicy

pytestmark = pytest.mark.integration
Client = TestClient[Any, Any]
GHOST_TIMEOUT_S = 1.0  # the join time-out of the test whose browsers never connect (and of no other)


def _settings(base_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """The legs get far longer to connect than a loaded machine needs: no test here is about that time-out."""
    values: dict[str, Any] = {"session_timeout_s": 120.0, **overrides}
    return dataclasses.replace(Settings(), base_url=base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path, **values)


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> AsyncIterator[Client]:
    """Real browsers connect within the server's default join time-out, however loaded the machine."""
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_SECRET", SECRET)
    async with TestClient(TestServer(await create_app(_settings(emulator.base_url, tmp_path)))) as c:
        yield c


@pytest.fixture
async def ghost_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> AsyncIterator[Client]:
    """A short join time-out: its browsers never connect, so what it bounds is certain to run out."""
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_SECRET", SECRET)
    settings = _settings(emulator.base_url, tmp_path, join_connect_timeout_s=GHOST_TIMEOUT_S)
    async with TestClient(TestServer(await create_app(settings))) as c:
        yield c


@pytest.fixture
async def gate(emulator: Emulator) -> AsyncIterator[Gate]:
    g = Gate(emulator, LATE_ORDER)
    await g.start()
    try:
        yield g
    finally:
        await g.stop()


@pytest.fixture
async def gated_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gate: Gate) -> AsyncIterator[Client]:
    """Calls through the gate; a leg held there waits far longer than any test holds it."""
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_SECRET", SECRET)
    async with TestClient(TestServer(await create_app(_settings(gate.base_url, tmp_path)))) as c:
        yield c


async def live_call(client: Client) -> tuple[str, Any]:
    call_id, call, _watch = await start_call(client)
    if call.state != "live":
        live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call.on("state", lambda s: live.done() or (s == "live" and live.set_result(None)))
        await asyncio.wait_for(live, 30)
    return call_id, call


def left_note(call: Any, participant_id: str) -> asyncio.Future[dict[str, Any]]:
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def seen(rec: dict[str, Any]) -> None:
        ev = rec["event"]
        if ev.get("type") == "participant.left" and ev.get("participant_id") == participant_id and not fut.done():
            fut.set_result(ev)

    call.on("event", seen)
    return fut


async def active(client: Client, call_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/calls/{call_id}/participants")
    return [p for p in (await r.json())["participants"] if p["state"] != "left"]


async def test_twenty_listeners_at_once_get_exactly_the_cap(
    client: Client, browsers: Callable[..., Browser]  # noqa: F811
) -> None:
    call_id, _call = await live_call(client)
    listen = await token(client, call_id, "listen")
    crowd = [browsers("listen") for _ in range(MAX_LISTENERS + 4)]
    statuses = await asyncio.gather(*(b.join(client, call_id, listen) for b in crowd))
    assert sorted(statuses).count(201) == MAX_LISTENERS, statuses
    refused = [b for b, s in zip(crowd, statuses, strict=True) if s != 201]
    assert all(b.error["error"]["type"] == "too_many_listeners" for b in refused)
    assert [s for s in statuses if s != 201] == [429] * 4
    assert len(await active(client, call_id)) == MAX_LISTENERS
    # A listener that leaves frees its seat for the next one.
    first = next(b for b, s in zip(crowd, statuses, strict=True) if s == 201)
    r = await client.post(
        f"/api/calls/{call_id}/leave", json={"participant_id": first.participant_id},
        headers={"Authorization": f"Bearer {listen}"},
    )
    assert r.status == 200
    assert await browsers("listen").join(client, call_id, listen) == 201
    assert len(await active(client, call_id)) == MAX_LISTENERS


async def test_two_takeovers_at_once_give_one_human(
    gated_client: Client, gate: Gate, browsers: Callable[..., Browser]  # noqa: F811
) -> None:
    """Both join while the call is still connecting (its CS answer held at the gate): the one that got the seat
    waits for the call to go live, the other is refused at once."""
    client = gated_client
    gate.rules["cs"] = "hold_answer"
    call_id, call, _watch = await start_call(client)
    takeover = await token(client, call_id, "takeover")
    await asyncio.wait_for(gate.arrived["cs"].wait(), 30)
    assert call.state == "connecting"  # certain: the CS leg cannot connect before its answer is released
    a, b = browsers("takeover"), browsers("takeover")
    joins = [asyncio.ensure_future(x.join(client, call_id, takeover)) for x in (a, b)]
    done, _ = await asyncio.wait(joins, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result() for t in done] == [409] and call.state == "connecting"  # refused while still connecting
    gate.release_all()
    statuses = sorted(await asyncio.gather(*joins))
    assert statuses == [201, 409]
    loser = a if a.participant_id == "" else b
    assert loser.error["error"]["type"] == "conflict"
    humans = [p for p in await active(client, call_id) if p["role"] == "takeover"]
    assert len(humans) == 1


async def test_browsers_that_never_connect_are_dropped_and_free_their_seat(ghost_client: Client) -> None:
    client = ghost_client
    call_id, call = await live_call(client)
    takeover = await token(client, call_id, "takeover")
    listen = await token(client, call_id, "listen")
    ghosts = []
    for role, tok in (("takeover", takeover), ("listen", listen)):
        ghost = Browser(role)
        await ghost.pc.setLocalDescription(await ghost.pc.createOffer())
        r = await client.post(
            f"/api/calls/{call_id}/join", data=ghost.pc.localDescription.sdp,
            headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/sdp"},
        )
        assert r.status == 201
        ghosts.append(r.headers["X-Participant-Id"])
        await ghost.close()  # it got its answer and vanished: its candidates lead nowhere now
    for pid in ghosts:
        note = await asyncio.wait_for(left_note(call, pid), 30)
        assert note["reason"] == f"the browser did not connect within {GHOST_TIMEOUT_S:g} s"
    assert await active(client, call_id) == []
    human = Browser("takeover")
    try:
        assert await human.join(client, call_id, takeover) == 201  # the seat the ghost held is free
    finally:
        await human.close()


async def test_concurrent_call_creation_respects_max_live_calls(emulator: Emulator, tmp_path: Path) -> None:
    settings = Settings(base_url=emulator.base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    app = await create_app(settings, max_live_calls=2)
    async with TestClient(TestServer(app)) as c:
        responses = await asyncio.gather(*(c.post("/api/calls", json={"scenario": "late_order"}) for _ in range(8)))
        statuses = sorted(r.status for r in responses)
        assert statuses == [201, 201] + [429] * 6
        assert len(app[MANAGER].live()) == 2
        await app[MANAGER].shutdown(30)


async def test_concurrent_requests_respect_the_rate_limits(emulator: Emulator, tmp_path: Path) -> None:
    settings = Settings(base_url=emulator.base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    slow = RateLimit(burst=5, per_s=0.001)  # no refill while the test runs
    app = await create_app(settings, security=SecurityPolicy(call_rate=slow, join_rate=slow))
    async with TestClient(TestServer(app)) as c:
        # Unknown scenario / unknown call: what passes the limiter is refused by the handler, so no call starts.
        creates = await asyncio.gather(*(c.post("/api/calls", json={"scenario": "nope"}) for _ in range(12)))
        assert sorted(r.status for r in creates) == [422] * 5 + [429] * 7
        tokens = await asyncio.gather(
            *(c.post("/api/calls/call_nope/tokens", json={"role": "listen"}) for _ in range(12))
        )
        assert sorted(r.status for r in tokens) == [404] * 5 + [429] * 7

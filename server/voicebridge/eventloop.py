"""The event loop voicebridge's processes run on: uvloop when installed, asyncio's own otherwise.

A forwarded packet costs the bridge one event-loop wake-up more often than not, and libuv's loop wakes for less
than asyncio's selector loop (docs/bench.md, "Near the floor": the bench measures both in the same run).
``VOICEBRIDGE_LOOP`` picks it for every command that runs the bridge (serve, worker, call, batch, test, soak):
``uvloop`` (the default) or ``asyncio`` (the standard library's loop, always available). When uvloop cannot be
imported the process runs on asyncio's loop and says so in its log, once, without failing: uvloop is a
dependency, but a platform without a wheel for it still gets a working bridge.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

ENV = "VOICEBRIDGE_LOOP"
LOOPS = ("uvloop", "asyncio")
DEFAULT = "uvloop"
T = TypeVar("T")


class EventLoopChoiceError(ValueError):
    """VOICEBRIDGE_LOOP names no event loop we know."""


def requested(env: dict[str, str] | None = None) -> str:
    """The loop VOICEBRIDGE_LOOP asks for ("uvloop" when unset or empty); EventLoopChoiceError if unknown."""
    value = (os.environ if env is None else env).get(ENV, "").strip().lower() or DEFAULT
    if value not in LOOPS:
        raise EventLoopChoiceError(f"{ENV} must be uvloop or asyncio, not {value!r}")
    return value


_fallback_logged = False


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio.Runner's loop_factory for `name` (default: as VOICEBRIDGE_LOOP says); None is asyncio's loop.

    uvloop not importable: asyncio's loop, logged once per process (INFO when it was only the default, WARNING
    when VOICEBRIDGE_LOOP asked for it)."""
    global _fallback_logged
    explicit = name is not None or bool(os.environ.get(ENV, "").strip())
    choice = requested() if name is None else name
    if choice not in LOOPS:
        raise EventLoopChoiceError(f"unknown event loop {choice!r} (uvloop or asyncio)")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if not _fallback_logged:
            _fallback_logged = True
            log.log(
                logging.WARNING if explicit else logging.INFO,
                "event loop: asyncio's (uvloop cannot be imported: %s)",
                exc,
            )
        return None
    return uvloop.new_event_loop


def effective(name: str | None = None) -> str:
    """The loop `run(..., name)` would run on: "uvloop", or "asyncio" (asked for, or uvloop missing)."""
    return "uvloop" if loop_factory(name) is not None else "asyncio"


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio": what the given (default: the running) loop is."""
    loop = loop or asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"


def run(main: Coroutine[Any, Any, T], name: str | None = None) -> T:
    """asyncio.run(main) on the chosen event loop (VOICEBRIDGE_LOOP unless `name` is given)."""
    try:
        factory = loop_factory(name)
    except EventLoopChoiceError:
        main.close()  # never started: no "coroutine was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)

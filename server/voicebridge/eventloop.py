"""The event loop voicebridge's processes run on: uvloop when installed, asyncio's own otherwise.

A forwarded packet costs the bridge one event-loop wake-up more often than not, and libuv's loop wakes for less
than asyncio's selector loop (docs/bench.md, "Near the floor": the bench measures both in the same run).
``VOICEBRIDGE_LOOP`` picks it for every command that runs the bridge (serve, worker, call, batch, test, soak):
``uvloop`` (the default) or ``asyncio`` (the standard library's loop, always available). When uvloop cannot be
imported the process runs on asyncio's loop and says so in its log, once, without failing: uvloop is a
dependency, but a platform without a wheel for it still gets a working bridge.

``quiet_lost_peer_tasks`` (installed by ``run``) keeps aiortc's unawaited data-channel sends to a peer that is gone
from printing a traceback each: see there.
"""

from __future__ import annotations

import asyncio
import gc
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


# aiortc's SCTP transport (the data channel) starts some sends as tasks it never awaits: a retransmission timer's
# _transmit, _data_channel_flush, the T1/T2 timers' _send_chunk. When the peer is gone (the leg's ICE or DTLS
# transport closed under them) such a task fails with ConnectionError ("Cannot send data, not connected"), and
# asyncio reports it when the task is collected: "Task exception was never retrieved" and a traceback, several
# per lost peer (the bench's logs had dozens). Nothing more could be done with that data: it is logged at DEBUG,
# one line each. Any other unretrieved exception, and these tasks failing otherwise, are reported as before.
_LOST_PEER_TASKS = ("RTCSctpTransport.",)


def _lost_peer_handler(previous: Any) -> Any:
    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task, exc = context.get("future"), context.get("exception")
        if isinstance(exc, ConnectionError) and isinstance(task, asyncio.Task) and not task.cancelled():
            name = getattr(task.get_coro(), "__qualname__", "")
            if name.startswith(_LOST_PEER_TASKS) and task.exception() is exc:
                log.debug("%s: the peer is gone (%s)", name, exc)
                return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.quiets_lost_peers = True  # type: ignore[attr-defined]  # installed once per loop
    return handler


def quiet_lost_peer_tasks(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """On `loop` (default: the running one): aiortc's own unawaited SCTP sends that fail because the peer is gone
    log one DEBUG line instead of an unretrieved-task traceback; the handler already set, if any, gets the rest."""
    loop = loop or asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    if not getattr(previous, "quiets_lost_peers", False):
        loop.set_exception_handler(_lost_peer_handler(previous))


def freeze_startup() -> int:
    """Move every object alive now out of the cyclic garbage collector's reach (gc.freeze); returns how many.

    A full (generation 2) collection walks every tracked object and stops the event loop meanwhile: in the bench's
    bridge process it took 31-35 ms of CPU at 25 calls and 92-101 ms at 100, every packet arriving during it
    waiting in its socket. About 53 000 of those objects are modules, functions and classes from start-up, never
    garbage: frozen, the same collection took 7-11 ms at 25 calls and 48 ms at 100. Called once, after imports and
    before any call (frozen objects are never collected, so a call's objects, which die in reference cycles when
    it ends, must not be frozen). Objects freed by reference counting are freed as before.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run(main: Coroutine[Any, Any, T], name: str | None = None) -> T:
    """asyncio.run(main) on the chosen event loop (VOICEBRIDGE_LOOP unless `name` is given)."""
    try:
        factory = loop_factory(name)
    except EventLoopChoiceError:
        main.close()  # never started: no "coroutine was never awaited" warning on top of the error
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        quiet_lost_peer_tasks(runner.get_loop())
        freeze_startup()  # what the command imported: see there
        return runner.run(main)

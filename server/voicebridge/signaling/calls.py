"""CallManager: owns the server's Call objects, live and ended, and fans each call's events out to watchers.

Every call gets a backlog of its messages (state changes, raw events, turns, tool calls, the end) so a
watcher that connects late sees the whole story first and then the live tail, with nothing lost or repeated
in between: the backlog snapshot and the subscription happen in one synchronous step of the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from voicebridge.scenarios.model import Scenario

log = logging.getLogger(__name__)

MAX_BACKLOG = 20_000  # messages kept per call for late watchers (raw events dominate; ~10 MB worst case)
MAX_ENDED = 200  # ended calls kept in memory for the console; their artifacts stay on disk anyway
WATCHER_QUEUE = 5_000  # a watcher this far behind is dropped rather than slowing the call down
MESSAGE_KINDS = ("state", "event", "turn", "tool_call", "ended")


class CallLike(Protocol):
    """What the server needs of a call (voicebridge.bridge.call.Call provides it)."""

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def end_reason(self) -> str | None: ...

    def on(self, event: str, f: Callable[..., Any]) -> Any: ...

    async def start(self) -> None: ...

    async def hangup(self, reason: Any = ..., by: str = ...) -> None: ...

    async def wait_ended(self, timeout_s: float | None = None) -> None: ...

    def summary(self) -> dict[str, Any]: ...


CallFactory = Callable[[Scenario], CallLike]


class TooManyCalls(RuntimeError):
    pass


class Watcher:
    """One subscriber to a call's messages (an event WebSocket); `None` on its queue ends the stream."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=WATCHER_QUEUE)
        self.dropped = False


@dataclass
class CallRecord:
    call: CallLike
    scenario: Scenario
    created_at: float = field(default_factory=time.time)
    backlog: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_BACKLOG))
    seq: int = 0
    watchers: set[Watcher] = field(default_factory=set)
    ended: bool = False
    start_error: str | None = None
    task: asyncio.Task[None] | None = None

    def publish(self, kind: str, data: Any) -> None:
        self.seq += 1
        msg = {"seq": self.seq, "kind": kind, "data": data}
        self.backlog.append(msg)
        for w in list(self.watchers):
            try:
                w.queue.put_nowait(msg)
            except asyncio.QueueFull:
                # A stalled browser must not hold the call's memory hostage: drop it, it can reconnect.
                w.dropped = True
                self.watchers.discard(w)
                self._close_watcher(w)
        if kind == "ended":
            self.ended = True
            for w in list(self.watchers):
                self._close_watcher(w)
            self.watchers.clear()

    @staticmethod
    def _close_watcher(w: Watcher) -> None:
        # Make room for the end marker so the reader always wakes up and finishes.
        while w.queue.full():
            w.queue.get_nowait()
        w.queue.put_nowait(None)

    def subscribe(self) -> tuple[list[dict[str, Any]], Watcher | None]:
        """The backlog so far, and a watcher for what follows (None when the call has already ended)."""
        snapshot = list(self.backlog)
        if self.ended:
            return snapshot, None
        w = Watcher()
        self.watchers.add(w)
        return snapshot, w

    def unsubscribe(self, w: Watcher) -> None:
        self.watchers.discard(w)

    @property
    def truncated(self) -> bool:
        return self.seq > len(self.backlog)


class CallManager:
    """Creates, tracks and ends calls; many at once, nothing global."""

    def __init__(self, factory: CallFactory, *, max_live: int = 20) -> None:
        self._factory = factory
        self.max_live = max_live
        self._records: dict[str, CallRecord] = {}

    # -- queries --
    def get(self, call_id: str) -> CallRecord | None:
        return self._records.get(call_id)

    def records(self) -> list[CallRecord]:
        return sorted(self._records.values(), key=lambda r: r.created_at, reverse=True)

    def live(self) -> list[CallRecord]:
        return [r for r in self._records.values() if not r.ended]

    # -- commands --
    def start(self, scenario: Scenario) -> CallRecord:
        """Create a call and start connecting it in the background; returns at once (state `connecting`)."""
        if len(self.live()) >= self.max_live:
            raise TooManyCalls(f"{self.max_live} calls are live already; hang one up or wait for one to end")
        call = self._factory(scenario)
        rec = CallRecord(call=call, scenario=scenario)
        call.on("state", lambda state: rec.publish("state", state))
        call.on("event", lambda record: rec.publish("event", record))
        call.on("turn", lambda turn: rec.publish("turn", turn))
        call.on("tool_call", lambda tc: rec.publish("tool_call", tc))
        call.on("ended", lambda summary: rec.publish("ended", summary))
        self._records[call.id] = rec
        self._forget_old()
        rec.task = asyncio.ensure_future(self._run_start(rec))
        return rec

    async def _run_start(self, rec: CallRecord) -> None:
        try:
            await rec.call.start()
        except Exception as e:
            # The Call has ended itself with `error` and emitted "ended"; keep the reason for the API too.
            rec.start_error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            log.warning("call %s failed to start: %s", rec.call.id, rec.start_error)
            if not rec.ended:
                rec.publish("ended", self.view(rec))

    def hangup(self, rec: CallRecord, reason: str = "operator_hangup", by: str = "operator") -> None:
        """Begin a graceful hang-up in the background (the call drains its last words first)."""
        task = asyncio.ensure_future(rec.call.hangup(reason, by))
        task.add_done_callback(_log_failure(rec.call.id))

    async def shutdown(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Hang up every live call (reason `shutdown`) and wait, bounded, for them to end."""
        live = self.live()
        for rec in live:
            with contextlib.suppress(Exception):
                self.hangup(rec, "shutdown", "server")
        if live:
            done = asyncio.gather(*(r.call.wait_ended() for r in live), return_exceptions=True)
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                log.warning("%d call(s) did not end within %.0f s of shutdown", len(self.live()), timeout)
        for rec in self._records.values():
            if rec.task is not None and not rec.task.done():
                rec.task.cancel()

    def _forget_old(self) -> None:
        ended = [r for r in self.records() if r.ended]
        for rec in ended[MAX_ENDED:]:
            del self._records[rec.call.id]

    # -- views --
    def view(self, rec: CallRecord, *, detail: bool = False) -> dict[str, Any]:
        """The call as the API shows it: a short row for lists, the whole summary for one call."""
        summary = rec.call.summary()
        row = {
            "id": rec.call.id,
            "scenario": rec.scenario.name,
            "title": rec.scenario.title,
            "state": rec.call.state,
            "end_reason": rec.call.end_reason,
            "ended_by": summary.get("ended_by"),
            "error": summary.get("error") or rec.start_error,
            "created_at": rec.created_at,
            "duration_s": summary.get("duration_s"),
            "turns": len(summary.get("turns") or []),
            "tool_calls": len(summary.get("tool_calls") or []),
        }
        if detail:
            row = {
                **summary,
                **row,
                "turns": summary.get("turns") or [],
                "tool_calls": summary.get("tool_calls") or [],
                "events_seen": rec.seq,
            }
        return row


def _log_failure(call_id: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("call %s: hang-up failed: %r", call_id, task.exception())

    return done

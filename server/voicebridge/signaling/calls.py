"""CallManager: owns the server's calls, live and ended, and fans each call's events out to watchers.

Every call gets a backlog of its messages (state changes, raw events, turns, tool calls, the end) so a
watcher that connects late sees the whole story first and then the live tail, with nothing lost or repeated
in between: the backlog snapshot and the subscription happen in one synchronous step of the event loop.

Memory: a live call holds its peer connections, codecs, transcript and backlog (MiBs). Once it has ended, its
record is retired: the backlog goes to the call's folder (messages.jsonl) and the call object is swapped for
an `EndedCall` (ended.py), a few fields and the folder, so an ended call costs a few KiB while it stays
listed. The newest MAX_ENDED ended calls are listed; older ones are still found by id while their folder is
in the artifacts directory (GET /api/calls/{id} and the rest), just no longer listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from voicebridge.observability.metrics import ObservedCall
from voicebridge.results import CallSummary, EndReason, EventRecord, ToolCallRecord, TranscriptLine
from voicebridge.scenarios.model import Scenario

from .ended import MESSAGES_FILE, EndedCall, count_lines, write_messages

log = logging.getLogger(__name__)

MAX_BACKLOG = 20_000  # messages kept per call for late watchers (raw events dominate; ~10 MB worst case)
# Ended calls listed: a few KiB each once retired, but the console fetches the whole list every 2 s; older
# ones are still found by id on disk.
MAX_ENDED = 200
WATCHER_QUEUE = 5_000  # a watcher this far behind is dropped rather than slowing the call down
MESSAGE_KINDS = ("state", "event", "turn", "tool_call", "ended")
_NO_BACKLOG: deque[dict[str, Any]] = deque(maxlen=0)  # a retired record's, shared: it holds nothing
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a call id that can name a folder, and no path


class CallLike(ObservedCall, Protocol):
    """What the server needs of a call (voicebridge.bridge.call.Call provides it), its metrics' included."""

    @property
    def state(self) -> str: ...

    @property
    def end_reason(self) -> EndReason | None: ...

    async def start(self) -> None: ...

    async def hangup(self, reason: EndReason = ..., by: str = ...) -> None: ...

    async def wait_ended(self, timeout_s: float | None = None) -> None: ...

    def summary(self) -> CallSummary: ...


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
    call: CallLike  # the live call; an EndedCall once retired
    scenario: Scenario | None  # dropped once retired (scenario_name and title stay)
    created_at: float = field(default_factory=time.time)
    backlog: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_BACKLOG))
    seq: int = 0
    watchers: set[Watcher] = field(default_factory=set)
    ended: bool = False
    start_error: str | None = None
    task: asyncio.Task[None] | None = None
    scenario_name: str = ""
    title: str = ""
    retired: bool = False
    saved: int = 0  # backlog messages moved to the call's messages.jsonl when it was retired
    stream_on_disk: bool = False  # retired, and its backlog is read back from the call's folder

    def __post_init__(self) -> None:
        if self.scenario is not None:
            self.scenario_name, self.title = self.scenario.name, self.scenario.title

    def publish(self, kind: str, data: Any) -> None:
        if self.retired:
            return  # the call object is gone from the registry; nothing more belongs to its stream
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

    async def open_stream(self) -> tuple[list[dict[str, Any]], Watcher | None]:
        """As subscribe(); for a retired call the backlog is read back from its folder."""
        if self.stream_on_disk and isinstance(self.call, EndedCall):
            return await asyncio.to_thread(self.call.messages), None
        return self.subscribe()

    def unsubscribe(self, w: Watcher) -> None:
        self.watchers.discard(w)

    def retire(self, ended: EndedCall, saved: int | None) -> None:
        """Keep only `ended` of the call; the backlog too unless `saved` says how many of its messages are in
        the call's folder now (None: none are, it stays in memory)."""
        self.call = ended
        self.scenario = None
        self.task = None
        self.retired = True
        if saved is not None:
            self.saved, self.stream_on_disk = saved, True
            self.backlog = _NO_BACKLOG

    @property
    def truncated(self) -> bool:
        return self.seq > len(self.backlog) + self.saved


class CallManager:
    """Creates, tracks and ends calls; many at once, nothing global."""

    def __init__(
        self,
        factory: CallFactory,
        *,
        max_live: int = 20,
        max_ended: int | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        self._factory = factory
        self.max_live = max_live
        self.max_ended = MAX_ENDED if max_ended is None else max_ended
        self.artifacts_dir = artifacts_dir  # where ended calls no longer listed are still found by id
        # Fields every row of the API gains (a cluster worker adds its id: "worker").
        self.row_fields: dict[str, Any] = {}
        self._records: dict[str, CallRecord] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # -- queries --
    def get(self, call_id: str) -> CallRecord | None:
        """The call with this id: listed, or ended and no longer listed but with its folder on disk."""
        return self._records.get(call_id) or self.find_on_disk(call_id)

    def find_on_disk(self, call_id: str) -> CallRecord | None:
        if self.artifacts_dir is None or not _FOLDER_NAME.fullmatch(call_id):
            return None
        folder = self.artifacts_dir / call_id
        ended = EndedCall.from_folder(folder)
        if ended is None:
            return None
        saved = count_lines(folder / MESSAGES_FILE)
        rec = CallRecord(call=ended, scenario=None, created_at=ended.started_at or 0.0, ended=True)
        rec.scenario_name, rec.title = ended.scenario, ended.title
        rec.seq = saved  # without messages.jsonl (a call made by `voicebridge call`): its events.jsonl is read
        rec.retire(ended, saved)
        return rec

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
        # The call's own creation time when it has one: what its summary.json says, so a call found on disk
        # later shows the same `created_at`.
        started = getattr(call, "started_at", None)
        created = started if isinstance(started, float) else time.time()
        rec = CallRecord(call=call, scenario=scenario, created_at=created)
        # What watchers are sent is JSON: the call's records are turned into it here, once, as they come.
        call.on("state", lambda state: rec.publish("state", state))

        def event(record: EventRecord) -> None:
            rec.publish("event", record)

        def turn(line: TranscriptLine) -> None:
            rec.publish("turn", line.model_dump(mode="json"))

        def tool_call(record: ToolCallRecord) -> None:
            rec.publish("tool_call", record.model_dump(mode="json"))

        def ended(summary: CallSummary) -> None:
            self._ended(rec, summary.model_dump(mode="json"))

        for kind, fn in (("event", event), ("turn", turn), ("tool_call", tool_call), ("ended", ended)):
            call.on(kind, fn)
        self._records[call.id] = rec
        self.forget_old()
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
                self._ended(rec, self.view(rec))

    def _ended(self, rec: CallRecord, summary: dict[str, Any]) -> None:
        rec.publish("ended", summary)
        task = asyncio.ensure_future(self._retire(rec))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, rec: CallRecord) -> None:
        """Swap the ended call for its EndedCall once its backlog is in its folder (the call has written its
        own artifacts before it says "ended"). Until the swap, watchers are served from memory as before."""
        if rec.retired:
            return
        call = rec.call
        try:
            summary = call.summary()
        except Exception:
            log.exception("call %s: no summary at its end", call.id)
            ended = EndedCall.unknown(call.id, call.end_reason, rec.start_error, rec.scenario_name, rec.title)
        else:
            folder = Path(summary.out_dir) if summary.out_dir else None
            ended = EndedCall.of(summary, folder, rec.scenario_name, rec.title)
        saved: int | None = None  # None: the backlog stays in memory
        if ended.folder is not None:
            backlog = list(rec.backlog)
            last = backlog[-1]["seq"] if backlog else 0
            try:
                await asyncio.to_thread(write_messages, ended.folder, backlog)
                late = [m for m in rec.backlog if m["seq"] > last]
                if late:  # published while the file was being written (a participant leaving, say)
                    write_messages(ended.folder, late, append=True)
                saved = len(backlog) + len(late)
            except OSError as e:
                log.warning("call %s: its backlog stays in memory: cannot write %s: %s", call.id, MESSAGES_FILE, e)
        rec.retire(ended, saved)

    async def wait_retired(self) -> None:
        """Until every ended call's record is retired (for shutdown, the soak and tests)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def hangup(self, rec: CallRecord, reason: EndReason = "operator_hangup", by: str = "operator") -> None:
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait_retired(), timeout)

    def forget_old(self) -> None:
        """Stop listing the ended calls beyond the newest `max_ended` (their folders stay)."""
        ended = [r for r in self.records() if r.ended]
        for rec in ended[self.max_ended :]:
            del self._records[rec.call.id]

    # -- views --
    def view(self, rec: CallRecord, *, detail: bool = False) -> dict[str, Any]:
        """The call as the API shows it: a short row for lists, the whole summary for one call (read from its
        folder once the call is retired: call `detail()` from the event loop, it reads in a thread)."""
        ended = rec.call if isinstance(rec.call, EndedCall) else None
        if ended is not None and not detail:  # a list row never touches the disk
            return {
                "id": ended.id,
                "scenario": rec.scenario_name,
                "title": rec.title,
                "state": ended.state,
                "end_reason": ended.end_reason,
                "ended_by": ended.ended_by,
                "error": ended.error or rec.start_error,
                "created_at": rec.created_at,
                "duration_s": ended.duration_s,
                "turns": ended.turns,
                "tool_calls": ended.tool_calls,
                **self.row_fields,
            }
        problem = None  # why a retired call's summary.json could not be read back
        if ended is not None:
            summary, problem = ended.read_summary()
        else:
            summary = rec.call.summary()
        row: dict[str, Any] = {
            "id": rec.call.id,
            "scenario": rec.scenario_name,
            "title": rec.title,
            "state": rec.call.state,
            "end_reason": rec.call.end_reason,
            "ended_by": summary.ended_by,
            "error": summary.error or rec.start_error,
            "created_at": rec.created_at,
            "duration_s": summary.duration_s,
            "turns": len(summary.turns),
            "tool_calls": len(summary.tool_calls),
            **self.row_fields,
        }
        if detail:
            whole = summary.model_dump(mode="json")
            row = {**whole, **row, "turns": whole["turns"], "tool_calls": whole["tool_calls"], "events_seen": rec.seq}
            if problem is not None:
                row["artifacts_error"] = problem
        return row

    async def detail(self, rec: CallRecord) -> dict[str, Any]:
        """view(rec, detail=True), reading a retired call's summary.json in a thread."""
        if isinstance(rec.call, EndedCall):
            return await asyncio.to_thread(self.view, rec, detail=True)
        return self.view(rec, detail=True)


def _log_failure(call_id: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("call %s: hang-up failed: %r", call_id, task.exception())

    return done

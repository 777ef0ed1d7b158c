"""CallManager and CallRecord: backlog-then-live without gaps, bounded memory, slow watchers, limits, shutdown;
ended calls retired to a small record with the rest on disk, and found there by id once no longer listed."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path
from typing import Any

import pytest
from pyee.asyncio import AsyncIOEventEmitter

from tests.summaries import line, make_summary
from voicebridge.results import CallSummary
from voicebridge.scenarios.model import Scenario, load_scenario
from voicebridge.signaling import calls, ended
from voicebridge.signaling.calls import CallManager, CallRecord, TooManyCalls

pytestmark = pytest.mark.unit
SCENARIO = load_scenario("late_order")


class FakeCall(AsyncIOEventEmitter):
    count = 0

    def __init__(self, scenario: Scenario, fail: bool = False) -> None:
        super().__init__()
        FakeCall.count += 1
        self.id = f"call_{FakeCall.count}"
        self.state = "connecting"
        self.end_reason: str | None = None
        self.relay = None
        self.fail = fail
        self._ended = asyncio.Event()

    async def start(self) -> None:
        if self.fail:
            self.end("error")
            raise RuntimeError("leg refused")
        self.state = "live"
        self.emit("state", "live")

    def end(self, reason: str) -> None:
        self.state, self.end_reason = "ended", reason
        self.emit("state", "ended")
        self._ended.set()
        self.emit("ended", self.summary())

    async def hangup(self, reason: Any = "operator_hangup", by: str = "operator") -> None:
        self.end(reason)

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ended.wait(), timeout_s)

    def summary(self) -> CallSummary:
        return make_summary(call_id=self.id, state=self.state, end_reason=self.end_reason)


def record() -> CallRecord:
    return CallRecord(call=FakeCall(SCENARIO), scenario=SCENARIO)


def test_subscribe_sees_backlog_then_live_without_gap_or_repeat() -> None:
    rec = record()
    rec.publish("event", 1)
    rec.publish("event", 2)
    backlog, watcher = rec.subscribe()
    assert watcher is not None
    rec.publish("event", 3)
    live = [watcher.queue.get_nowait()]
    assert [m["seq"] for m in backlog] + [m["seq"] for m in live if m] == [1, 2, 3]


def test_ended_record_gives_backlog_and_no_watcher() -> None:
    rec = record()
    _, watcher = rec.subscribe()
    assert watcher is not None
    rec.publish("ended", {})
    assert watcher.queue.get_nowait() is not None and watcher.queue.get_nowait() is None
    backlog, late = rec.subscribe()
    assert late is None and backlog[-1]["kind"] == "ended"


def test_backlog_is_bounded_and_says_so() -> None:
    rec = CallRecord(call=FakeCall(SCENARIO), scenario=SCENARIO)
    rec.backlog = type(rec.backlog)(maxlen=5)
    assert not rec.truncated
    for i in range(8):
        rec.publish("event", i)
    assert [m["seq"] for m in rec.backlog] == [4, 5, 6, 7, 8] and rec.truncated


def test_a_stalled_watcher_is_dropped_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls, "WATCHER_QUEUE", 3)
    rec = record()
    _, slow = rec.subscribe()
    assert slow is not None
    for i in range(10):
        rec.publish("event", i)  # never blocks, whatever the watcher does
    assert slow.dropped and slow not in rec.watchers
    drained = []
    while not slow.queue.empty():
        drained.append(slow.queue.get_nowait())
    assert drained[-1] is None, "the dropped watcher is told its stream ended"


async def test_manager_limits_live_calls_and_ends_all_on_shutdown() -> None:
    manager = CallManager(lambda s: FakeCall(s), max_live=2)
    a, b = manager.start(SCENARIO), manager.start(SCENARIO)
    with pytest.raises(TooManyCalls, match="2 calls are live"):
        manager.start(SCENARIO)
    assert a.task is not None and b.task is not None
    await asyncio.wait_for(asyncio.gather(a.task, b.task), 5)
    await manager.shutdown(timeout=5)
    assert [r.call.end_reason for r in (a, b)] == ["shutdown", "shutdown"]
    assert manager.live() == []
    assert manager.start(SCENARIO).call.state == "connecting"  # room again


async def test_start_failure_is_kept_for_the_api() -> None:
    manager = CallManager(lambda s: FakeCall(s, fail=True))
    rec = manager.start(SCENARIO)
    assert rec.task is not None
    await asyncio.wait_for(rec.task, 5)
    view = manager.view(rec, detail=True)
    assert view["state"] == "ended" and view["end_reason"] == "error"
    assert view["error"] == "RuntimeError: leg refused"


async def test_old_ended_calls_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calls, "MAX_ENDED", 2)
    manager = CallManager(lambda s: FakeCall(s))
    recs = []
    for i in range(4):
        rec = manager.start(SCENARIO)
        rec.created_at = float(i)
        await rec.call.hangup()
        recs.append(rec)
    manager.start(SCENARIO)
    kept = {r.call.id for r in manager.records()}
    assert recs[0].call.id not in kept and recs[3].call.id in kept
    assert len([r for r in manager.records() if r.ended]) == 2


class FolderCall(FakeCall):
    """A fake that writes its summary.json before it says "ended", as the real Call does."""

    def __init__(self, scenario: Scenario, folder: Path) -> None:
        super().__init__(scenario)
        self.out_dir = folder / self.id
        self.turns = [line("cs", "Hello there.", 0.5, 1.5)]
        self.started_at = 1_800_000_000.5

    def end(self, reason: str) -> None:
        self.state, self.end_reason = "ended", reason
        self.out_dir.mkdir(parents=True)
        (self.out_dir / "summary.json").write_text(json.dumps(self.summary().model_dump(mode="json")))
        super().end(reason)

    def summary(self) -> CallSummary:
        return make_summary(
            call_id=self.id, state=self.state, end_reason=self.end_reason, scenario=SCENARIO.name,
            title=SCENARIO.title, started_at=self.started_at, turns=self.turns, out_dir=str(self.out_dir),
        )


async def test_an_ended_call_is_retired_to_a_record_and_its_backlog_to_disk(tmp_path: Path) -> None:
    manager = CallManager(lambda s: FolderCall(s, tmp_path), artifacts_dir=tmp_path)
    rec = manager.start(SCENARIO)
    assert rec.task is not None
    await rec.task
    rec.publish("event", {"type": "response.done"})
    call = rec.call
    live_row = manager.view(rec)
    await call.hangup()
    backlog, _ = rec.subscribe()
    detail = manager.view(rec, detail=True)
    ref = weakref.ref(call)
    del call
    await manager.wait_retired()

    assert isinstance(rec.call, ended.EndedCall) and rec.stream_on_disk and rec.scenario is None
    gc.collect()
    assert ref() is None, "the registry still holds the ended call object"
    assert (rec.call.turns, rec.call.end_reason) == (1, "operator_hangup")
    assert manager.view(rec) == {**live_row, "state": "ended", "end_reason": "operator_hangup"}
    assert await manager.detail(rec) == detail
    assert [m["kind"] for m in backlog] == ["state", "event", "state", "ended"]
    assert await rec.open_stream() == (backlog, None)  # read back from messages.jsonl
    assert len(rec.backlog) == 0 and not rec.truncated
    rec.publish("event", {"type": "late"})  # nothing belongs to a retired call's stream any more
    assert await rec.open_stream() == (backlog, None) and rec.seq == 4


async def test_a_call_without_a_folder_keeps_its_summary_and_backlog_in_memory() -> None:
    manager = CallManager(lambda s: FakeCall(s))
    rec = manager.start(SCENARIO)
    assert rec.task is not None
    await rec.task
    await rec.call.hangup()
    await manager.wait_retired()
    assert isinstance(rec.call, ended.EndedCall) and rec.call.folder is None and not rec.stream_on_disk
    assert rec.call.summary().end_reason == "operator_hangup"
    backlog, watcher = await rec.open_stream()
    assert watcher is None and backlog[-1]["kind"] == "ended"


async def test_a_call_no_longer_listed_is_found_by_id_on_disk_and_only_there(tmp_path: Path) -> None:
    manager = CallManager(lambda s: FolderCall(s, tmp_path), artifacts_dir=tmp_path, max_ended=0)
    rec = manager.start(SCENARIO)
    assert rec.task is not None
    await rec.task
    await rec.call.hangup()
    await manager.wait_retired()
    call_id = rec.call.id
    manager.forget_old()
    assert manager.records() == []
    found = manager.get(call_id)
    assert found is not None and found.ended and found.seq == rec.seq
    assert manager.view(found, detail=True) == manager.view(rec, detail=True)
    assert (await found.open_stream())[0] == (await rec.open_stream())[0]

    # A folder of a call made elsewhere (`voicebridge call`): its events.jsonl, then the end.
    other = tmp_path / "call_cli"
    other.mkdir()
    (other / "summary.json").write_text(make_summary(call_id="call_cli").model_dump_json())
    (other / "events.jsonl").write_text('{"t": 0.1, "leg": "cs"}\n{"t": 0.2, "leg": "caller"}\n')
    cli = manager.get("call_cli")
    assert cli is not None
    stream, _ = await cli.open_stream()
    assert [(m["seq"], m["kind"]) for m in stream] == [(1, "event"), (2, "event"), (3, "ended")]

    # Nothing but a call's own folder: no paths, no folder whose summary names another call.
    (tmp_path / "call_x").mkdir()
    (tmp_path / "call_x" / "summary.json").write_text(make_summary(call_id="call_y").model_dump_json())
    for bad in ("../" + call_id, f"{call_id}/..", "", ".", "..", "call_x", "call_none", "a" * 200):
        assert manager.get(bad) is None, bad

"""CallManager and CallRecord: backlog-then-live without gaps, bounded memory, slow watchers, limits, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pyee.asyncio import AsyncIOEventEmitter

from voicebridge.scenarios.model import Scenario, load_scenario
from voicebridge.signaling import calls
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

    def summary(self) -> dict[str, Any]:
        return {"call_id": self.id, "state": self.state, "end_reason": self.end_reason, "turns": []}


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

"""Metrics: a call's events become Prometheus samples in the server's own registry.

The call here is a stand-in that emits the real Call's events (same names, same payload shapes) and has a
relay with the real AudioRelay's observation surface (on_packet, cs_out/caller_out latency samples, drops);
the real Call is measured end to end in tests/integration/test_batch.py and test_secrets.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pyee.asyncio import AsyncIOEventEmitter

from voicebridge.observability.metrics import Metrics, turn_gaps, turn_latencies

pytestmark = pytest.mark.unit


class FakeOut:
    def __init__(self, samples: list[float], dropped: int = 0) -> None:
        self._samples = samples
        self.dropped = dropped

    def latency_samples(self) -> list[float]:
        return list(self._samples)


class FakeRelay:
    def __init__(self) -> None:
        self.hooks: list[Callable[[str, Any], None]] = []
        self.cs_out = FakeOut([0.00002, 0.00003, 0.004])
        self.caller_out = FakeOut([0.00001], dropped=2)

    def on_packet(self, fn: Callable[[str, Any], None]) -> Callable[[], None]:
        self.hooks.append(fn)
        return lambda: self.hooks.remove(fn)

    def packet(self, party: str) -> None:
        for fn in list(self.hooks):
            fn(party, object())


class FakeCall(AsyncIOEventEmitter):
    def __init__(self, call_id: str = "call_1") -> None:
        super().__init__()
        self.id = call_id
        self.relay: FakeRelay | None = None


TURNS = [
    {"speaker": "cs", "text": "Hello there.", "start": 0.4, "end": 1.3, "kind": "said"},
    {"speaker": "caller", "text": "Goodbye now.", "start": 2.1, "end": 3.0, "kind": "said"},
]


def summary(reason: str = "caller_hangup", **extra: Any) -> dict[str, Any]:
    return {"call_id": "call_1", "end_reason": reason, "turns": TURNS, **extra}


async def test_a_whole_call_is_measured() -> None:
    m = Metrics()
    call = FakeCall()
    m.observe(call)
    call.emit("state", "connecting")
    assert m.value("voicebridge_active_calls") == 1
    assert m.value("voicebridge_calls_started_total") == 1
    call.relay = FakeRelay()
    call.emit("state", "live")
    assert m.value("voicebridge_call_setup_seconds_count") == 1
    for _ in range(5):
        call.relay.packet("caller")
    call.relay.packet("cs")
    call.emit("tool_call", {"leg": "cs", "name": "lookup_order", "ok": True, "duration_ms": 12.5})
    call.emit("tool_call", {"leg": "cs", "name": "issue_refund", "ok": False, "duration_ms": 3.0, "error": "x"})
    call.emit("state", "ending")
    call.emit("state", "ended")
    call.emit("ended", summary())

    assert m.value("voicebridge_active_calls") == 0
    assert m.value("voicebridge_calls_ended_total", {"end_reason": "caller_hangup"}) == 1
    assert m.value("voicebridge_call_duration_seconds_count") == 1
    assert m.value("voicebridge_relay_packets_total", {"party": "caller"}) == 5
    assert m.value("voicebridge_relay_packets_total", {"party": "cs"}) == 1
    assert call.relay.hooks == []  # unhooked at the end: the relay no longer calls into the metrics
    lookup = {"tool": "lookup_order", "ok": "true"}
    assert m.value("voicebridge_tool_call_seconds_count", lookup) == 1
    assert m.value("voicebridge_tool_call_seconds_sum", lookup) == pytest.approx(0.0125)
    assert m.value("voicebridge_tool_call_errors_total", {"tool": "issue_refund"}) == 1
    assert m.value("voicebridge_tool_call_errors_total", {"tool": "lookup_order"}) == 0
    assert m.value("voicebridge_relay_packet_latency_seconds_count", {"direction": "caller_to_cs"}) == 3
    assert m.value("voicebridge_relay_packet_latency_seconds_count", {"direction": "cs_to_caller"}) == 1
    # 20 us and 30 us fall in the 25 us and 50 us buckets; 4 ms in the 5 ms one.
    le = {"direction": "caller_to_cs", "le": "5e-05"}
    assert m.value("voicebridge_relay_packet_latency_seconds_bucket", le) == 2
    assert m.value("voicebridge_relay_dropped_packets_total", {"direction": "cs_to_caller"}) == 2
    assert m.value("voicebridge_turn_latency_seconds_count", {"responder": "caller"}) == 1
    assert m.value("voicebridge_turn_latency_seconds_sum", {"responder": "caller"}) == pytest.approx(0.8)


async def test_a_call_that_fails_while_connecting_is_counted_and_not_left_active() -> None:
    m = Metrics()
    call = FakeCall()
    m.observe(call)
    call.emit("state", "connecting")
    call.emit("state", "ending")
    call.emit("ended", {"end_reason": "error", "turns": []})
    call.emit("ended", {"end_reason": "error", "turns": []})  # a second "ended" is not a second call
    assert m.value("voicebridge_active_calls") == 0
    assert m.value("voicebridge_calls_ended_total", {"end_reason": "error"}) == 1
    assert m.value("voicebridge_call_setup_seconds_count") == 0


async def test_registries_are_per_instance_and_exposed_as_text() -> None:
    a, b = Metrics(), Metrics()
    call = FakeCall()
    a.observe(call)
    call.emit("state", "connecting")
    assert a.value("voicebridge_active_calls") == 1
    assert b.value("voicebridge_active_calls") == 0
    body, content_type = a.exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    for name in (
        "voicebridge_active_calls 1.0",
        "# TYPE voicebridge_calls_ended_total counter",
        "# TYPE voicebridge_call_setup_seconds histogram",
        "# TYPE voicebridge_tool_call_seconds histogram",
        "# TYPE voicebridge_relay_packets_total counter",
        "# TYPE voicebridge_relay_packet_latency_seconds histogram",
        "# TYPE voicebridge_turn_latency_seconds histogram",
    ):
        assert name in text


async def test_detach_stops_measuring() -> None:
    m = Metrics()
    call = FakeCall()
    detach = m.observe(call)
    detach()
    call.emit("state", "connecting")
    assert m.value("voicebridge_calls_started_total") == 0


async def test_a_malformed_event_never_breaks_the_call() -> None:
    m = Metrics()
    call = FakeCall()
    errors: list[Exception] = []
    call.on("error", errors.append)
    m.observe(call)
    call.emit("tool_call", {"name": "x", "ok": False, "duration_ms": "not a number"})
    call.emit("ended", {"end_reason": "caller_hangup", "turns": [{"speaker": "cs"}]})  # no start/end
    assert errors == []
    assert m.watch_errors == 2


def test_turn_gaps_between_agents_only() -> None:
    turns = [
        {"speaker": "cs", "start": 0.0, "end": 1.0},
        {"speaker": "cs", "start": 1.2, "end": 2.0},  # the same agent again: not a response
        {"speaker": "caller", "start": 2.5, "end": 3.0},
        {"speaker": "cs", "start": 2.9, "end": 4.0},  # barge-in: overlapping speech counts as 0
        {"speaker": "caller", "text": "heard", "kind": "heard", "start": 3.5, "end": 3.6},
    ]
    assert turn_gaps(turns) == [
        {"responder": "caller", "after": "cs", "latency_s": 0.5},
        {"responder": "cs", "after": "caller", "latency_s": 0.0},
    ]


def test_turn_latencies_prefer_the_summarys_own() -> None:
    # The bridge's TurnLatency shape (summary.json "turn_latency"), measured on the audio packets.
    measured = {
        "turns": [
            {"from": "cs", "to": "caller", "total_ms": 1101.3, "bridge_ms": 0.2},
            {"from": "caller", "to": "cs", "total_ms": 640.0, "bridge_ms": 12.5},
        ],
        "count": 2,
    }
    assert turn_latencies(summary(turn_latency=measured)) == [
        {"responder": "caller", "latency_s": pytest.approx(1.1013), "source": "bridge", "bridge_ms": 0.2},
        {"responder": "cs", "latency_s": 0.64, "source": "bridge", "bridge_ms": 12.5},
    ]
    # A plain list of records works too; junk is skipped.
    plain = [{"responder": "cs", "latency_ms": 640}, {"speaker": "caller", "latency_s": 0.7}, "junk"]
    assert [(r["responder"], r["latency_s"]) for r in turn_latencies(summary(turn_latency=plain))] == [
        ("cs", 0.64),
        ("caller", 0.7),
    ]
    # No measured turns: the transcript's gaps.
    fallback = [{**g, "source": "transcript"} for g in turn_gaps(TURNS)]
    assert turn_latencies(summary(turn_latency={"turns": [], "count": 0})) == fallback
    assert turn_latencies(summary()) == fallback

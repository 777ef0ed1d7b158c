"""Metrics: a call's events become Prometheus samples in the server's own registry.

The call here is a stand-in that emits the real Call's events (same names, the same records) and has a relay with
the real AudioRelay's observation surface (on_packet, cs_out/caller_out latency samples, drops: metrics.py's
PacketSource and LatencySamples); the real Call is measured end to end in tests/integration/test_batch.py and
test_secrets.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pyee.asyncio import AsyncIOEventEmitter

from tests.summaries import line, make_summary, tool_call
from voicebridge.bridge.audio import AudioRelay
from voicebridge.observability.metrics import LatencySamples, Metrics, PacketSource, turn_gaps, turn_latencies
from voicebridge.realtime.transports import PcmRelay
from voicebridge.results import CallSummary, ToolCallRecord, TranscriptLine, TurnGap

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


TURNS = [line("cs", "Hello there.", 0.4, 1.3), line("caller", "Goodbye now.", 2.1, 3.0)]


def summary(reason: str = "caller_hangup", **extra: Any) -> CallSummary:
    return make_summary(end_reason=reason, turns=TURNS, **extra)


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
    call.emit("tool_call", ToolCallRecord.model_validate(tool_call("cs", "lookup_order", duration_ms=12.5)))
    call.emit("tool_call", ToolCallRecord.model_validate(tool_call("cs", "issue_refund", False, duration_ms=3.0)))
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
    call.emit("ended", make_summary(end_reason="error"))
    call.emit("ended", make_summary(end_reason="error"))  # a second "ended" is not a second call
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


async def test_a_failing_handler_never_breaks_the_call() -> None:
    m = Metrics()
    call = FakeCall()
    errors: list[Exception] = []
    call.on("error", errors.append)
    m.observe(call)
    call.emit("tool_call", {"name": "x", "ok": False})  # not a ToolCallRecord: the handler raises
    call.emit("ended", {"end_reason": "caller_hangup"})  # not a CallSummary
    assert errors == []
    assert m.watch_errors == 2


def test_turn_gaps_between_agents_only() -> None:
    turns = [
        line("cs", "", 0.0, 1.0),
        line("cs", "", 1.2, 2.0),  # the same agent again: not a response
        line("caller", "", 2.5, 3.0),
        line("cs", "", 2.9, 4.0),  # barge-in: overlapping speech counts as 0
        line("caller", "heard", 3.5, 3.6, kind="heard"),
    ]
    assert turn_gaps(TranscriptLine.model_validate(t) for t in turns) == [
        TurnGap(responder="caller", after="cs", latency_s=0.5, source="transcript"),
        TurnGap(responder="cs", after="caller", latency_s=0.0, source="transcript"),
    ]


def test_turn_latencies_prefer_the_summarys_own() -> None:
    # The bridge's TurnLatency shape (summary.json "turn_latency"), measured on the audio packets.
    def turn(frm: str, to: str, total_ms: float, bridge_ms: float) -> dict[str, Any]:
        return {
            "from": frm, "to": to, "speech_end": 1.0, "reply_start": 1.0 + total_ms / 1000, "total_ms": total_ms,
            "bridge_ms": bridge_ms, "relay_ms": 0.1, "tools_ms": 0.0, "gating_ms": 0.0, "other_ms": 0.0,
        }

    measured = {
        "turns": [turn("cs", "caller", 1101.3, 0.2), turn("caller", "cs", 640.0, 12.5)],
        "count": 2, "total_ms": None, "bridge_ms": None, "relay_ms": None,
    }
    rows = turn_latencies(summary(turn_latency=measured))
    assert [r.model_dump(mode="json") for r in rows] == [
        {"responder": "caller", "latency_s": pytest.approx(1.1013), "source": "bridge", "bridge_ms": 0.2},
        {"responder": "cs", "latency_s": 0.64, "source": "bridge", "bridge_ms": 12.5},
    ]
    # No measured turns: the transcript's gaps.
    fallback = turn_gaps(TranscriptLine.model_validate(t) for t in TURNS)
    assert [r.model_dump(mode="json") for r in fallback] == [
        {"responder": "caller", "after": "cs", "latency_s": 0.8, "source": "transcript"}
    ]
    assert turn_latencies(summary()) == fallback


def test_the_relay_protocols_describe_the_real_relays() -> None:
    # Metrics sit below media/ and bridge/, so they name what they measure as protocols: these must keep
    # matching the real relays (a renamed attribute would silently stop the measurement).
    relay = AudioRelay(FakeOut([]), FakeOut([]), FakeOut([]), FakeOut([]))  # type: ignore[arg-type]
    assert isinstance(relay, PacketSource) and isinstance(relay, LatencySamples)
    assert not isinstance(PcmRelay.__new__(PcmRelay), PacketSource | LatencySamples)

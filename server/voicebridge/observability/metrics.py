"""Prometheus metrics for calls, in a registry of their own (no global state: one per server or batch).

`Metrics.observe(call)` subscribes to a Call's events (state, tool_call, ended) and, once it is live, to its
relay's packet hook; nothing in the call knows it is measured. What is measured, and where it comes from:

- active calls, calls started, calls ended by `end_reason`, call duration: the "state" and "ended" events;
- set-up time: "connecting" -> "live" (both legs connected, relay running, context synced);
- tool latency and errors per tool: the "tool_call" records (`duration_ms`, `ok`);
- relay packets per party: counted live by the relay's `on_packet` hook (one counter increment per packet);
- per-packet relay latency (tap arrival -> handed to the transport) and drops per direction: at the end of
  the call, from the relay's outbound latency samples (the relay keeps the last 4096 per direction);
- per-turn latency: at the end, from the summary's `turn_latency` (measured on the audio by the bridge) if it
  has one, else from the transcript: one agent's turn ending -> the other's next turn starting (`turn_gaps`).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from voicebridge.results import CallSummary, ToolCallRecord, TranscriptLine, TurnGap

log = logging.getLogger(__name__)

__all__ = ["Metrics", "ObservedCall", "turn_gaps", "turn_latencies"]

_SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_TOOL_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The relay hands a packet on in tens of microseconds; the top buckets catch event-loop stalls.
_PACKET_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_TURN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def turn_gaps(turns: Iterable[TranscriptLine]) -> list[TurnGap]:
    """Response gaps between agents: for each "said" turn that follows the OTHER agent's turn, its start minus
    the previous turn's end (>= 0; overlapping speech, a barge-in, counts as 0), source "transcript"."""
    said = sorted((t for t in turns if t.kind == "said"), key=lambda t: t.start)
    return [
        TurnGap(
            responder=cur.speaker, after=prev.speaker, latency_s=round(max(0.0, cur.start - prev.end), 4),
            source="transcript",
        )
        for prev, cur in itertools.pairwise(said)
        if cur.speaker != prev.speaker
    ]


def turn_latencies(summary: CallSummary) -> list[TurnGap]:
    """A call's per-turn latencies: the bridge's own, measured on the audio packets (`turn_latency`, source
    "bridge"), when it has any; else the gaps between the agents' transcribed turns (`turn_gaps`)."""
    measured = [
        TurnGap(responder=t.to, latency_s=t.total_ms / 1000.0, source="bridge", bridge_ms=t.bridge_ms)
        for t in summary.turn_latency.turns
    ]
    return measured or turn_gaps(summary.turns)


@runtime_checkable
class PacketSource(Protocol):
    """A relay whose packets can be watched: media/relay.py's PacketHooks (stated here, below media/)."""

    def on_packet(self, fn: Callable[[str, object], None]) -> Callable[[], None]: ...


class Outbound(Protocol):
    """One direction's sender: media/passthrough.py's OutboundAudio."""

    @property
    def dropped(self) -> int: ...

    def latency_samples(self) -> list[float]: ...


@runtime_checkable
class LatencySamples(Protocol):
    """A relay that keeps per-packet latency samples per direction: bridge/audio.py's AudioRelay."""

    @property
    def cs_out(self) -> Outbound: ...

    @property
    def caller_out(self) -> Outbound: ...


class ObservedCall(Protocol):
    """What Metrics.observe needs of a call (voicebridge.bridge.call.Call provides it): its id, its relay once
    live (measured for what it can do: PacketSource, LatencySamples), and its events ("state": str,
    "tool_call": ToolCallRecord, "ended": CallSummary)."""

    @property
    def id(self) -> str: ...

    @property
    def relay(self) -> object | None: ...

    def on(self, event: str, f: Callable[..., Any]) -> Any: ...

    def remove_listener(self, event: str, f: Callable[..., Any]) -> None: ...


class Metrics:
    """All call metrics of one server (or one batch run), in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.active_calls = Gauge("voicebridge_active_calls", "Calls connecting, live or ending.", registry=r)
        self.calls_started = Counter("voicebridge_calls_started", "Calls that began connecting.", registry=r)
        self.calls_ended = Counter(
            "voicebridge_calls_ended", "Calls that ended, by end_reason.", ["end_reason"], registry=r
        )
        self.setup_seconds = Histogram(
            "voicebridge_call_setup_seconds",
            "Time from connecting to live: both legs up, relay running, context synced.",
            buckets=_SETUP_BUCKETS,
            registry=r,
        )
        self.call_seconds = Histogram(
            "voicebridge_call_duration_seconds", "Whole call, connecting to ended.", buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.tool_seconds = Histogram(
            "voicebridge_tool_call_seconds", "Tool execution time, by tool and outcome.", ["tool", "ok"],
            buckets=_TOOL_BUCKETS, registry=r,
        )
        self.tool_errors = Counter(
            "voicebridge_tool_call_errors", "Tool calls that failed (error returned to the model).", ["tool"],
            registry=r,
        )
        self.relay_packets = Counter(
            "voicebridge_relay_packets", "RTP packets the relay received, by party.", ["party"], registry=r
        )
        self.relay_dropped = Counter(
            "voicebridge_relay_dropped_packets", "Packets the relay could not send, by direction.", ["direction"],
            registry=r,
        )
        self.packet_seconds = Histogram(
            "voicebridge_relay_packet_latency_seconds",
            "Bridge-internal latency per relayed packet (arrival at the tap -> handed to the transport).",
            ["direction"], buckets=_PACKET_BUCKETS, registry=r,
        )
        self.turn_seconds = Histogram(
            "voicebridge_turn_latency_seconds",
            "Gap between one agent's turn ending and the other's reply starting, by responder.",
            ["responder"], buckets=_TURN_BUCKETS, registry=r,
        )
        self.watch_errors = 0

    # -- exposition ----------------------------------------------------------------------------------------
    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, Content-Type) for a scrape with this Accept header: the classic text format (0.0.4) unless
        the scraper asks for OpenMetrics."""
        encode, content_type = choose_encoder(accept)
        return bytes(encode(self.registry)), str(content_type)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample's current value (0.0 when absent): for tests and the soak report."""
        v = self.registry.get_sample_value(name, labels or {})
        return float(v) if v is not None else 0.0

    # -- attaching to a call -------------------------------------------------------------------------------
    def observe(self, call: ObservedCall) -> Callable[[], None]:
        """Measure this call (a voicebridge Call, or anything emitting its events); returns a detach
        function. Attach before `call.start()` so the set-up time is seen."""
        watch = _CallWatch(self, call)
        handlers: list[tuple[str, Callable[..., None]]] = [
            ("state", watch.on_state),
            ("tool_call", watch.on_tool_call),
            ("ended", watch.on_ended),
        ]
        for event, fn in handlers:
            call.on(event, fn)

        def detach() -> None:
            for event, fn in handlers:
                try:
                    call.remove_listener(event, fn)
                except (KeyError, ValueError):
                    pass
            watch.unhook_relay()

        return detach


class _CallWatch:
    """The per-call state behind Metrics.observe. Every handler swallows its own errors: metrics must never
    break a call (pyee would otherwise turn them into "error" events on the call)."""

    def __init__(self, metrics: Metrics, call: ObservedCall) -> None:
        self.m = metrics
        self.call = call
        self.connecting_at: float | None = None
        self.active = False
        self.done = False
        self._unhook: Callable[[], None] | None = None

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.m.watch_errors += 1
            log.exception("metrics: %s of call %s failed", what, self.call.id)

    def on_state(self, state: str) -> None:
        self._guard(f"state {state}", lambda: self._state(state))

    def _state(self, state: str) -> None:
        if state == "connecting" and self.connecting_at is None:
            self.connecting_at = time.monotonic()
            self.m.calls_started.inc()
            self.m.active_calls.inc()
            self.active = True
        elif state == "live" and self.connecting_at is not None:
            self.m.setup_seconds.observe(time.monotonic() - self.connecting_at)
            self._hook_relay()

    def _hook_relay(self) -> None:
        relay = self.call.relay
        if not isinstance(relay, PacketSource) or self._unhook is not None:
            return  # a relay without packet hooks (PcmRelay) has no packets to count
        children: dict[str, Any] = {}  # party -> its labelled counter child (prometheus_client is untyped)
        counter = self.m.relay_packets

        def on_packet(party: str, _pkt: object) -> None:
            child = children.get(party)
            if child is None:
                child = children[party] = counter.labels(party)
            child.inc()

        self._unhook = relay.on_packet(on_packet)

    def unhook_relay(self) -> None:
        if self._unhook is not None:
            self._unhook()
            self._unhook = None

    def on_tool_call(self, record: ToolCallRecord) -> None:
        self._guard("tool_call", lambda: self._tool_call(record))

    def _tool_call(self, record: ToolCallRecord) -> None:
        self.m.tool_seconds.labels(record.name, "true" if record.ok else "false").observe(record.duration_ms / 1000.0)
        if not record.ok:
            self.m.tool_errors.labels(record.name).inc()

    def on_ended(self, summary: CallSummary) -> None:
        self._guard("ended", lambda: self._ended(summary))

    def _ended(self, summary: CallSummary) -> None:
        if self.done:
            return
        self.done = True
        self.unhook_relay()
        if self.active:
            self.m.active_calls.dec()
            self.active = False
        self.m.calls_ended.labels(summary.end_reason or "unknown").inc()
        if self.connecting_at is not None:
            self.m.call_seconds.observe(time.monotonic() - self.connecting_at)
        relay = self.call.relay
        if isinstance(relay, LatencySamples):
            for direction, out in (("caller_to_cs", relay.cs_out), ("cs_to_caller", relay.caller_out)):
                hist = self.m.packet_seconds.labels(direction)
                for s in out.latency_samples():
                    hist.observe(s)
                if out.dropped:
                    self.m.relay_dropped.labels(direction).inc(out.dropped)
        for row in turn_latencies(summary):
            self.m.turn_seconds.labels(row.responder).observe(row.latency_s)

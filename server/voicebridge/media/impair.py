"""Network impairment on the pass-through relay path: loss, bursty loss, delay, jitter, duplication, blackout.

One `ImpairStage` per direction (caller -> CS, CS -> caller) sits between the inbound tap and the other leg's
`OutboundAudio.send`, i.e. *before* the relay rewrites SSRC / sequence / timestamp. A packet the stage drops
therefore shows to the far end as a gap in sequence numbers: real loss, counted by its RTCP receiver reports.
A delayed packet is the original packet object handed to `send` later (loop.call_later); jitter larger than a
frame reorders packets the way a real network does, and a duplicate is the same packet sent twice. Nothing is
ever decoded: pass-through stays pass-through.

Every random draw comes from one `random.Random(seed)` per stage, in a fixed order per packet, so the same
packets with the same seed get exactly the same fate.

The spec (profiles, `loss=5%,jitter=30ms,...`) is parsed by scenarios/impairment.py.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from voicebridge.results import BlackoutWindow, DelaySummary, ImpairStats
from voicebridge.scenarios.impairment import PROFILES, ImpairSpec, ImpairSpecError, parse_impairment

from .passthrough import InboundTap, OutboundAudio, OutboundStats, RtpAudio

__all__ = [
    "PROFILES", "ImpairSpec", "ImpairSpecError", "ImpairStage", "ImpairedSink", "ImpairedTap", "parse_impairment"
]

Forward = Callable[[RtpAudio, str], None]  # (packet, the source it was pushed with)
Scheduler = Callable[[float, Callable[[], None]], Any]


class ImpairStage:
    """Impairs one direction. `push(pkt)` for each packet as it arrives; survivors reach `forward`, maybe later.

    `clock` (seconds, monotonic) and `schedule(delay_s, fn)` are injectable so tests drive it without waiting;
    by default they are time.perf_counter and the running loop's call_later.
    """

    def __init__(
        self,
        spec: ImpairSpec,
        forward: Forward,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.perf_counter,
        schedule: Scheduler | None = None,
    ) -> None:
        self.spec = spec
        self.seed = seed
        self._forward = forward
        self._rng = random.Random(seed)
        self._clock = clock
        self._schedule = schedule
        self._t0: float | None = None
        # Gilbert-Elliott: every packet in the bad state is lost; p = P(good -> bad), r = P(bad -> good).
        # Mean burst = 1/r, stationary bad share = p/(p+r) = burst_loss.
        if spec.burst_loss > 0:
            self._ge_r = 1.0 / spec.burst_len
            self._ge_p = spec.burst_loss * self._ge_r / (1.0 - spec.burst_loss)
        else:
            self._ge_r = self._ge_p = 0.0
        self._bad = False
        self._pending: set[Any] = set()
        self._closed = False
        self._last_seq: int | None = None
        self.delays: list[float] = []
        self.packets_in = self.lost_random = self.lost_burst = self.lost_blackout = 0
        self.duplicated = self.reordered = self.forwarded = 0

    def start(self, now: float | None = None) -> None:
        """Start the blackout clock (else the first packet starts it)."""
        if self._t0 is None:
            self._t0 = self._clock() if now is None else now

    def close(self) -> None:
        """Cancel packets still waiting out their delay; nothing is forwarded afterwards."""
        self._closed = True
        for handle in list(self._pending):
            cancel = getattr(handle, "cancel", None)
            if cancel is not None:
                cancel()
        self._pending.clear()

    @property
    def dropped(self) -> int:
        return self.lost_random + self.lost_burst + self.lost_blackout

    def push(self, pkt: RtpAudio, source: str = "") -> None:
        """One packet as it arrives; `source` (OutboundAudio.send's) goes with it to `forward`, even when late."""
        if self._closed:
            return
        spec = self.spec
        rng = self._rng
        self.packets_in += 1
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        # The draws happen for every packet in the same order whatever the outcome, so one field's fate never
        # shifts another's random stream: a run repeats exactly, and loss=5% vs loss=5%,dup=1% lose the same packets.
        u_loss, u_ge, u_dup, u_delay = rng.random(), rng.random(), rng.random(), rng.random()
        if self._ge_p:
            self._bad = (u_ge >= self._ge_r) if self._bad else (u_ge < self._ge_p)
        if spec.blackout_len and spec.blackout_at <= now - self._t0 < spec.blackout_at + spec.blackout_len:
            self.lost_blackout += 1
            return
        if self._bad:
            self.lost_burst += 1
            return
        if u_loss < spec.loss:
            self.lost_random += 1
            return
        delay = spec.delay
        if spec.jitter:
            delay = max(0.0, delay + (2.0 * u_delay - 1.0) * spec.jitter)
        self.delays.append(delay)
        copies = 2 if u_dup < spec.dup else 1
        if copies == 2:
            self.duplicated += 1
        if delay <= 0.0:
            for _ in range(copies):
                self._send(pkt, source)
            return
        schedule = self._schedule or asyncio.get_running_loop().call_later
        # The same payload bytes, with its arrival moved by the delay the network would have added: the bridge's
        # own forwarding latency (relay stats, metrics) stays the bridge's, not the impairment's.
        late = replace(pkt, received_at=pkt.received_at + delay)
        for _ in range(copies):
            self._later(schedule, delay, late, source)

    def _later(self, schedule: Scheduler, delay: float, pkt: RtpAudio, source: str) -> None:
        box: list[Any] = []

        def fire() -> None:
            if box:
                self._pending.discard(box[0])
            if not self._closed:
                self._send(pkt, source)

        handle = schedule(delay, fire)
        box.append(handle)
        self._pending.add(handle)

    def _send(self, pkt: RtpAudio, source: str) -> None:
        last = self._last_seq
        if last is not None and 0 < ((last - pkt.sequence) & 0xFFFF) < 0x8000:
            self.reordered += 1
        else:
            self._last_seq = pkt.sequence
        self.forwarded += 1
        self._forward(pkt, source)

    def stats(self, origin_s: float = 0.0) -> ImpairStats:
        """What was applied; `origin_s`: when the stage started on the caller's clock (the call's), so the
        blackout window is given on that clock."""
        dropped = self.dropped
        spec = self.spec
        blackout: BlackoutWindow | None = None
        if spec.blackout_len:
            start = origin_s + spec.blackout_at
            blackout = {"start": round(start, 3), "end": round(start + spec.blackout_len, 3)}
        return {
            "spec": self.spec.describe(),
            "seed": self.seed,
            "packets_in": self.packets_in,
            "dropped": dropped,
            "lost_random": self.lost_random,
            "lost_burst": self.lost_burst,
            "lost_blackout": self.lost_blackout,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "forwarded": self.forwarded,
            "applied_loss": round(dropped / self.packets_in, 4) if self.packets_in else 0.0,
            "delay_ms": delay_summary(self.delays),
            "blackout": blackout,
        }


class ImpairedSink:
    """One stream of a browser's downlink (bridge -> browser): an OutboundAudio behind a stage of its own.

    The relay sends to it as to the OutboundAudio itself (`send(pkt, source)`, `packets_sent`, `dropped`,
    `latency_samples()`: the transport's figures), so the stage sits before the sequence rewrite and a drop is a
    gap the browser counts. Each drop is marked with the number of packets the transport had sent by then, so
    `visible_loss(n)` says exactly how many of them a receiver holding the first n packets sent can count.
    """

    MAX_MARKS = 1 << 20  # a mark per drop: 4 hours of 20 ms packets at 100 % loss

    def __init__(self, out: OutboundAudio, spec: ImpairSpec, seed: int) -> None:
        self.out = out
        self.stage = ImpairStage(spec, out.send, seed=seed)
        self._marks: list[int] = []  # out.packets_sent at each drop: nondecreasing

    @property
    def packets_sent(self) -> int:
        return self.out.packets_sent

    @property
    def dropped(self) -> int:
        """The transport's drops (not connected yet, closed); the stage's are in `stage.stats()`."""
        return self.out.dropped

    def latency_samples(self) -> list[float]:
        return self.out.latency_samples()

    def stats(self) -> OutboundStats:
        return self.out.stats()

    def send(self, pkt: RtpAudio, source: str = "") -> None:
        stage = self.stage
        before = stage.dropped
        stage.push(pkt, source)
        if stage.dropped != before and len(self._marks) < self.MAX_MARKS:
            self._marks.append(self.out.packets_sent)

    def visible_loss(self, received: int) -> int:
        """Drops between the first and the `received`-th packet the transport sent: what a receiver that got
        those packets counts as lost (RTP's expected - received). Exact for loss alone; a delayed packet is
        marked when dropped, not when its neighbours were sent."""
        return bisect.bisect_left(self._marks, received) - bisect.bisect_left(self._marks, 1)

    def close(self) -> None:
        self.stage.close()


class ImpairedTap:
    """A human's microphone on its way to the bridge (browser -> bridge): an InboundTap behind a stage of its own.

    Subscribers (the relay) get what survives, so the CS agent, the listeners and the recording all get the
    impaired stream, as they would from a browser on that network; `packets` / `bytes` are the tap's own.
    """

    def __init__(self, tap: InboundTap, spec: ImpairSpec, seed: int) -> None:
        self.tap = tap
        self.stage = ImpairStage(spec, self._deliver, seed=seed)
        self._subs: tuple[Callable[[RtpAudio], None], ...] = ()
        self._unsub = tap.subscribe(self.stage.push)

    @property
    def packets(self) -> int:
        return self.tap.packets

    @property
    def bytes(self) -> int:
        return self.tap.bytes

    def subscribe(self, fn: Callable[[RtpAudio], None]) -> Callable[[], None]:
        self._subs = (*self._subs, fn)

        def unsubscribe() -> None:
            self._subs = tuple(f for f in self._subs if f is not fn)

        return unsubscribe

    def _deliver(self, pkt: RtpAudio, _source: str) -> None:
        for fn in self._subs:
            fn(pkt)

    def close(self) -> None:
        self._unsub()
        self.stage.close()


def delay_summary(delays: list[float]) -> DelaySummary:
    if not delays:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    s = sorted(delays)

    def pct(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000.0, 2)

    return {"count": len(s), "p50": pct(0.5), "p95": pct(0.95), "max": round(s[-1] * 1000.0, 2)}

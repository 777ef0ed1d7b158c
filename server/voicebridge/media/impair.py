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
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from voicebridge.results import BlackoutWindow, DelaySummary, ImpairStats
from voicebridge.scenarios.impairment import PROFILES, ImpairSpec, ImpairSpecError, parse_impairment

from .passthrough import RtpAudio

__all__ = ["PROFILES", "ImpairSpec", "ImpairSpecError", "ImpairStage", "parse_impairment"]

Forward = Callable[[RtpAudio], None]
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

    def push(self, pkt: RtpAudio) -> None:
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
                self._send(pkt)
            return
        schedule = self._schedule or asyncio.get_running_loop().call_later
        # The same payload bytes, with its arrival moved by the delay the network would have added: the bridge's
        # own forwarding latency (relay stats, metrics) stays the bridge's, not the impairment's.
        late = replace(pkt, received_at=pkt.received_at + delay)
        for _ in range(copies):
            self._later(schedule, delay, late)

    def _later(self, schedule: Scheduler, delay: float, pkt: RtpAudio) -> None:
        box: list[Any] = []

        def fire() -> None:
            if box:
                self._pending.discard(box[0])
            if not self._closed:
                self._send(pkt)

        handle = schedule(delay, fire)
        box.append(handle)
        self._pending.add(handle)

    def _send(self, pkt: RtpAudio) -> None:
        last = self._last_seq
        if last is not None and 0 < ((last - pkt.sequence) & 0xFFFF) < 0x8000:
            self.reordered += 1
        else:
            self._last_seq = pkt.sequence
        self.forwarded += 1
        self._forward(pkt)

    def stats(self, origin_s: float = 0.0) -> ImpairStats:
        """What was applied; `origin_s`: when the stage started on the caller's clock (the call's), so the
        blackout window is given on that clock."""
        dropped = self.lost_random + self.lost_burst + self.lost_blackout
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


def delay_summary(delays: list[float]) -> DelaySummary:
    if not delays:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    s = sorted(delays)

    def pct(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000.0, 2)

    return {"count": len(s), "p50": pct(0.5), "p95": pct(0.95), "max": round(s[-1] * 1000.0, 2)}

"""Network impairment on the pass-through relay path: loss, bursty loss, delay, jitter, duplication, blackout.

One `ImpairStage` per direction (caller -> CS, CS -> caller) sits between the inbound tap and the other leg's
`OutboundAudio.send`, i.e. *before* the relay rewrites SSRC / sequence / timestamp. A packet the stage drops
therefore shows to the far end as a gap in sequence numbers: real loss, counted by its RTCP receiver reports.
A delayed packet is the original packet object handed to `send` later (loop.call_later); jitter larger than a
frame reorders packets the way a real network does, and a duplicate is the same packet sent twice. Nothing is
ever decoded: pass-through stays pass-through.

Every random draw comes from one `random.Random(seed)` per stage, in a fixed order per packet, so the same
packets with the same seed get exactly the same fate.

Spec grammar (comma separated, any order, each at most once)::

    loss=5%            independent random loss
    burst=3%/4         Gilbert-Elliott bursty loss: 3 % of packets lost on average, in bursts of 4 on average
    delay=80ms         one-way delay added to every packet
    jitter=30ms        each packet's delay drawn uniformly in [delay - jitter, delay + jitter] (clamped at 0),
                       as netem's "delay 80ms 30ms" does
    dup=1%             duplicate a packet (the copy is sent right after the original)
    blackout=2s@30s    drop every packet for 2 s starting 30 s after the stage started

A bare profile name (`good`, `wifi`, `3g`, `satellite`, `lossy`) stands for its spec in PROFILES; a spec may
also start with a profile and override fields: `3g,loss=10%`.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from voicebridge.results import DelaySummary, ImpairStats

from .passthrough import RtpAudio


class ImpairSpecError(ValueError):
    """A bad impairment spec; the message names the field and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class ImpairSpec:
    """What to apply to one direction. Probabilities are fractions (0.05 = 5 %), times are seconds."""

    loss: float = 0.0
    burst_loss: float = 0.0  # Gilbert-Elliott mean loss rate
    burst_len: float = 0.0  # Gilbert-Elliott mean burst length in packets (>= 1 when burst_loss > 0)
    delay: float = 0.0
    jitter: float = 0.0
    dup: float = 0.0
    blackout_len: float = 0.0
    blackout_at: float = 0.0

    @property
    def is_null(self) -> bool:
        return self == ImpairSpec()

    def describe(self) -> str:
        """The canonical spec string (parses back to an equal spec)."""
        parts: list[str] = []
        if self.loss:
            parts.append(f"loss={_pct(self.loss)}")
        if self.burst_loss:
            parts.append(f"burst={_pct(self.burst_loss)}/{self.burst_len:g}")
        if self.delay:
            parts.append(f"delay={_ms(self.delay)}")
        if self.jitter:
            parts.append(f"jitter={_ms(self.jitter)}")
        if self.dup:
            parts.append(f"dup={_pct(self.dup)}")
        if self.blackout_len:
            parts.append(f"blackout={self.blackout_len:g}s@{self.blackout_at:g}s")
        return ",".join(parts) or "none"


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _ms(x: float) -> str:
    return f"{x * 1000:g}ms"


PROFILES: dict[str, str] = {
    "good": "none",
    "wifi": "loss=1%,delay=10ms,jitter=10ms",
    "3g": "burst=3%/3,delay=100ms,jitter=40ms",
    "satellite": "loss=1%,delay=300ms,jitter=20ms",
    "lossy": "loss=10%,burst=5%/4,delay=40ms,jitter=20ms,dup=1%",
}

_KEYS = ("loss", "burst", "delay", "jitter", "dup", "blackout")


def _parse_fraction(key: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
    if m is None:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is not a percentage like 5% (or a fraction 0.05)")
    value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not 0.0 <= value <= 1.0:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is outside 0..100%")
    return value


def _parse_time(key: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)\s*", text)
    if m is None:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is not a duration like 80ms or 2s")
    value = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if value > 3600:
        raise ImpairSpecError(f"impairment field {key!r}: {text!r} is longer than an hour")
    return value


def parse_impairment(text: str) -> ImpairSpec:
    """A profile name or a spec string (see the module doc) -> ImpairSpec; ImpairSpecError names the bad field."""
    spec = ImpairSpec()
    seen: set[str] = set()
    items = [p.strip() for p in text.split(",")]
    if not text.strip():
        raise ImpairSpecError("impairment spec is empty: give a profile (" + ", ".join(PROFILES) + ") or key=value")
    for i, item in enumerate(items):
        if not item:
            raise ImpairSpecError(f"impairment spec {text!r}: empty field at position {i + 1}")
        if "=" not in item:
            name = item.lower()
            if name == "none":
                continue
            if i == 0 and name in PROFILES:
                spec = parse_impairment(PROFILES[name])
                continue
            raise ImpairSpecError(
                f"impairment field {item!r}: not key=value and not a profile (profiles: {', '.join(PROFILES)};"
                f" keys: {', '.join(_KEYS)})"
            )
        key, _, value = item.partition("=")
        key = key.strip().lower()
        if key not in _KEYS:
            raise ImpairSpecError(f"impairment field {key!r}: unknown key (known: {', '.join(_KEYS)})")
        if key in seen:
            raise ImpairSpecError(f"impairment field {key!r}: given twice")
        seen.add(key)
        if key == "loss":
            spec = replace(spec, loss=_parse_fraction(key, value))
        elif key == "dup":
            spec = replace(spec, dup=_parse_fraction(key, value))
        elif key == "delay":
            spec = replace(spec, delay=_parse_time(key, value))
        elif key == "jitter":
            spec = replace(spec, jitter=_parse_time(key, value))
        elif key == "burst":
            rate, sep, length = value.partition("/")
            if not sep:
                raise ImpairSpecError(f"impairment field 'burst': {value!r} is not RATE/LENGTH like 3%/4")
            bl = _parse_fraction(key, rate)
            try:
                ln = float(length)
            except ValueError:
                raise ImpairSpecError(f"impairment field 'burst': length {length!r} is not a number") from None
            if ln < 1:
                raise ImpairSpecError(f"impairment field 'burst': mean burst length {length!r} must be >= 1 packet")
            if bl >= 1:
                raise ImpairSpecError(f"impairment field 'burst': rate {rate!r} must be below 100%")
            spec = replace(spec, burst_loss=bl, burst_len=ln if bl else 0.0)
        else:  # blackout
            length_s, sep, at = value.partition("@")
            if not sep:
                raise ImpairSpecError(f"impairment field 'blackout': {value!r} is not LENGTH@START like 2s@30s")
            spec = replace(spec, blackout_len=_parse_time(key, length_s), blackout_at=_parse_time(key, at))
    return spec


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
        for _ in range(copies):
            self._later(schedule, delay, pkt)

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

    def stats(self) -> ImpairStats:
        dropped = self.lost_random + self.lost_burst + self.lost_blackout
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
        }


def delay_summary(delays: list[float]) -> DelaySummary:
    if not delays:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    s = sorted(delays)

    def pct(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000.0, 2)

    return {"count": len(s), "p50": pct(0.5), "p95": pct(0.95), "max": round(s[-1] * 1000.0, 2)}

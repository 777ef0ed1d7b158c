"""One encoded Opus packet as the pass-through hands it on (``RtpAudio``), what its TOC byte says
(``opus_samples``), and the latency summary every relay reports (``latency_summary``). No aiortc here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OPUS_CLOCK = 48000


@dataclass(slots=True)
class RtpAudio:
    """One encoded Opus packet as it arrived."""

    payload: bytes
    timestamp: int  # sender's RTP timestamp, 48 kHz clock
    sequence: int
    marker: bool
    received_at: float  # time.perf_counter() at arrival in the bridge


def opus_samples(payload: bytes) -> int:
    """Samples (at 48 kHz) in one Opus packet, from its TOC byte (RFC 6716 section 3.1); 960 if unreadable."""
    if not payload:
        return 960
    toc = payload[0]
    config = toc >> 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        size = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        size = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        size = (120, 240, 480, 960)[config & 3]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    else:
        frames = (payload[1] & 0x3F) if len(payload) > 1 else 1
    return size * max(frames, 1)


def latency_summary(samples: Any) -> dict[str, float | int]:
    """p50/p99/max in milliseconds of a sequence of seconds (empty -> count 0)."""
    values = sorted(samples)
    n = len(values)
    if n == 0:
        return {"count": 0}

    def pct(p: float) -> float:
        return round(float(values[min(n - 1, int(p * n))]) * 1000.0, 4)

    return {"count": n, "p50": pct(0.50), "p99": pct(0.99), "max": round(values[-1] * 1000.0, 4)}

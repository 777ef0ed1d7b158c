"""Measuring instruments of the bench (bench process only): event-loop lag, GC pauses, the kernel's UDP drops,
the pass-through's pre-send share of latency, and optional pyinstrument profiles attributed by owner."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from voicebridge.media.passthrough import latency_summary

PROBE_S = 0.05  # event-loop lag probe period (a cheap tick: 20 per second)


def _say(text: str) -> None:
    print(f"  [bridge] {text}", file=sys.stderr, flush=True)


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped because a socket's receive buffer was full."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return 0


class LagProbe:
    """How late a 50 ms timer fires: how long this process's event loop was busy (or not scheduled)."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + PROBE_S
        self._h = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        self.lags.append(now - self._due)
        self._due = now + PROBE_S
        self._h = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        self._h.cancel()

    def summary(self) -> dict[str, float | int]:
        return latency_summary(self.lags)


def profiler() -> Any:
    """VOICEBRIDGE_BENCH_PROFILE=DIR: profile the main window with pyinstrument (if installed)."""
    if not os.environ.get("VOICEBRIDGE_BENCH_PROFILE"):
        return None
    try:
        from pyinstrument import Profiler
    except ImportError:
        _say("VOICEBRIDGE_BENCH_PROFILE is set but pyinstrument is not installed; not profiling")
        return None
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    return profiler


def write_profile(profiler: Any, name: str) -> None:
    profiler.stop()
    path = os.path.join(os.environ["VOICEBRIDGE_BENCH_PROFILE"], f"profile-{name}.txt")
    text = profiler.output_text(unicode=False, color=False, show_all=True)
    shares = profile_shares(text)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{pct:5.1f} %  {name}\n" for name, pct in shares.items()) + "\n" + text)
    _say(f"profile written to {path}: " + ", ".join(f"{n} {p:.0f} %" for n, p in list(shares.items())[:6]))


class GcProbe:
    """Pauses of the cyclic garbage collector during a window (they stall the whole event loop)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._start)

    def stop(self) -> None:
        gc.callbacks.remove(self._cb)

    def summary(self) -> dict[str, float | int]:
        return {"count": len(self.pauses), "max_ms": round(1000 * max(self.pauses, default=0.0), 2)}


_LEAF = re.compile(r"(\d+\.\d+) (\[self\]|\S+)\s+(\S+)$")


def profile_shares(text: str) -> dict[str, float]:
    """Busy time of a pyinstrument text profile (show_all) by owner: the kernel's sendto, aiortc, ours..."""
    shares: dict[str, float] = {}
    for line in text.splitlines():
        m = _LEAF.search(line.strip("|-` "))
        if not m or (m.group(2) != "[self]" and "<built-in>" not in m.group(3)):
            continue  # only leaves: a function's own time, or a built-in it called
        name, where = m.group(2), m.group(3)
        if "epoll" in name or name.startswith("select"):
            continue  # idle
        if "sendto" in name:
            owner = "kernel sendto (loopback delivery)"
        elif "srtp" in where.lower() or "srtp" in name.lower():
            owner = "SRTP"
        else:
            owner = next((o for o in ("voicebridge", "aiortc", "aioice", "asyncio") if o in where), "other")
        shares[owner] = shares.get(owner, 0.0) + float(m.group(1))
    total = sum(shares.values()) or 1.0
    return {k: round(100 * v / total, 1) for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}


presend: deque[float] = deque(maxlen=200_000)


def instrument_presend() -> Callable[[], None]:
    """Record, per forwarded packet, tap arrival -> the moment the transport send starts (our Python's share).

    The rest of the bridge latency is aiortc's SRTP protect and the kernel's sendto. One extra
    perf_counter() per packet, in the bench process only (the same split as the relay engineer's script).
    """
    import voicebridge.media.passthrough as pt

    real_transmit = pt.OutboundAudio._transmit
    real_send = pt.OutboundAudio.send
    current: list[float] = [0.0]

    def transmit(self: Any, dtls: Any, data: bytes) -> bool:
        current[0] = time.perf_counter()
        return real_transmit(self, dtls, data)

    def send(self: Any, pkt: Any, source: str = "") -> None:
        real_send(self, pkt, source)
        if current[0]:
            presend.append(current[0] - pkt.received_at)
            current[0] = 0.0

    pt.OutboundAudio._transmit = transmit  # type: ignore[method-assign]
    pt.OutboundAudio.send = send  # type: ignore[method-assign]

    def undo() -> None:
        pt.OutboundAudio._transmit = real_transmit  # type: ignore[method-assign]
        pt.OutboundAudio.send = real_send  # type: ignore[method-assign]

    return undo

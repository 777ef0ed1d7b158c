"""The event-loop floor: what a Python event loop costs per datagram at the bench's packet pattern, same run.

The floor (bench/floor.py) reads 64 queued packets per loop turn; a bridge is woken by its event loop for
nearly every packet, since N independent callers' packets arrive spread over each 20 ms frame. This module
measures what that costs before any relaying: a fresh receiver process holds the sockets of N calls' 2N legs
on one event loop (asyncio's or uvloop), and a sender process paces real SRTP packets of the bench's size into
them as the load generator does (each leg 50 packets/s at its own random phase, one timer per occupied
millisecond of the 20 ms frame, bench/load.py's ``Pacer``), draining what comes back. Two receivers:

* ``count``: a ``DatagramProtocol`` that only counts: the wake-ups and asyncio's datagram path alone;
* ``forward``: the same doing the floor's work in the callback: SRTP unprotect with the leg's session, protect
  with the other leg's, ``sendto`` on the other leg's transport to its far end (learnt from its first
  datagram, as ICE learns it): the least a Python event-loop forwarder can spend per packet.

CPU is the receiver's process time over the window divided by the packets it received (count) or forwarded
(forward); the bridge's CPU per forwarded packet is then also judged against ``forward`` on its own loop.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing as mp
import os
import random
import struct
import time
from typing import Any, TypedDict

from voicebridge import eventloop

from .floor import _MID_EXTENSION, srtp_sessions

FRAME_S = 0.020
SLOT_S = 0.001
WORKS = ("count", "forward")


class LoopFloor(TypedDict):
    """One measurement: `calls` calls' legs on `loop`, receiver doing `work`, µs of CPU per packet."""

    calls: int
    loop: str
    work: str
    us_per_packet: float
    packets: int  # received (count) or forwarded (forward) in the window
    expected: int  # what the sender paced in the window (2 legs x 50 packets/s per call)
    wakeups_per_packet: float | None  # the receiver's voluntary context switches per packet (Linux), if known
    seconds: float


class _Leg(asyncio.DatagramProtocol):
    """One leg's socket in the receiver: counts, and in `forward` relays to the other leg's far end."""

    def __init__(self, rx: Any, tx: Any) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.far: tuple[str, int] | None = None
        self.peer: _Leg = self
        self.packets = 0
        self.unprotect = rx.unprotect
        self.protect = tx.protect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1


class _ForwardingLeg(_Leg):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets += 1
        if self.far is None:
            self.far = addr
        peer = self.peer
        if peer.far is not None:
            peer.transport.sendto(peer.protect(self.unprotect(data)), peer.far)  # type: ignore[union-attr]


def _same(leg: _Leg) -> _Leg:
    return leg


def _voluntary_switches() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


async def _receive(conn: Any, calls: int, work: str, key: bytes, seconds: float, warmup: float) -> LoopFloor:
    loop = asyncio.get_running_loop()
    legs: list[_Leg] = []
    cls = _ForwardingLeg if work == "forward" else _Leg
    for _ in range(2 * calls):
        _producer, rx, tx, _profile = srtp_sessions(key)
        leg = cls(rx, tx)
        await loop.create_datagram_endpoint(functools.partial(_same, leg), local_addr=("127.0.0.1", 0))
        legs.append(leg)
    for a, b in zip(legs[::2], legs[1::2], strict=True):
        a.peer, b.peer = b, a
    conn.send([leg.transport.get_extra_info("sockname") for leg in legs])  # type: ignore[union-attr]
    await loop.run_in_executor(None, conn.recv)  # the sender is pacing
    await asyncio.sleep(warmup)
    n0 = sum(leg.packets for leg in legs)
    sw0 = _voluntary_switches()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)  # a benchmark window: the receiver only receives meanwhile
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    sw1 = _voluntary_switches()
    packets = sum(leg.packets for leg in legs) - n0
    return {
        "calls": calls,
        "loop": eventloop.loop_name(),
        "work": work,
        "us_per_packet": round(1e6 * cpu / packets, 2) if packets else 0.0,
        "packets": packets,
        "expected": int(2 * calls * wall / FRAME_S),
        "wakeups_per_packet": round((sw1 - sw0) / packets, 2) if packets and sw0 is not None and sw1 else None,
        "seconds": round(wall, 2),
    }


def receiver_main(conn: Any, calls: int, loop: str, work: str, key: bytes, seconds: float, warmup: float) -> None:
    """Entry point of the receiver process: bind 2 x calls sockets, measure, send back the LoopFloor."""
    try:
        with asyncio.Runner(loop_factory=eventloop.loop_factory(loop)) as runner:
            result = runner.run(_receive(conn, calls, work, key, seconds, warmup))
        conn.send(("ok", result))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise


class _Sink(asyncio.DatagramProtocol):
    """The sender's end of one leg: what the receiver forwards comes back here and is drained (like the load)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1


async def _send(conn: Any, targets: list[tuple[str, int]], payloads: list[bytes], key: bytes) -> None:
    """Pace one stream per target (50 packets/s at a random phase) from one timer per occupied millisecond."""
    loop = asyncio.get_running_loop()
    producer = srtp_sessions(key)[0]
    sinks: list[_Sink] = []
    for _ in targets:
        _t, sink = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
        sinks.append(sink)
    # Per stream: [sink, target, ssrc, seq, timestamp, payload index]
    streams = [
        [sink, target, random.getrandbits(32), random.getrandbits(15), random.getrandbits(32), random.randrange(999)]
        for sink, target in zip(sinks, targets, strict=True)
    ]
    slots: dict[int, list[list[Any]]] = {}
    for s in streams:
        slots.setdefault(random.randrange(int(FRAME_S / SLOT_S)), []).append(s)
    protect, pack, n = producer.protect, struct.Struct("!BBHII").pack, len(payloads)

    def tick(slot: int, due: float) -> None:
        for s in slots[slot]:
            s[3] = (s[3] + 1) & 0xFFFF
            s[4] = (s[4] + 960) & 0xFFFFFFFF
            s[5] = (s[5] + 1) % n
            packet = pack(0x90, 111, s[3], s[4], s[2]) + _MID_EXTENSION + payloads[s[5]]
            s[0].transport.sendto(protect(packet), s[1])
        now = loop.time()
        due = due + FRAME_S if now - due < 0.2 else now  # far behind: resynchronise instead of bursting
        loop.call_at(due, tick, slot, due)

    start = loop.time() + 0.05
    for slot in slots:
        loop.call_at(start + slot * SLOT_S, tick, slot, start + slot * SLOT_S)
    conn.send("pacing")
    await loop.run_in_executor(None, conn.recv)  # ("stop",)


def sender_main(
    conn: Any, targets: list[tuple[str, int]], payloads: list[bytes], key: bytes
) -> None:
    """Entry point of the sender process: on uvloop when installed and SCHED_BATCH, as the bench's load processes
    (a far end that does not preempt the receiver when woken: bench/load.py far_end_scheduling)."""
    from .load import far_end_scheduling, load_loop_factory

    far_end_scheduling()

    with asyncio.Runner(loop_factory=load_loop_factory()) as runner:
        runner.run(_send(conn, targets, payloads, key))


def measure_loop_floor(
    calls: int,
    loop: str,
    work: str,
    payloads: list[bytes],
    seconds: float = 4.0,
    warmup: float = 1.0,
) -> LoopFloor:
    """One measurement in fresh processes (receiver measured, sender pacing); RuntimeError if either fails."""
    if work not in WORKS:
        raise ValueError(f"unknown receiver work {work!r} ({' or '.join(WORKS)})")
    ctx = mp.get_context("spawn")
    key = os.urandom(_key_size())
    r_parent, r_child = ctx.Pipe()
    s_parent, s_child = ctx.Pipe()
    receiver = ctx.Process(target=receiver_main, args=(r_child, calls, loop, work, key, seconds, warmup), daemon=True)
    receiver.start()
    sender: Any = None
    try:
        if not r_parent.poll(60):
            raise RuntimeError("bench: the event-loop floor's receiver did not start within 60 s")
        targets = r_parent.recv()
        if isinstance(targets, tuple):  # ("error", message)
            raise RuntimeError(f"bench: the event-loop floor's receiver failed: {targets[1]}")
        sender = ctx.Process(target=sender_main, args=(s_child, targets, payloads, key), daemon=True)
        sender.start()
        if not s_parent.poll(60):
            raise RuntimeError("bench: the event-loop floor's sender did not start within 60 s")
        s_parent.recv()
        r_parent.send("go")
        if not r_parent.poll(60 + seconds + warmup):
            raise RuntimeError("bench: the event-loop floor's receiver gave no result")
        status, payload = r_parent.recv()
        if status != "ok":
            raise RuntimeError(f"bench: the event-loop floor's receiver failed: {payload}")
        result: LoopFloor = payload
        return result
    except EOFError:
        raise RuntimeError("bench: an event-loop floor process died") from None
    finally:
        if sender is not None:
            try:
                s_parent.send(("stop",))
            except OSError:
                pass
        for proc in (receiver, sender):
            if proc is None:
                continue
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _key_size() -> int:
    from aiortc.rtcdtlstransport import SRTP_PROFILES

    return int(SRTP_PROFILES[0].key_length + SRTP_PROFILES[0].salt_length)


def available_loops() -> list[str]:
    """asyncio, and uvloop when installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


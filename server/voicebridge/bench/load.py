"""Load generator process: cheap emulated agents that talk continuously over real WebRTC on loopback.

Each agent is an answering RTCPeerConnection whose audio goes out SFU style (``OutboundAudio``: cached Opus
packets written straight to the transport every 20 ms, no encoder, no aiortc send loop) and comes in through an
``InboundTap`` (no jitter buffer, no decoder), both on the short paths of media/passthrough.py (socket to
socket, no aiortc coroutines per packet). The process runs on uvloop when installed and sends from one timer per
occupied millisecond of the 20 ms frame (media/pacer.py), not one per agent: the load should not be what limits the
bench. Both agents of a call live in the same process, so the end-to-end latency of a packet (sent by
one agent -> received by the other, through the bridge) is matched by payload on one clock.

Driven over a multiprocessing pipe by the bridge process (see bench/bridge.py for the messages).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from voicebridge import eventloop
from voicebridge.media.loopback import set_loopback_only
from voicebridge.media.pacer import FRAME_S, Pacer
from voicebridge.media.passthrough import InboundTap, OutboundAudio, RtpAudio

from .probes import LagProbe

CACHE_PACKETS = 1500  # 30 s of unique packets: longer than window + grace, so a payload names one send


def noise_packets(count: int = CACHE_PACKETS, seed: int = 7) -> list[bytes]:
    """count unique 20 ms Opus packets (speech-like bit rate) of a tone with noise, encoded once by libopus."""
    import av
    import numpy as np

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "stereo"
    enc.format = "s16"
    enc.bit_rate = 32000
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    n = 0
    while len(out) < count + 10:
        t = (np.arange(960) + n * 960) / 48000.0
        wave = 0.3 * np.sin(2 * math.pi * 220 * t) + 0.05 * rng.standard_normal(960)
        mono = (wave * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = n * 960
        out.extend(bytes(p) for p in enc.encode(frame))
        n += 1
    packets = out[10 : 10 + count]  # skip the encoder's start-up packets
    if len(set(packets)) != count:
        raise RuntimeError("bench: the cached Opus packets are not unique; payload matching would be wrong")
    return packets


class Agent:
    """One emulated party: sends cached packets at 20 ms pace (its Pacer), records what it sends and receives."""

    def __init__(self, packets: list[bytes], phase: float) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.out = OutboundAudio()
        self.out.add_to(self.pc)
        assert self.out.receiver is not None
        self.tap = InboundTap(self.out.receiver)
        self.tap.subscribe(self._on_packet)
        self.packets = packets
        self.phase = phase
        self.peer: Agent | None = None
        self.sent_at: dict[bytes, float] = {}
        self.sent = 0
        self.received = 0
        self.matched: list[float] = []
        self.recording = False  # receiving side: match payloads, remember what arrived
        self.logging = False  # sending side: remember what was sent in the window
        self.sent_log: list[bytes] = []
        self.got: set[bytes] = set()
        self._i = random.randrange(len(packets))
        self._seq = random.getrandbits(15)
        self._ts = random.getrandbits(32)
        self.pacer: Pacer | None = None

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    def start_sending(self, pacer: Pacer) -> None:
        self.pacer = pacer
        pacer.add(self, self.phase)

    def send_next(self) -> None:
        """This agent's packet of the current 20 ms frame (called by its Pacer slot)."""
        if self.out.connected:
            payload = self.packets[self._i]
            self._i = (self._i + 1) % len(self.packets)
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + 960) & 0xFFFFFFFF
            t = time.perf_counter()
            self.out.send(RtpAudio(payload, self._ts, self._seq, False, t), "load")
            self.sent_at[payload] = t
            self.sent += 1
            if self.logging:
                self.sent_log.append(payload)

    def _on_packet(self, pkt: RtpAudio) -> None:
        self.received += 1
        if self.recording and self.peer is not None:
            self.got.add(pkt.payload)
            sent = self.peer.sent_at.get(pkt.payload)
            if sent is not None:
                self.matched.append(pkt.received_at - sent)

    async def close(self) -> None:
        if self.pacer is not None:
            self.pacer.remove(self)
        self.out.close()
        self.tap.close()
        await self.pc.close()


class Listener:
    """A browser-like receive-only peer: counts what it gets on each of its tracks, decodes nothing."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.taps: list[InboundTap] = []

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for t in self.pc.getTransceivers():
            self.taps.append(InboundTap(t.receiver))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    @property
    def received(self) -> int:
        return sum(t.packets for t in self.taps)

    async def close(self) -> None:
        for t in self.taps:
            t.close()
        await self.pc.close()


async def _serve(conn: Any) -> None:
    loop = asyncio.get_running_loop()
    packets = noise_packets()
    pacer = Pacer()
    agents: list[Agent] = []
    listeners: list[Listener] = []

    async def recv() -> Any:
        return await loop.run_in_executor(None, conn.recv)

    conn.send(("ready",))
    try:
        while True:
            msg = await recv()
            kind = msg[0]
            if kind == "call":  # ("call", caller_offer, cs_offer) -> (caller_answer, cs_answer)
                a, b = Agent(packets, random.random() * FRAME_S), Agent(packets, random.random() * FRAME_S)
                a.peer, b.peer = b, a
                agents += [a, b]
                answers = await asyncio.gather(a.answer(msg[1]), b.answer(msg[2]))
                a.start_sending(pacer)
                b.start_sending(pacer)
                conn.send(tuple(answers))
            elif kind == "listener":  # ("listener", offer) -> answer
                listener = Listener()
                listeners.append(listener)
                conn.send(await listener.answer(msg[1]))
            elif kind == "window":  # ("window", seconds, shift_s) -> counts over the window, matched latencies
                conn.send(await _window(agents, listeners, pacer, msg[1], msg[2]))
            elif kind == "close_all":  # the bridge's warm-up call is over: stop its agents
                await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
                agents.clear()
                conn.send("closed")
            elif kind == "stop":
                break
    finally:
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
        await asyncio.gather(*(x.close() for x in listeners), return_exceptions=True)
        conn.send(("closed", len(agents), len(listeners)))


async def _window(
    agents: list[Agent], listeners: list[Listener], pacer: Pacer, seconds: float, shift: float
) -> dict[str, Any]:
    """Packets sent in [0, seconds] against packets received in [shift, seconds + shift] (shift = latency)."""
    if 2 * (seconds + shift) > CACHE_PACKETS * FRAME_S:
        # A payload must name one send: an earlier copy received in the window would hide a lost later one.
        raise ValueError(f"bench window {seconds} s is too long for {CACHE_PACKETS} cached packets")
    for a in agents:
        a.matched, a.sent_log, a.got = [], [], set()
        a.recording = a.logging = True
    pacer.late = 0
    lag = LagProbe()
    sent0 = sum(a.sent for a in agents)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(shift)
    recv0 = sum(a.received for a in agents)
    lrecv0 = sum(x.received for x in listeners)
    await asyncio.sleep(seconds - shift)
    sent1 = sum(a.sent for a in agents)
    for a in agents:
        a.logging = False
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    await asyncio.sleep(shift)
    recv1 = sum(a.received for a in agents)
    lrecv1 = sum(x.received for x in listeners)
    for a in agents:
        a.recording = False
    matched = [s for a in agents for s in a.matched]
    # Exact loss where payloads pass through unchanged: sent in the window and never received (within shift).
    logged = sum(len(a.sent_log) for a in agents)
    missing = sum(1 for a in agents if a.peer is not None for p in a.sent_log if p not in a.peer.got)
    lag.stop()
    return {
        "loop_lag_ms": lag.summary(),
        "sent": sent1 - sent0,
        "received": recv1 - recv0,
        "listener_received": lrecv1 - lrecv0,
        "matched": matched,
        "logged": logged,
        "missing": missing,
        "late_ticks": pacer.late,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "sched": "batch" if os.sched_getscheduler(0) == getattr(os, "SCHED_BATCH", None) else "normal",
        "cpu_pct": 100.0 * cpu / wall if wall > 0 else 0.0,
    }


def load_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The load's event loop: uvloop when installed (the bench extra has it: a cheaper load), asyncio's if not or
    if VOICEBRIDGE_BENCH_LOAD_LOOP=asyncio."""
    if os.environ.get("VOICEBRIDGE_BENCH_LOAD_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            return None
        return uvloop.new_event_loop
    return None


def far_end_scheduling(policy: str = "batch") -> str:
    """Schedule this process as a far end that never preempts the bridge when woken: SCHED_BATCH.

    The load stands for agents on other machines (OpenAI). On loopback each packet the bridge sends wakes a load
    process, and Linux places a task woken by a socket write on the writer's CPU and lets it preempt the writer
    (the wake-up is marked synchronous): the bridge was preempted in the middle of forwarding a packet, its
    ``sendto`` returning only after the load process had run. In an interleaved A/B at 25 calls 97 % of the
    packets that took the bridge over 0.3 ms had an involuntary context switch inside them, and the added
    latency p99 was 0.24-0.46 ms with the load on SCHED_NORMAL against 0.08-0.12 ms on SCHED_BATCH (a policy any
    user may choose: no wake-up preemption, otherwise the same fair share of the CPU). A remote agent's wake-up
    costs the bridge nothing, so this is the bench's topology made closer to the real one, not the bridge made
    faster. ``policy="normal"`` keeps the default policy (the bench compares both). Returns the policy in force.
    """
    if policy == "batch" and hasattr(os, "SCHED_BATCH"):
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except OSError:
            return "normal"
        return "batch"
    return "normal"


def load_main(conn: Any, sched: str = "batch") -> None:
    """Entry point of a load process (multiprocessing target); sched: its policy (far_end_scheduling)."""
    set_loopback_only(True)
    far_end_scheduling(sched)
    with asyncio.Runner(loop_factory=load_loop_factory()) as runner:
        eventloop.quiet_lost_peer_tasks(runner.get_loop())
        runner.run(_serve(conn))

"""The bridge under test, in its own process: N calls through one relay kind, measured over a window.

Messages to a load process (bench/load.py): ("call", caller_offer, cs_offer) -> (answers), ("listener",
offer) -> answer, ("window", seconds, shift) -> counts, ("stop",) -> ("closed", ...). The bridge is the
offerer on every leg, as in a real call (it POSTs its offer to the Realtime API).

CPU is this process's CPU time over the window's wall time; memory is the growth of this process's RSS
from before the first call to after the last one is up and warm.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from voicebridge import eventloop
from voicebridge.media.loopback import set_loopback_only
from voicebridge.media.relay import FanOut, Relay

from .probes import (
    GcProbe,
    LagProbe,
    instrument_presend,
    presend,
    profiler,
    udp_rcvbuf_errors,
    write_profile,
)

if TYPE_CHECKING:
    from voicebridge.media.passthrough import InboundTap, OutboundAudio

    from .transcode import TranscodeRelay

SETUP_TIMEOUT_S = 15.0
CALLS_PER_LOAD = 25


@dataclass
class Job:
    relay: str  # "passthrough" | "transcode"
    calls: int
    seconds: float
    warmup: float
    listeners: int = 0  # measured after the main window, on the first call (fan-out)
    loop: str = "uvloop"  # the bridge process's event loop: "uvloop" (the bridge's default) or "asyncio"
    # The bridge's short receive/send paths (media/passthrough.py); None: as VOICEBRIDGE_SHORT_PATH says (on).
    # The load processes follow VOICEBRIDGE_SHORT_PATH only: on by default, so the load stays cheap.
    short_path: bool | None = None
    # The bridge's legs' RTCP at our pace (media/rtcp_pace.py RTCP_EXTRA_S) or, False, at aiortc's own (the load
    # keeps ours either way).
    rtcp_paced: bool = True
    # The load processes' scheduling policy (bench/load.py far_end_scheduling): "batch", so that a far end woken
    # by the bridge's sendto does not preempt it, as a remote one cannot; "normal" for comparison.
    load_sched: str = "batch"


@dataclass
class _Bridge:
    relay: str
    pcs: list[RTCPeerConnection] = field(default_factory=list)
    relays: list[Relay] = field(default_factory=list)
    outs: list[OutboundAudio] = field(default_factory=list)  # passthrough: the legs' senders
    taps: list[InboundTap] = field(default_factory=list)  # passthrough: the legs' receivers

    def counters(self) -> tuple[int, int, int]:
        """(packets in, packets/frames out, dropped) over the agent legs of every call."""
        if self.relay == "transcode":
            return (
                sum(r.caller.arrivals.packets + r.cs.arrivals.packets for r in self.transcoders()),
                sum(r.caller.out.frames + r.cs.out.frames for r in self.transcoders()),
                0,
            )
        return (
            sum(t.packets for t in self.taps),
            sum(o.packets_sent for o in self.outs),
            sum(o.dropped for o in self.outs),
        )

    def transcoders(self) -> list[TranscodeRelay]:
        from .transcode import TranscodeRelay

        return [r for r in self.relays if isinstance(r, TranscodeRelay)]


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def say(text: str) -> None:
    print(f"  [bridge] {text}", file=sys.stderr, flush=True)


async def _connected(pc: RTCPeerConnection, timeout_s: float) -> None:
    if pc.connectionState == "connected":
        return
    done = asyncio.get_running_loop().create_future()

    def check() -> None:
        if pc.connectionState in ("connected", "failed", "closed") and not done.done():
            done.set_result(pc.connectionState)

    pc.on("connectionstatechange", check)
    state = await asyncio.wait_for(done, timeout_s)
    if state != "connected":
        raise RuntimeError(f"bench: a bridge leg ended {state} while connecting")


async def _rpc(conn: Any, msg: tuple[Any, ...]) -> Any:
    conn.send(msg)
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _setup_call(b: _Bridge, conn: Any) -> tuple[float, float, float]:
    """One call (two legs) up and relaying; returns (offers made, answers back, connected) in seconds."""
    t0 = time.perf_counter()
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    b.pcs += pcs
    if b.relay == "passthrough":
        from voicebridge.bridge.audio import AudioRelay
        from voicebridge.media.passthrough import InboundTap, OutboundAudio

        outs = [OutboundAudio(), OutboundAudio()]
        taps = []
        for out, pc in zip(outs, pcs, strict=True):
            out.add_to(pc)
            assert out.receiver is not None
            taps.append(InboundTap(out.receiver))
        relay: Relay = AudioRelay(taps[0], outs[0], taps[1], outs[1])
        relay.start()
        b.outs += outs
        b.taps += taps
    else:
        from .transcode import TranscodeLeg, TranscodeRelay

        legs = [TranscodeLeg(pc) for pc in pcs]
    for pc in pcs:
        await pc.setLocalDescription(await pc.createOffer())
    t_offer = time.perf_counter()
    answers = await _rpc(conn, ("call", pcs[0].localDescription.sdp, pcs[1].localDescription.sdp))
    t_answer = time.perf_counter()
    for pc, answer in zip(pcs, answers, strict=True):
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    if b.relay == "transcode":
        await asyncio.gather(*(leg.wait_track() for leg in legs))
        relay = TranscodeRelay(legs[0], legs[1])
        relay.start()
    await asyncio.gather(*(_connected(pc, SETUP_TIMEOUT_S) for pc in pcs))
    b.relays.append(relay)
    return t_offer - t0, t_answer - t0, time.perf_counter() - t0


async def _add_listener(b: _Bridge, conn: Any) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b.pcs.append(pc)
    relay = b.relays[0]
    if not isinstance(relay, FanOut):
        raise RuntimeError(f"bench: the {relay.kind} relay cannot take listeners")
    if b.relay == "passthrough":
        from voicebridge.media.passthrough import OutboundAudio

        c_out, s_out = OutboundAudio(), OutboundAudio()
        c_out.add_to(pc, "sendonly")
        s_out.add_to(pc, "sendonly")
        relay.add_listener(c_out, s_out)
    else:
        from .transcode import ForwardTrack

        c_fwd, s_fwd = ForwardTrack(), ForwardTrack()
        pc.addTransceiver(c_fwd, direction="sendonly")
        pc.addTransceiver(s_fwd, direction="sendonly")
        relay.add_listener(c_fwd, s_fwd)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await _rpc(conn, ("listener", pc.localDescription.sdp))
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await _connected(pc, SETUP_TIMEOUT_S)


def _clear(b: _Bridge) -> None:
    if b.relay == "passthrough":
        for o in b.outs:
            o._latency.clear()
    else:
        for r in b.transcoders():
            r.clear_samples()


def _samples(b: _Bridge) -> list[float]:
    if b.relay == "passthrough":
        return [s for o in b.outs for s in o.latency_samples()]
    return [s for r in b.transcoders() for s in r.latency_samples()]


async def _window(b: _Bridge, conns: list[Any], seconds: float, shift: float) -> dict[str, Any]:
    _clear(b)
    loop = asyncio.get_running_loop()
    for c in conns:
        c.send(("window", seconds, shift))
    lag = LagProbe()
    gc_probe = GcProbe()
    presend.clear()
    c0 = b.counters()
    udp0 = udp_rcvbuf_errors()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, wall0 = os.times(), time.perf_counter()
    await asyncio.sleep(seconds)  # a benchmark window, not a test: the load processes measure the same span
    t1 = os.times()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall0
    user, system = t1.user - t0.user, t1.system - t0.system
    c1 = b.counters()
    udp1 = udp_rcvbuf_errors()
    # Legs that are not connected at the end of the window (ICE consent or DTLS lost under overload): what they
    # should have forwarded is counted as dropped (OutboundAudio drops while its transport is not connected).
    legs_down = sum(1 for pc in b.pcs if pc.connectionState != "connected")
    cpu = user + system
    samples = _samples(b)
    lag.stop()
    gc_probe.stop()
    loads = await asyncio.gather(*(loop.run_in_executor(None, c.recv) for c in conns))
    return {
        "cpu_pct": 100.0 * cpu / wall,
        "cpu_user_pct": 100.0 * user / wall,
        "cpu_sys_pct": 100.0 * system / wall,
        "wall_s": wall,
        "loop_lag_ms": lag.summary(),
        "gc_pauses": gc_probe.summary(),
        "bridge_in": c1[0] - c0[0],
        "bridge_out": c1[1] - c0[1],
        "bridge_dropped": c1[2] - c0[2],
        "legs_down": legs_down,
        "udp_rcvbuf_errors": udp1 - udp0,  # whole machine: UDP packets dropped by full socket buffers
        # The bridge taken off its CPU while runnable (preempted: each one is a latency outlier if it falls
        # inside a packet's forwarding), and the times it went to sleep waiting for packets.
        "context_switches": {
            "involuntary": ru1.ru_nivcsw - ru0.ru_nivcsw,
            "voluntary": ru1.ru_nvcsw - ru0.ru_nvcsw,
        },
        "presend_samples": list(presend),
        "bridge_samples": samples,
        "loads": loads,
    }


async def run_job(job: Job) -> dict[str, Any]:
    from .load import load_main

    set_loopback_only(True)
    undo = instrument_presend() if job.relay == "passthrough" else (lambda: None)
    ctx = mp.get_context("spawn")
    n_loads = max(1, math.ceil(job.calls / CALLS_PER_LOAD))
    conns, procs = [], []
    for _ in range(n_loads):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=load_main, args=(child, job.load_sched), daemon=True)
        proc.start()
        conns.append(parent)
        procs.append(proc)
    b = _Bridge(job.relay)
    from voicebridge.media import passthrough

    result: dict[str, Any] = {
        "relay": job.relay,
        "calls": job.calls,
        "load_processes": n_loads,
        "loop": eventloop.loop_name(),  # the loop it really ran on (uvloop missing: asyncio's)
        "short_path": passthrough.SHORT_PATH,
        "load_sched": job.load_sched,
    }
    try:
        for c in conns:  # the load processes have imported aiortc and encoded their packets
            if not await asyncio.get_running_loop().run_in_executor(None, c.poll, 60):
                raise RuntimeError("bench: a load process did not start within 60 s")
            c.recv()
        # One warm-up call, set up and closed first: imports, codecs and the first certificate are not a
        # cost per call, so they count neither in set-up time nor in RSS growth.
        warm = _Bridge(job.relay)
        try:
            await _setup_call(warm, conns[0])
        finally:
            for r in warm.relays:
                r.stop()
            await asyncio.gather(*(pc.close() for pc in warm.pcs), return_exceptions=True)
        await _rpc(conns[0], ("close_all",))
        # As a bridge process does after start-up (voicebridge/eventloop.py): here after the warm-up call, so that
        # aiortc and what its first call loads are in, and no call is.
        result["gc_frozen"] = eventloop.freeze_startup()
        rss0 = rss_mib()
        setups = []
        for i in range(job.calls):
            setups.append(await _setup_call(b, conns[i % n_loads]))
            if (i + 1) % 10 == 0 or i + 1 == job.calls:
                say(f"{job.relay}: {i + 1}/{job.calls} calls up")
        await asyncio.sleep(job.warmup)  # let jitter buffers and encoders settle before measuring
        rss1 = rss_mib()
        shift = 0.5  # > the path latency: packets still in flight at the end of the window count
        prof = profiler()
        main = await _window(b, conns, job.seconds, shift)
        if prof is not None:
            write_profile(prof, f"{job.relay}-{job.calls}")
        result.update(setup_s=setups, rss_mib_before=rss0, rss_mib_after=rss1, window=main)
        if job.listeners:
            for _ in range(job.listeners):
                await _add_listener(b, conns[0])
            say(f"{job.relay}: {job.listeners} listeners on call 1")
            await asyncio.sleep(job.warmup)
            fan = await _window(b, conns, job.seconds, shift)
            fan["listeners"] = job.listeners
            result["fanout"] = fan
    finally:
        for r in b.relays:
            r.stop()
        for c in conns:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        await asyncio.gather(*(pc.close() for pc in b.pcs), return_exceptions=True)
        for c, p in zip(conns, procs, strict=True):
            try:
                if c.poll(10):
                    c.recv()
            except (EOFError, OSError):
                pass
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
        undo()
    return result


def event_loop_runner(loop: str) -> asyncio.Runner:
    """A runner on the named event loop: "asyncio" (the standard one) or "uvloop" (voicebridge/eventloop.py)."""
    try:
        return asyncio.Runner(loop_factory=eventloop.loop_factory(loop))
    except eventloop.EventLoopChoiceError:
        raise ValueError(f"unknown event loop {loop!r} (asyncio or uvloop)") from None


def bridge_main(conn: Any, job: Job) -> None:
    """Entry point of the bridge process: run one job on job.loop, send back its result (or the error)."""
    try:
        if job.short_path is not None:
            from voicebridge.media.passthrough import use_short_path

            use_short_path(job.short_path)
        if not job.rtcp_paced:
            from voicebridge.media import rtcp_pace

            rtcp_pace.RTCP_EXTRA_S = (0.0, 0.0)
        with event_loop_runner(job.loop) as runner:
            eventloop.quiet_lost_peer_tasks(runner.get_loop())
            result = runner.run(run_job(job))
        conn.send(("ok", result))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        raise

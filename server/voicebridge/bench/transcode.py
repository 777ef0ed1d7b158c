"""Baseline relay for the benchmark only: aiortc's normal media path (jitter buffer, Opus decode, re-encode).

This is what a bridge built the usual aiortc way does (``MediaRelay``): each leg's incoming track is
decoded to PCM and handed, through a ``MediaRelay`` proxy, to the other leg's sender, which encodes it
again. voicebridge never uses it for calls; ``voicebridge bench`` runs the same workload through it so
every pass-through figure comes with a ratio.

Latency is measured the same way as the pass-through's (``OutboundAudio``): from the moment an RTP packet
is handed to the receiving leg (a per-instance wrapper around ``RTCRtpReceiver._handle_rtp_packet``, the
same hook point as ``InboundTap``) to the moment the decoded frame made from it is handed to the other
leg's sender. The encode that follows (~0.1 ms) is not counted, which favours the baseline slightly.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypedDict

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

from voicebridge.media.passthrough import latency_summary
from voicebridge.media.relay import FanOut, Relay
from voicebridge.results import RelayStats

_LATENCY_SAMPLES = 4096
_ARRIVALS = 1024  # RTP timestamps remembered per leg (20 s of 20 ms packets)


class ArrivalLog:
    """When each RTP packet reached a receiver, keyed by its timestamp relative to the first one.

    aiortc's decoded frames carry ``pts`` = RTP timestamp minus the stream's first timestamp
    (``TimestampMapper``), so a frame can be traced back to the packet it was decoded from.
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.packets = 0
        self._origin: int | None = None
        self._times: dict[int, float] = {}
        self._order: deque[int] = deque()
        original = receiver._handle_rtp_packet

        async def handle(packet: RtpPacket, arrival_time_ms: int) -> None:
            if self._origin is None:
                self._origin = packet.timestamp
            key = (packet.timestamp - self._origin) & 0xFFFFFFFF
            self._times[key] = time.perf_counter()
            self._order.append(key)
            if len(self._order) > _ARRIVALS:
                self._times.pop(self._order.popleft(), None)
            self.packets += 1
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]  # this receiver only

    def arrival(self, pts: int | None) -> float | None:
        return None if pts is None else self._times.get(pts)


class ForwardTrack(MediaStreamTrack):
    """A sender's track whose frames come from another leg's decoded track (set later, once it exists)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._arrivals: ArrivalLog | None = None
        self._ready = asyncio.Event()
        self.frames = 0
        self.latency: deque[float] = deque(maxlen=_LATENCY_SAMPLES)

    def set_source(self, track: MediaStreamTrack, arrivals: ArrivalLog) -> None:
        self._source, self._arrivals = track, arrivals
        self._ready.set()

    async def recv(self) -> Any:
        await self._ready.wait()
        assert self._source is not None and self._arrivals is not None
        frame = await self._source.recv()
        t_in = self._arrivals.arrival(getattr(frame, "pts", None))
        if t_in is not None:
            self.latency.append(time.perf_counter() - t_in)
        self.frames += 1
        return frame

    def stop(self) -> None:
        super().stop()
        if self._source is not None:
            self._source.stop()


class TranscodeLeg:
    """One peer connection of the baseline bridge: a ForwardTrack to send, the remote track it receives."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.pc = pc
        self.out = ForwardTrack()
        sender = pc.addTrack(self.out)
        receiver = next(t.receiver for t in pc.getTransceivers() if t.sender is sender)
        self.arrivals = ArrivalLog(receiver)
        self.remote: MediaStreamTrack | None = None
        self._got_track = asyncio.Event()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self.remote is None:
                self.remote = track
                self._got_track.set()

    async def wait_track(self, timeout_s: float = 10.0) -> MediaStreamTrack:
        await asyncio.wait_for(self._got_track.wait(), timeout_s)
        assert self.remote is not None
        return self.remote


class TranscodeDirection(TypedDict):
    in_packets: int  # RTP packets that reached the receiving leg
    frames: int  # decoded frames handed to the other leg's sender
    latency_ms: dict[str, float | int]


class TranscodeStats(RelayStats):
    caller_to_cs: TranscodeDirection
    cs_to_caller: TranscodeDirection
    listeners: dict[str, int]  # {"count": n}


class TranscodeRelay(Relay, FanOut[ForwardTrack]):
    """caller -> cs and cs -> caller through decode + encode (MediaRelay proxies), plus listener fan-out.

    No take-over and no packet hooks: the benchmark needs neither, and this path has no packets to hook.
    """

    kind = "transcode"
    description = "aiortc's jitter buffer, Opus decode and re-encode (the benchmark's baseline, never a call's relay)"

    def __init__(self, caller: TranscodeLeg, cs: TranscodeLeg) -> None:
        self.caller = caller
        self.cs = cs
        self._media = MediaRelay()
        self._outs: list[ForwardTrack] = []
        self._listeners: list[list[ForwardTrack]] = []  # each listener's tracks (one per party it is sent)
        self._stopped = False

    def _connect(self, src: TranscodeLeg, dst: ForwardTrack) -> None:
        if src.remote is None:
            raise RuntimeError("TranscodeRelay: a leg has no remote track yet (await leg.wait_track() first)")
        dst.set_source(self._media.subscribe(src.remote), src.arrivals)

    def start(self) -> None:
        if self._outs:
            return
        self._connect(self.caller, self.cs.out)
        self._connect(self.cs, self.caller.out)
        self._outs = [self.cs.out, self.caller.out]

    def add_listener(self, caller_out: ForwardTrack | None, cs_out: ForwardTrack | None) -> Callable[[], None]:
        """Each listener gets its own proxy of each party (and so its own encoder: that is aiortc's way)."""
        mine: list[ForwardTrack] = []
        for src, out in ((self.caller, caller_out), (self.cs, cs_out)):
            if out is not None:
                self._connect(src, out)
                mine.append(out)
        self._listeners.append(mine)

        def remove() -> None:
            if any(tracks is mine for tracks in self._listeners):
                self._listeners = [tracks for tracks in self._listeners if tracks is not mine]
                for out in mine:
                    out.stop()  # and its MediaRelay proxy

        return remove

    def _listener_outs(self) -> list[ForwardTrack]:
        return [t for tracks in self._listeners for t in tracks]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for track in (*self._outs, *self._listener_outs()):
            track.stop()

    def latency_samples(self) -> list[float]:
        return [s for t in self._outs for s in t.latency]

    def clear_samples(self) -> None:
        for t in (*self._outs, *self._listener_outs()):
            t.latency.clear()

    def stats(self) -> TranscodeStats:
        return {
            "kind": self.kind,
            "caller_to_cs": {
                "in_packets": self.caller.arrivals.packets,
                "frames": self.cs.out.frames,
                "latency_ms": latency_summary(self.cs.out.latency),
            },
            "cs_to_caller": {
                "in_packets": self.cs.arrivals.packets,
                "frames": self.caller.out.frames,
                "latency_ms": latency_summary(self.caller.out.latency),
            },
            "listeners": {"count": len(self._listeners)},
        }

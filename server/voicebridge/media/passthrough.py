"""Opus pass-through for aiortc: encoded RTP off a receiver, encoded RTP straight onto another transport.

aiortc has no public API for encoded media. By default every received track goes through a jitter buffer
(~80 ms) and a decoder, and every sent track through an encoder. A relay wants neither, so this module, with the
modules it is split into (named below), is the ONE place that reaches into aiortc's internals, always per
instance (never a global monkeypatch: other peer connections of the process, test clients among them, keep
aiortc's normal decode path; the emulator taps its own sessions' receivers to decode only what may be speech,
emulator/listening.py):

* ``InboundTap`` replaces ``RTCRtpReceiver._handle_rtp_packet`` on one receiver. It keeps aiortc's RTCP
  receiver statistics (so receiver reports and getStats still work) and hands each Opus packet on at once:
  no jitter buffer, no decoder queue, no decoder thread work.
* ``OutboundAudio`` owns a transceiver whose sender never encodes: its track never yields a frame (so
  aiortc's send loop waits on it instead of polling and never creates an encoder). Packets are written
  "SFU style" to the sender's DTLS transport (``RTCDtlsTransport._send_rtp``) with the sender's SSRC, the
  negotiated payload type and MID extension, and our own sequence numbers / timestamp offsets, so a change
  of source is invisible to the receiver. The sender's RTCP sender-report counters are computed only when
  aiortc reads them (media/sender_counters.py), so a forwarded packet writes none of them.

* The short paths (issue 16). Receiving: after a tap's first packet of each SSRC, its SRTP packets are taken
  off the leg's ICE socket in the datagram callback, unprotected and handed to the subscribers there
  (media/short_receive.py). Sending: ``OutboundAudio`` protects with the other leg's session and calls
  ``sendto`` on its nominated pair's socket itself (aiortc's ``_send_rtp`` -> ``Connection.send`` ->
  ``send_data`` without their coroutines), counting on its DTLS transport too. A forwarded packet thus goes
  socket to socket in one call stack. ``VOICEBRIDGE_SHORT_PATH=0`` (or ``use_short_path(False)``) keeps every
  packet on aiortc's path, for comparison.

* RTCP at an audio pace (issue 16): the first report as aiortc sends it, then every 2.5-7.5 s instead of
  0.5-1.5 s (media/rtcp_pace.py, driving aiortc's own loop with media/drive.py's driver).

``check_aiortc_compatibility()`` (media/aiortc_compat.py) verifies every internal these rely on and raises
``AiortcIncompatible`` naming what changed; both classes call it, and tests/unit/test_passthrough*.py pin it. A
leg whose transport fails the check at run time stays on aiortc's path (logged), never raising inside aiortc.
Imports go one way: this module imports those, which import nothing of it (but types).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NotRequired, TypedDict

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from .aiortc_compat import RX_CODECS, RX_STREAMS, AiortcIncompatible, check_aiortc_compatibility
from .drive import run_now
from .rtcp_pace import pace_rtcp
from .rtp_audio import OPUS_CLOCK, RtpAudio, latency_summary, opus_samples
from .sender_counters import make_lazy
from .short_receive import FAST_RX, FastReceive, RtpHeader

__all__ = [  # what other modules import from here (the packet types live in rtp_audio, the check in aiortc_compat)
    "OPUS_CLOCK",
    "AiortcIncompatible",
    "InboundTap",
    "OutboundAudio",
    "OutboundStats",
    "RtpAudio",
    "check_aiortc_compatibility",
    "latency_summary",
    "opus_samples",
    "use_short_path",
]

log = logging.getLogger(__name__)

_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
_LATENCY_SAMPLES = 4096
_SEQ_TS = struct.Struct("!HI")
_CONNECTED = DtlsState.CONNECTED

# The short paths (see the module docstring); VOICEBRIDGE_SHORT_PATH=0 keeps every packet on aiortc's own path
# (the bench compares both in one run). Read per packet/tap, so use_short_path() takes effect at once.
SHORT_PATH = os.environ.get("VOICEBRIDGE_SHORT_PATH", "1") != "0"


def use_short_path(on: bool) -> None:
    """Switch the short receive/send paths on or off for this process (new packets and taps from now on)."""
    global SHORT_PATH
    SHORT_PATH = on


class InboundTap:
    """Takes a peer connection's incoming Opus RTP straight off its RTCRtpReceiver: no jitter buffer/decoder.

    Subscribers are called synchronously inside the receive path, so they must be quick; an exception
    in one is logged and counted (``errors``), never propagated (it would kill the leg's receive loop).

    The first packet of each SSRC comes aiortc's way (ICE queue, DTLS receive loop, RtpPacket, router, our
    ``_handle``); it then moves that SSRC to the short path (media/short_receive.py): later packets are taken from the
    ICE socket's datagram callback, unprotected with the leg's own SRTP session and handed on in the same call.
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        check_aiortc_compatibility(receiver=receiver)
        if "_handle_rtp_packet" in vars(receiver):
            raise ValueError("this RTCRtpReceiver is already tapped (one InboundTap per receiver)")
        self.receiver = receiver
        self.packets = 0
        self.bytes = 0
        self.ignored = 0  # packets that were not Opus (other payload types)
        self.errors = 0  # exceptions raised by subscribers
        self.short_packets = 0  # of `packets`, those that came the short path
        self.srtp_errors = 0  # short path: packets SRTP refused (replayed, forged), as aiortc drops them
        self._subs: tuple[Callable[[RtpAudio], None], ...] = ()
        self._streams: dict[int, StreamStatistics] = getattr(receiver, RX_STREAMS)
        self._codecs: dict[int, Any] = getattr(receiver, RX_CODECS)
        self._opus_pt: dict[int, bool] = {}
        self._fast: FastReceive | None = None
        self._hdr = RtpHeader()  # what StreamStatistics.add reads, for short-path packets (no RtpPacket)
        # Instance attribute shadows the class method for this receiver only.
        receiver._handle_rtp_packet = self._handle  # type: ignore[method-assign]
        pace_rtcp(receiver)

    def subscribe(self, fn: Callable[[RtpAudio], None]) -> Callable[[], None]:
        """Call fn(packet) for every Opus packet from now on; returns the unsubscribe function."""
        self._subs = (*self._subs, fn)

        def unsubscribe() -> None:
            self._subs = tuple(s for s in self._subs if s is not fn)

        return unsubscribe

    def close(self) -> None:
        """Give the receiver back its own handler and drop all subscribers."""
        self._subs = ()
        vars(self.receiver).pop("_handle_rtp_packet", None)
        vars(self.receiver).pop("_run_rtcp", None)  # a loop already running keeps its pace
        if self._fast is not None:
            self._fast.remove(self)
            self._fast = None

    def _is_opus(self, pt: int) -> bool:
        known = self._opus_pt.get(pt)
        if known is None:
            codec = self._codecs.get(pt)
            if codec is None:  # not negotiated (yet): decide again next time
                return False
            known = self._opus_pt[pt] = codec.mimeType.lower() == "audio/opus"
        return known

    async def _handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        now = time.perf_counter()
        self._deliver(packet, packet.payload_type, packet.payload, bool(packet.marker), now)
        if SHORT_PATH and "_handle_rtp_packet" in vars(self.receiver):
            self._go_short(packet.ssrc)

    def short_packet(self, plain: bytes, now: float) -> None:
        """A packet from the short path, already unprotected: parse the header as aiortc would, deliver it."""
        b0 = plain[0]
        start = 12 + 4 * (b0 & 0x0F)  # after the CSRCs
        if b0 & 0x10:  # header extension: 4 bytes + its length in words
            if len(plain) < start + 4:
                return
            start += 4 + 4 * ((plain[start + 2] << 8) | plain[start + 3])
        end = len(plain) - plain[-1] if b0 & 0x20 else len(plain)  # padding
        if start > end:
            return  # malformed: aiortc's parser refuses it too
        hdr = self._hdr
        hdr.sequence_number, hdr.timestamp = _SEQ_TS.unpack_from(plain, 2)
        hdr.ssrc = int.from_bytes(plain[8:12], "big")
        self.short_packets += 1
        b1 = plain[1]
        self._deliver(hdr, b1 & 0x7F, plain[start:end], b1 > 127, now)

    def _deliver(self, packet: RtpPacket | RtpHeader, pt: int, payload: bytes, marker: bool, now: float) -> None:
        if not self.receiver._enabled:
            return
        if not self._is_opus(pt):
            self.ignored += 1
            return
        # Keep aiortc's per-SSRC statistics: they feed RTCP receiver reports and getStats().
        stats = self._streams.get(packet.ssrc)
        if stats is None:
            stats = self._streams[packet.ssrc] = StreamStatistics(OPUS_CLOCK)
        stats.add(packet)  # type: ignore[arg-type]  # reads sequence_number and timestamp only
        self.packets += 1
        self.bytes += len(payload)
        audio = RtpAudio(payload, packet.timestamp, packet.sequence_number, marker, now)
        for fn in self._subs:
            try:
                fn(audio)
            except Exception:
                self.errors += 1
                if self.errors <= 10 or self.errors % 1000 == 0:
                    log.exception("InboundTap subscriber %r failed (%d errors so far)", fn, self.errors)

    def _go_short(self, ssrc: int) -> None:
        """Move this SSRC to the short path (called on its packets that still came aiortc's way)."""
        if self._fast is not None and ssrc in self._fast.taps:
            return
        dtls = self.receiver.transport
        fast = vars(dtls).get(FAST_RX)
        if fast is None:
            try:
                check_aiortc_compatibility(dtls=dtls)
            except AiortcIncompatible as exc:  # stay on aiortc's path; never raise inside its receive loop
                vars(self.receiver)["_handle_rtp_packet"] = self._handle_long_only
                log.error("InboundTap: no short receive path: %s", exc)
                return
            fast = vars(dtls)[FAST_RX] = FastReceive(dtls)
        fast.add(ssrc, self)
        self._fast = fast

    async def _handle_long_only(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self._deliver(packet, packet.payload_type, packet.payload, bool(packet.marker), time.perf_counter())


class _IdleTrack(MediaStreamTrack):
    """A track that never yields a frame: aiortc's send loop awaits it forever, never polls, never encodes."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.get_running_loop().create_future()  # never resolved; cancelled when the sender stops


class OutboundStats(TypedDict):
    """`OutboundAudio.stats()`: what was handed to this transport, and what could not be."""

    packets: int
    bytes: int
    dropped: int
    send_errors: int
    deferred_sends: int
    source_switches: int
    latency_ms: dict[str, float | int]  # arrival at the tap -> handed to the transport (latency_summary)
    decode_ms: NotRequired[float]  # a sink that decodes (media/pcm.py): its total decode time


class OutboundAudio:
    """What a peer connection sends: encoded packets from whatever source, continuous seq/timestamps.

    A change of ``source`` re-bases sequence numbers (next one is last + 1) and timestamps (advanced by the
    wall-clock time since the last packet, at least one frame), so the receiver sees one continuous stream.
    Within a source, gaps and reordering in the source's own numbering pass through unchanged.
    """

    def __init__(self) -> None:
        self.packets_sent = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.send_errors = 0
        self.deferred_sends = 0  # transport sends that did not complete synchronously (should stay 0)
        self.switches = 0
        self.sender: RTCRtpSender | None = None
        self.receiver: RTCRtpReceiver | None = None  # the same transceiver's receiver, for an InboundTap
        self._closed = False
        self._head: bytes | None = None  # header bytes after seq/timestamp: SSRC + extensions
        self._byte0 = 0x80
        self._pt = 111
        self._source: str | None = None
        self._seq_off = 0
        self._ts_off = 0
        self._last_seq = random.getrandbits(15)  # < 32768 like aiortc, to stay clear of SRTP rollover issues
        self._last_ts = random.getrandbits(32)
        self._last_payload = b""  # its samples are read only at a change of source (_rebase)
        self._last_sent_at = 0.0
        self._ntp_of = 0.0  # _last_sent_at whose NTP time _ntp holds (see sent_ntp_time)
        self._ntp = 0
        self._started = False
        self._latency: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._pair: Any = None  # short path: the ICE pair last sent on, and its remote address
        self._pair_addr: tuple[str, int] = ("", 0)

    def add_to(self, pc: RTCPeerConnection, direction: str = "sendrecv") -> RTCRtpSender:
        """Add this audio's transceiver to pc. Call BEFORE createOffer (or createAnswer when answering)."""
        if self.sender is not None:
            raise RuntimeError("OutboundAudio.add_to: already added to a peer connection")
        transceiver = pc.addTransceiver(_IdleTrack(), direction=direction)
        return self._own(transceiver)

    def bind(self, transceiver: RTCRtpTransceiver, direction: str = "sendonly") -> RTCRtpSender:
        """Answerer side: own an audio transceiver that setRemoteDescription(offer) created.

        Call after setRemoteDescription and BEFORE createAnswer. ``direction`` is what we are willing to do
        (``sendonly``: we never receive on it, whatever the offer asked for; ``sendrecv``: we also receive).
        """
        if self.sender is not None:
            raise RuntimeError("OutboundAudio.bind: already bound to a transceiver")
        if transceiver.kind != "audio":
            raise ValueError(f"OutboundAudio.bind: a {transceiver.kind} transceiver, not audio")
        if direction not in ("sendonly", "sendrecv"):
            raise ValueError(f"OutboundAudio.bind: direction must be sendonly or sendrecv, not {direction!r}")
        transceiver.direction = direction
        # Without a track aiortc's send loop polls every 20 ms; the idle track makes it wait instead.
        transceiver.sender.replaceTrack(_IdleTrack())
        return self._own(transceiver)

    def _own(self, transceiver: RTCRtpTransceiver) -> RTCRtpSender:
        sender = transceiver.sender
        check_aiortc_compatibility(sender=sender)
        original_send = sender.send

        async def send(parameters: RTCRtpSendParameters) -> None:
            self._configure(sender, parameters)
            await original_send(parameters)

        sender.send = send  # type: ignore[method-assign]  # per instance: learn PT and MID at negotiation
        pace_rtcp(sender)
        make_lazy(sender, self)  # per instance too: its RTCP counters read ours when aiortc asks
        self.sender = sender
        self.receiver = transceiver.receiver
        return sender

    @property
    def connected(self) -> bool:
        """True once negotiated and the DTLS transport is connected (packets are sent, not dropped)."""
        return (
            self._head is not None
            and self.sender is not None
            and not self._closed
            and self.sender.transport._state is _CONNECTED
        )

    def _configure(self, sender: RTCRtpSender, parameters: RTCRtpSendParameters) -> None:
        codec = parameters.codecs[0]
        if codec.mimeType.lower() != "audio/opus":
            log.warning("OutboundAudio: negotiated %s, not Opus; packets go out as they are", codec.mimeType)
        pt = codec.payloadType if codec.payloadType is not None else 111
        template = RtpPacket(payload_type=pt, ssrc=sender._ssrc)
        ext_map = HeaderExtensionsMap()
        ext_map.configure(parameters)
        if parameters.muxId and any(e.uri == _MID_URI for e in parameters.headerExtensions):
            template.extensions.mid = parameters.muxId
        raw = template.serialize(ext_map)
        self._byte0 = raw[0]
        self._pt = pt
        self._head = raw[8:]  # SSRC (+ CSRCs) + extension block, identical for every packet

    def send(self, pkt: RtpAudio, source: str = "") -> None:
        """Forward one packet. Never raises: drops (and counts) until connected, and after close."""
        head = self._head
        sender = self.sender
        if head is None or sender is None or self._closed:
            self.dropped += 1
            return
        transport = sender.transport
        if transport._state is not _CONNECTED:
            self.dropped += 1
            return
        marker = pkt.marker
        if source != self._source:
            self._rebase(pkt, source)
            marker = True  # start of a "talkspurt" for the receiver's jitter buffer
        seq = (pkt.sequence + self._seq_off) & 0xFFFF
        ts = (pkt.timestamp + self._ts_off) & 0xFFFFFFFF
        payload = pkt.payload
        data = struct.pack("!BBHI", self._byte0, (0x80 if marker else 0) | self._pt, seq, ts) + head + payload
        try:
            if not self._transmit(transport, data):
                self.deferred_sends += 1
        except Exception as exc:  # ConnectionError when the leg just went away; anything else is logged
            self.send_errors += 1
            self.dropped += 1
            if not isinstance(exc, ConnectionError) and self.send_errors <= 10:
                log.exception("OutboundAudio: sending RTP failed")
            return
        now = time.perf_counter()
        self._latency.append(now - pkt.received_at)
        self._last_seq = seq
        self._last_ts = ts
        self._last_sent_at = now
        self._last_payload = payload
        self.packets_sent += 1
        self.bytes_sent += len(payload)  # aiortc's SR and getStats read these two and _last_ts lazily

    def _transmit(self, dtls: RTCDtlsTransport, data: bytes) -> bool:
        """Protect and send one RTP packet on dtls; True when done here and now (see drive.run_now).

        The short path does what aiortc's _send_rtp -> aioice's Connection.send -> StunProtocol.send_data do,
        in this call: SRTP protect with the leg's own session, sendto on the nominated pair's socket, and the
        DTLS transport's counters (its getStats "transport" entry).
        """
        if SHORT_PATH:
            pair = dtls.transport._connection._nominated.get(1)
            if pair is not None:
                if pair is not self._pair:
                    self._pair = pair
                    self._pair_addr = pair.remote_addr
                wire = dtls._tx_srtp.protect(data)
                pair.protocol.transport.sendto(wire, self._pair_addr)
                dtls._RTCDtlsTransport__tx_packets += 1  # type: ignore[attr-defined]
                dtls._RTCDtlsTransport__tx_bytes += len(wire)  # type: ignore[attr-defined]
                return True
        return run_now(dtls._send_rtp(data))

    def sent_ntp_time(self) -> int:
        """NTP time (64-bit) of the last packet sent, 0 before any: the SR's pair to its RTP timestamp.

        Computed when asked, from the perf_counter() of that send, then kept for that send: aiortc reads it
        twice per SR (the report and the LSR it later matches against receiver reports for the RTT).
        """
        if self._last_sent_at != self._ntp_of:
            for _ in range(5):  # read both clocks together: retry if preempted in between
                before = time.perf_counter()
                now = aiortc_clock.current_ntp_time()
                after = time.perf_counter()
                if after - before < 0.001:
                    break
            ago = (before + after) / 2 - self._last_sent_at
            self._ntp = now - int(ago * (1 << 32))
            self._ntp_of = self._last_sent_at
        return self._ntp if self.packets_sent else 0

    def _rebase(self, pkt: RtpAudio, source: str) -> None:
        if self._started:
            self.switches += 1
            frame = opus_samples(self._last_payload)
            elapsed = int((time.perf_counter() - self._last_sent_at) * OPUS_CLOCK)
            step = max(frame, round(elapsed / frame) * frame)  # real time passed, in whole frames
            next_ts = self._last_ts + step
        else:
            next_ts = self._last_ts
            self._started = True
        self._seq_off = (self._last_seq + 1 - pkt.sequence) & 0xFFFF
        self._ts_off = (next_ts - pkt.timestamp) & 0xFFFFFFFF
        self._source = source

    def latency_samples(self) -> list[float]:
        """Recent bridge-internal latencies (seconds): arrival at the tap -> handed to this transport."""
        return list(self._latency)

    def stats(self) -> OutboundStats:
        return {
            "packets": self.packets_sent,
            "bytes": self.bytes_sent,
            "dropped": self.dropped,
            "send_errors": self.send_errors,
            "deferred_sends": self.deferred_sends,
            "source_switches": self.switches,
            "latency_ms": latency_summary(self._latency),
        }

    def close(self) -> None:
        """Stop sending (later packets are dropped). The peer connection itself is closed by its owner."""
        self._closed = True

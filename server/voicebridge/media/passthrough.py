"""Opus pass-through for aiortc: encoded RTP off a receiver, encoded RTP straight onto another transport.

aiortc has no public API for encoded media. By default every received track goes through a jitter buffer
(~80 ms) and a decoder, and every sent track through an encoder. A relay wants neither, so this module is the
ONE place that reaches into aiortc's internals, always per instance (never a global monkeypatch: other peer
connections of the process, test clients among them, keep aiortc's normal decode path; the emulator taps its own
sessions' receivers to decode only what may be speech, emulator/listening.py):

* ``InboundTap`` replaces ``RTCRtpReceiver._handle_rtp_packet`` on one receiver. It keeps aiortc's RTCP
  receiver statistics (so receiver reports and getStats still work) and hands each Opus packet on at once:
  no jitter buffer, no decoder queue, no decoder thread work.
* ``OutboundAudio`` owns a transceiver whose sender never encodes: its track never yields a frame (so
  aiortc's send loop waits on it instead of polling and never creates an encoder). Packets are written
  "SFU style" to the sender's DTLS transport (``RTCDtlsTransport._send_rtp``) with the sender's SSRC, the
  negotiated payload type and MID extension, and our own sequence numbers / timestamp offsets, so a change
  of source is invisible to the receiver. The sender's RTCP sender-report counters (packets, octets, the last
  packet's RTP and NTP timestamps) are computed only when aiortc reads them (an SR every ~1 s, getStats):
  ``_LazyCountersSender``, the class of our senders only, turns aiortc's private counter attributes into
  properties over ``OutboundAudio``'s own plain counters, so a forwarded packet writes none of them.

* The short paths (issue 16). Receiving: a tap's first packet of each SSRC comes aiortc's way (aioice's
  queue, the DTLS transport's receive loop, RtpPacket, the router, ``InboundTap._handle``), then that SSRC is
  claimed on the leg's ``_FastReceive``, which replaces ``datagram_received`` on the nominated ICE pair's
  protocol instance: its SRTP packets are counted on the DTLS transport, unprotected with the leg's own SRTP
  session, parsed and handed to the subscribers in the datagram callback; STUN (consent freshness), DTLS, RTCP
  and unclaimed SSRCs fall through to aioice as before. Sending: ``OutboundAudio`` protects with the other
  leg's session and calls ``sendto`` on its nominated pair's socket itself (aiortc's ``_send_rtp`` ->
  ``Connection.send`` -> ``send_data`` without their coroutines), counting on its DTLS transport too. A
  forwarded packet thus goes socket to socket in one call stack. ``VOICEBRIDGE_SHORT_PATH=0`` (or
  ``use_short_path(False)``) keeps every packet on aiortc's path, for comparison.

* RTCP at an audio pace (issue 16). aiortc's sender and receiver each report every 0.5-1.5 s; on our legs
  (senders of ``OutboundAudio``, receivers of ``InboundTap``) the first report comes as aiortc sends it and each
  next one 2.5-7.5 s later, libwebrtc's interval for audio (``_paced_rtcp`` drives aiortc's own loop, holding it
  between reports: what a report holds and how the loop stops stay aiortc's). ``RTCP_EXTRA_S = (0, 0)``: aiortc's.

``check_aiortc_compatibility()`` verifies every internal this relies on and raises ``AiortcIncompatible``
naming what changed; both classes call it, and tests/unit/test_passthrough*.py pin it. A leg whose
transport fails the check at run time stays on aiortc's path (logged), never raising inside aiortc.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import random
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import pylibsrtp
from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

log = logging.getLogger(__name__)

OPUS_CLOCK = 48000
_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
# Name-mangled private attributes of aiortc 1.16 that we read or write (see check_aiortc_compatibility).
_RX_STREAMS = "_RTCRtpReceiver__remote_streams"
_RX_CODECS = "_RTCRtpReceiver__codecs"
_TX_COUNTERS = (
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__ntp_timestamp",
)
# RTCDtlsTransport's transport-stats counters (getStats "transport" entry), kept by the short paths.
_DTLS_RX = ("_RTCDtlsTransport__rx_packets", "_RTCDtlsTransport__rx_bytes")
_DTLS_TX = ("_RTCDtlsTransport__tx_packets", "_RTCDtlsTransport__tx_bytes")
_FAST_RX = "_voicebridge_fast_rx"  # the _FastReceive of a DTLS transport, in its instance dict
_LATENCY_SAMPLES = 4096
_SEQ_TS = struct.Struct("!HI")
_CONNECTED = DtlsState.CONNECTED

# The short paths (see the module docstring); VOICEBRIDGE_SHORT_PATH=0 keeps every packet on aiortc's own path
# (the bench compares both in one run). Read per packet/tap, so use_short_path() takes effect at once.
SHORT_PATH = os.environ.get("VOICEBRIDGE_SHORT_PATH", "1") != "0"


# RTCP of our legs (issue 16): aiortc sends an SR per sender and an RR per receiver every 0.5-1.5 s, each one a
# coroutine's wake-up, an SRTCP protect and a datagram, and as many to receive from the far end. libwebrtc's
# interval for audio is 5 s on average; ours: aiortc's first report as it comes, then each next one waits this many
# seconds more than aiortc's sleep (uniform between the two), i.e. 2.5-7.5 s apart. (0, 0): aiortc's own pace.
RTCP_EXTRA_S = (2.0, 6.0)


def use_short_path(on: bool) -> None:
    """Switch the short receive/send paths on or off for this process (new packets and taps from now on)."""
    global SHORT_PATH
    SHORT_PATH = on


class AiortcIncompatible(RuntimeError):
    """The aiortc internals the pass-through hooks have changed: media/passthrough.py needs updating."""


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


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn) if fn is not None else ""
    except (OSError, TypeError):
        return ""


def _params(fn: Any) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters) if fn is not None else []
    except (TypeError, ValueError):
        return []


def _class_problems() -> tuple[str, ...]:
    """What the installed aiortc/aioice classes lack, computed once per version of what we inspect.

    Reading sources (inspect.getsource) takes milliseconds; every tap and every outbound audio checks, so the
    answer is cached, keyed by the very functions inspected (a monkeypatched or reloaded one is checked again).
    """
    key = (
        *(getattr(cls, name, None) for cls, name in _INSPECTED),
        vars(RTCRtpSender).get("__slots__"),
        tuple(getattr(RTCRtpSender, n, None) for n in _TX_COUNTERS),
    )
    return _class_problems_for(key)


@functools.lru_cache(maxsize=16)
def _class_problems_for(key: tuple[Any, ...]) -> tuple[str, ...]:
    problems: list[str] = []

    def need(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    handler = getattr(RTCRtpReceiver, "_handle_rtp_packet", None)
    need(
        handler is not None
        and inspect.iscoroutinefunction(handler)
        and list(inspect.signature(handler).parameters) == ["self", "packet", "arrival_time_ms"],
        "async RTCRtpReceiver._handle_rtp_packet(self, packet, arrival_time_ms)",
    )
    dispatch = getattr(RTCDtlsTransport, "_handle_rtp_data", None)
    need(
        dispatch is not None and "receiver._handle_rtp_packet(" in inspect.getsource(dispatch),
        "RTCDtlsTransport._handle_rtp_data dispatching to receiver._handle_rtp_packet",
    )
    send_rtp = getattr(RTCDtlsTransport, "_send_rtp", None)
    need(
        send_rtp is not None
        and inspect.iscoroutinefunction(send_rtp)
        and list(inspect.signature(send_rtp).parameters) == ["self", "data"],
        "async RTCDtlsTransport._send_rtp(self, data)",
    )
    need(
        list(inspect.signature(RTCRtpSender.send).parameters) == ["self", "parameters"],
        "RTCRtpSender.send(self, parameters)",
    )
    need(
        list(inspect.signature(StreamStatistics.add).parameters) == ["self", "packet"],
        "aiortc.rtcrtpreceiver.StreamStatistics.add(self, packet)",
    )
    # _LazyCountersSender: aiortc reads the sender's counters as plain attributes in these methods only, and a
    # sender's class can be swapped for a slot-less subclass (no __slots__ on RTCRtpSender).
    for method in ("_run_rtcp", "getStats", "_handle_rtcp_packet", "_run_rtp"):
        fn = getattr(RTCRtpSender, method, None)
        need(fn is not None and "self.__packet_count" in inspect.getsource(fn), f"RTCRtpSender.{method} counters")
    need(
        "__slots__" not in vars(RTCRtpSender) and not any(hasattr(RTCRtpSender, n) for n in _TX_COUNTERS),
        "RTCRtpSender without __slots__ or class-level counters",
    )
    # The short paths replay what these do for an SRTP packet (count, unprotect / protect, send on the nominated
    # pair) and take non-STUN datagrams off the ICE protocol before aioice queues them.
    recv_next = _source(getattr(RTCDtlsTransport, "_recv_next", None))
    need(
        all(x in recv_next for x in ("self.__rx_packets += 1", "self.__rx_bytes += len(", "self._rx_srtp.unprotect(")),
        "RTCDtlsTransport._recv_next counting and unprotecting with self._rx_srtp",
    )
    send_rtp_src = _source(send_rtp)
    need(
        all(x in send_rtp_src for x in ("self._tx_srtp.protect(", "self.transport._send(", "self.__tx_packets += 1")),
        "RTCDtlsTransport._send_rtp protecting with self._tx_srtp and sending on self.transport",
    )
    need("self._connection = " in _source(RTCIceTransport.__init__), "RTCIceTransport._connection")
    received = getattr(StunProtocol, "datagram_received", None)
    need(
        _params(received) == ["self", "data", "addr"]
        and "self.receiver.data_received(" in _source(received),
        "aioice StunProtocol.datagram_received(self, data, addr) handing non-STUN data to the connection",
    )
    need(
        "self._nominated.get(component)" in _source(getattr(IceConnection, "sendto", None))
        and "self.transport.sendto(data, addr)" in _source(getattr(StunProtocol, "send_data", None)),
        "aioice Connection.sendto via self._nominated[component].protocol.transport.sendto",
    )
    # _paced_rtcp: aiortc's RTCP loops sleep once per report, and are started through the instance's attribute.
    for cls, start in ((RTCRtpSender, "send"), (RTCRtpReceiver, "receive")):
        need(
            "await asyncio.sleep(0.5 + random.random())" in _source(getattr(cls, "_run_rtcp", None))
            and "asyncio.ensure_future(self._run_rtcp())" in _source(getattr(cls, start, None)),
            f"{cls.__name__}._run_rtcp sleeping 0.5-1.5 s per report, started by {start}() as self._run_rtcp()",
        )
    return tuple(problems)


_INSPECTED = (
    (RTCRtpReceiver, "_handle_rtp_packet"),
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_send_rtp"),
    (RTCDtlsTransport, "_recv_next"),
    (RTCRtpSender, "send"),
    (RTCRtpSender, "_run_rtcp"),
    (RTCRtpSender, "getStats"),
    (RTCRtpSender, "_handle_rtcp_packet"),
    (RTCRtpSender, "_run_rtp"),
    (RTCRtpReceiver, "_run_rtcp"),
    (RTCRtpReceiver, "receive"),
    (StreamStatistics, "add"),
    (RTCIceTransport, "__init__"),
    (StunProtocol, "datagram_received"),
    (StunProtocol, "send_data"),
    (IceConnection, "sendto"),
)


def check_aiortc_compatibility(
    receiver: RTCRtpReceiver | None = None,
    sender: RTCRtpSender | None = None,
    dtls: RTCDtlsTransport | None = None,
) -> None:
    """Raise AiortcIncompatible (naming the missing piece) if an aiortc/aioice upgrade broke what we hook."""
    problems: list[str] = []

    def need(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    problems.extend(_class_problems())
    if receiver is not None:
        need(isinstance(getattr(receiver, _RX_STREAMS, None), dict), f"RTCRtpReceiver.{_RX_STREAMS} (dict)")
        need(isinstance(getattr(receiver, _RX_CODECS, None), dict), f"RTCRtpReceiver.{_RX_CODECS} (dict)")
        need(hasattr(receiver, "_enabled"), "RTCRtpReceiver._enabled")
    if sender is not None:
        need(isinstance(getattr(sender, "_ssrc", None), int), "RTCRtpSender._ssrc (int)")
        for name in _TX_COUNTERS:
            need(isinstance(getattr(sender, name, None), int), f"RTCRtpSender.{name} (int)")
        need(type(sender) in (RTCRtpSender, _LazyCountersSender), "an RTCRtpSender (not a subclass)")
    if dtls is not None:
        need(dtls._rx_srtp is not None and dtls._tx_srtp is not None, "RTCDtlsTransport._rx_srtp/_tx_srtp (connected)")
        for name in (*_DTLS_RX, *_DTLS_TX):
            need(isinstance(getattr(dtls, name, None), int), f"RTCDtlsTransport.{name} (int)")
        conn = getattr(dtls.transport, "_connection", None)
        nominated = getattr(conn, "_nominated", None)
        need(isinstance(nominated, dict), "aioice Connection._nominated (dict)")
        pair = nominated.get(1) if isinstance(nominated, dict) else None
        need(
            pair is not None and isinstance(pair.protocol, StunProtocol) and hasattr(pair, "remote_addr"),
            "aioice Connection._nominated[1]: a CandidatePair with protocol and remote_addr",
        )
    if problems:
        import aiortc

        raise AiortcIncompatible(
            f"aiortc {getattr(aiortc, '__version__', '?')} no longer has what voicebridge.media.passthrough "
            f"hooks: {'; '.join(problems)}"
        )


class InboundTap:
    """Takes a peer connection's incoming Opus RTP straight off its RTCRtpReceiver: no jitter buffer/decoder.

    Subscribers are called synchronously inside the receive path, so they must be quick; an exception
    in one is logged and counted (``errors``), never propagated (it would kill the leg's receive loop).

    The first packet of each SSRC comes aiortc's way (ICE queue, DTLS receive loop, RtpPacket, router, our
    ``_handle``); it then moves that SSRC to the short path (``_FastReceive``): later packets are taken from the
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
        self._streams: dict[int, StreamStatistics] = getattr(receiver, _RX_STREAMS)
        self._codecs: dict[int, Any] = getattr(receiver, _RX_CODECS)
        self._opus_pt: dict[int, bool] = {}
        self._fast: _FastReceive | None = None
        self._hdr = _Header()  # what StreamStatistics.add reads, for short-path packets (no RtpPacket)
        # Instance attribute shadows the class method for this receiver only.
        receiver._handle_rtp_packet = self._handle  # type: ignore[method-assign]
        _pace_rtcp(receiver)

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

    def _short(self, plain: bytes, now: float) -> None:
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

    def _deliver(self, packet: RtpPacket | _Header, pt: int, payload: bytes, marker: bool, now: float) -> None:
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
        fast = vars(dtls).get(_FAST_RX)
        if fast is None:
            try:
                check_aiortc_compatibility(dtls=dtls)
            except AiortcIncompatible as exc:  # stay on aiortc's path; never raise inside its receive loop
                vars(self.receiver)["_handle_rtp_packet"] = self._handle_long_only
                log.error("InboundTap: no short receive path: %s", exc)
                return
            fast = vars(dtls)[_FAST_RX] = _FastReceive(dtls)
        fast.add(ssrc, self)
        self._fast = fast

    async def _handle_long_only(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self._deliver(packet, packet.payload_type, packet.payload, bool(packet.marker), time.perf_counter())


class _Header:
    """The fields of an RTP header that StreamStatistics.add and RtpAudio read (one reused object per tap)."""

    __slots__ = ("sequence_number", "ssrc", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0
        self.ssrc = 0


class _FastReceive:
    """The short receive path of one DTLS transport (one leg): SRTP packets of tapped SSRCs off the ICE socket.

    It replaces, on that leg's nominated ICE pair's protocol instance only, ``datagram_received``: an SRTP
    packet (first byte 128-191, not RTCP) whose SSRC a tap has claimed is counted on the DTLS transport (its
    getStats "transport" entry), unprotected with the leg's own receive session and handed to the tap, all in
    the datagram callback. Everything else (STUN: consent freshness, DTLS, RTCP, unclaimed SSRCs) goes on to
    aioice's own callback, hence aiortc's receive loop, as before.
    """

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        pair = dtls.transport._connection._nominated[1]
        self.protocol: StunProtocol = pair.protocol
        self.taps: dict[int, InboundTap] = {}
        self._unprotect = dtls._rx_srtp.unprotect
        self._original = self.protocol.datagram_received
        self.protocol.datagram_received = self._datagram_received  # type: ignore[method-assign,assignment]

    def add(self, ssrc: int, tap: InboundTap) -> None:
        self.taps[ssrc] = tap

    def remove(self, tap: InboundTap) -> None:
        for ssrc in [s for s, t in self.taps.items() if t is tap]:
            del self.taps[ssrc]
        if not self.taps:  # the last tap gone: aioice's own callback back, and a fresh start for a new tap
            vars(self.protocol).pop("datagram_received", None)
            vars(self.dtls).pop(_FAST_RX, None)

    def _datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 209:  # SRTP, not SRTCP
            tap = self.taps.get(int.from_bytes(data[8:12], "big"))
            if tap is not None:
                now = time.perf_counter()
                dtls = self.dtls
                dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
                dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
                try:
                    plain = self._unprotect(data)
                except pylibsrtp.Error:
                    tap.srtp_errors += 1
                    return
                tap._short(plain, now)
                return
        self._original(data, addr)


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
        _pace_rtcp(sender)
        # Per instance too: this sender's RTCP counters become views of ours, computed when aiortc reads them.
        vars(sender)[_OWNER] = self
        for name in _TX_COUNTERS:
            vars(sender).pop(name, None)
        sender.__class__ = _LazyCountersSender
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
        """Protect and send one RTP packet on dtls; True when done here and now (see _run_now).

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
        return _run_now(dtls._send_rtp(data))

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


_OWNER = "_voicebridge_outbound"


def _counter(read: Callable[[OutboundAudio], int], doc: str) -> property:
    def get(sender: RTCRtpSender) -> int:
        return read(vars(sender)[_OWNER])

    def set_(sender: RTCRtpSender, value: int) -> None:
        # aiortc's own send loop would write here; ours never sends (idle track), so there is nothing to keep.
        pass

    return property(get, set_, doc=doc)


class _LazyCountersSender(RTCRtpSender):
    """The class of OutboundAudio's senders only: aiortc's RTCP counters read from the OutboundAudio on demand.

    aiortc's methods read ``self.__packet_count`` etc. (name-mangled to the names in _TX_COUNTERS); a property
    of the same name on the class wins over the instance attribute, so an SR or getStats() sees our counters
    as of that moment while the per-packet path only increments two ints. No state of its own (no __slots__
    change): assigning it as an instance's __class__ is safe, and check_aiortc_compatibility guards the rest.
    """

    __slots__ = ()


for _name, _read, _doc in (
    (_TX_COUNTERS[0], lambda o: o.packets_sent, "RTP packets sent (SR packet count, outbound-rtp packetsSent)"),
    (_TX_COUNTERS[1], lambda o: o.bytes_sent, "payload octets sent (SR octet count, outbound-rtp bytesSent)"),
    (_TX_COUNTERS[2], lambda o: o._last_ts if o.packets_sent else 0, "RTP timestamp of the last packet sent (SR)"),
    (_TX_COUNTERS[3], lambda o: o.sent_ntp_time(), "NTP time of the last packet sent (SR)"),
):
    setattr(_LazyCountersSender, _name, _counter(_read, _doc))


def _pace_rtcp(obj: RTCRtpSender | RTCRtpReceiver) -> None:
    """Per instance: obj's RTCP loop, once started, reports at our pace (RTCP_EXTRA_S), aiortc's code unchanged."""
    if "_run_rtcp" not in vars(obj):
        vars(obj)["_run_rtcp"] = functools.partial(_paced_rtcp, obj._run_rtcp)


async def _paced_rtcp(run_rtcp: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Drive aiortc's RTCP loop (sleep 0.5-1.5 s, send a report, again), holding it RTCP_EXTRA_S longer after
    each sleep but the first before it sends its next report. Everything else is aiortc's: what a report holds,
    and the stop: a cancellation is thrown into its loop, which sends its BYE and says it exited as it would."""
    waits = 0

    async def hold() -> None:
        nonlocal waits
        waits += 1
        low, high = RTCP_EXTRA_S
        if waits > 1 and high > 0:
            await asyncio.sleep(random.uniform(low, high))

    coro = run_rtcp()
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    await _drive(coro, yielded, hold)


def latency_summary(samples: Any) -> dict[str, float | int]:
    """p50/p99/max in milliseconds of a sequence of seconds (empty -> count 0)."""
    values = sorted(samples)
    n = len(values)
    if n == 0:
        return {"count": 0}

    def pct(p: float) -> float:
        return round(float(values[min(n - 1, int(p * n))]) * 1000.0, 4)

    return {"count": n, "p50": pct(0.50), "p99": pct(0.99), "max": round(values[-1] * 1000.0, 4)}


def _run_now(coro: Coroutine[Any, Any, None]) -> bool:
    """Run a coroutine that in practice never suspends (aiortc's _send_rtp: SRTP protect + sendto) right here.

    True when it completed synchronously. If a future aiortc makes it really wait, the rest is handed to the
    event loop (counted by the caller as a deferred send) instead of being lost.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return True
    task = asyncio.ensure_future(_resume(coro, yielded))
    _deferred.add(task)
    task.add_done_callback(_deferred.discard)
    return False


_deferred: set[asyncio.Future[None]] = set()  # keeps deferred sends alive until they finish


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Continue driving a coroutine from the point where it first suspended (see _run_now)."""
    try:
        await _drive(coro, yielded)
    except Exception as exc:  # the packet is lost either way; do not leave an unretrieved task exception
        log.debug("OutboundAudio: deferred RTP send failed: %r", exc)


async def _drive(
    coro: Coroutine[Any, Any, None], yielded: Any, hold: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Go on running coro, which has just yielded `yielded`, inside the awaiting task until it returns.

    What coro yields (an asyncio future, or None for a bare yield) is awaited here and its result (or exception,
    a cancellation of this task included) sent (thrown) back into coro, as a task of its own would. `hold`, if
    given, is awaited after each of coro's waits, before coro resumes (_paced_rtcp's extra wait); a cancellation
    during it is thrown into coro too. One driver for both uses (_resume: a deferred send; _paced_rtcp).
    """
    while True:
        try:
            if yielded is None:  # a bare yield: let the loop run once, as a task would
                await asyncio.sleep(0)
                value = None
            else:
                value = await _Await(yielded)
            if hold is not None:
                await hold()
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            yielded = coro.send(value)
        except StopIteration:
            return


class _Await:
    """Wrap an object a coroutine yielded (an asyncio future) so it can be awaited again by the loop."""

    def __init__(self, fut: Any) -> None:
        self._fut = fut

    def __await__(self) -> Generator[Any, None, Any]:
        return (yield self._fut)

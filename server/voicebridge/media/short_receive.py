"""The short receive path (issue 16): a tapped leg's SRTP packets taken off its ICE socket's datagram callback.

A tap's first packet of each SSRC comes aiortc's way (aioice's queue, the DTLS transport's receive loop, RtpPacket,
the router, ``InboundTap``); then that SSRC is claimed on the leg's ``FastReceive``, which replaces
``datagram_received`` on the nominated ICE pair's protocol instance: its SRTP packets are counted on the DTLS
transport, unprotected with the leg's own SRTP session and handed to the tap in the datagram callback. STUN
(consent freshness), DTLS, RTCP and unclaimed SSRCs fall through to aioice as before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc.rtcdtlstransport import RTCDtlsTransport

if TYPE_CHECKING:
    from .passthrough import InboundTap

FAST_RX = "_voicebridge_fast_rx"  # the FastReceive of a DTLS transport, in its instance dict


class RtpHeader:
    """The fields of an RTP header that StreamStatistics.add and RtpAudio read (one reused object per tap)."""

    __slots__ = ("sequence_number", "ssrc", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0
        self.ssrc = 0


class FastReceive:
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
            vars(self.dtls).pop(FAST_RX, None)

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
                tap.short_packet(plain, now)
                return
        self._original(data, addr)

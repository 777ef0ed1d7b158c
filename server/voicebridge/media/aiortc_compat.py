"""The aiortc and aioice internals the pass-through reaches into, and the check that they are still there.

media/passthrough.py and the modules beside it (short_receive, sender_counters, rtcp_pace) hook aiortc per
instance where it has no public API for encoded media. ``check_aiortc_compatibility()`` verifies every internal
they rely on and raises ``AiortcIncompatible`` naming what changed; tests/unit/test_passthrough*.py pin it. The
class-level part (reading aiortc's sources) is cached per version of what it inspects.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcrtpreceiver import StreamStatistics

# Name-mangled private attributes of aiortc 1.16 that we read or write (see check_aiortc_compatibility).
RX_STREAMS = "_RTCRtpReceiver__remote_streams"
RX_CODECS = "_RTCRtpReceiver__codecs"
TX_COUNTERS = (
    "_RTCRtpSender__packet_count",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__ntp_timestamp",
)
# RTCDtlsTransport's transport-stats counters (getStats "transport" entry), kept by the short paths.
DTLS_RX = ("_RTCDtlsTransport__rx_packets", "_RTCDtlsTransport__rx_bytes")
DTLS_TX = ("_RTCDtlsTransport__tx_packets", "_RTCDtlsTransport__tx_bytes")


class AiortcIncompatible(RuntimeError):
    """The aiortc internals the pass-through hooks have changed: media/passthrough.py needs updating."""


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
        tuple(getattr(RTCRtpSender, n, None) for n in TX_COUNTERS),
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
    # LazyCountersSender (sender_counters.py): aiortc reads the sender's counters as plain attributes in these
    # methods only, and a sender's class can be swapped for a slot-less subclass (no __slots__ on RTCRtpSender).
    for method in ("_run_rtcp", "getStats", "_handle_rtcp_packet", "_run_rtp"):
        fn = getattr(RTCRtpSender, method, None)
        need(fn is not None and "self.__packet_count" in inspect.getsource(fn), f"RTCRtpSender.{method} counters")
    need(
        "__slots__" not in vars(RTCRtpSender) and not any(hasattr(RTCRtpSender, n) for n in TX_COUNTERS),
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
        _params(received) == ["self", "data", "addr"] and "self.receiver.data_received(" in _source(received),
        "aioice StunProtocol.datagram_received(self, data, addr) handing non-STUN data to the connection",
    )
    need(
        "self._nominated.get(component)" in _source(getattr(IceConnection, "sendto", None))
        and "self.transport.sendto(data, addr)" in _source(getattr(StunProtocol, "send_data", None)),
        "aioice Connection.sendto via self._nominated[component].protocol.transport.sendto",
    )
    # rtcp_pace.py: aiortc's RTCP loops sleep once per report, and are started through the instance's attribute.
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
        need(isinstance(getattr(receiver, RX_STREAMS, None), dict), f"RTCRtpReceiver.{RX_STREAMS} (dict)")
        need(isinstance(getattr(receiver, RX_CODECS, None), dict), f"RTCRtpReceiver.{RX_CODECS} (dict)")
        need(hasattr(receiver, "_enabled"), "RTCRtpReceiver._enabled")
    if sender is not None:
        need(isinstance(getattr(sender, "_ssrc", None), int), "RTCRtpSender._ssrc (int)")
        for name in TX_COUNTERS:
            need(isinstance(getattr(sender, name, None), int), f"RTCRtpSender.{name} (int)")
        # An RTCRtpSender, or one already made ours (media/sender_counters.py marks its class): not a subclass
        # of someone else's, whose __class__ could not be swapped safely.
        need(
            type(sender) is RTCRtpSender or getattr(type(sender), "voicebridge_lazy_counters", False),
            "an RTCRtpSender (not a subclass)",
        )
    if dtls is not None:
        need(dtls._rx_srtp is not None and dtls._tx_srtp is not None, "RTCDtlsTransport._rx_srtp/_tx_srtp (connected)")
        for name in (*DTLS_RX, *DTLS_TX):
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

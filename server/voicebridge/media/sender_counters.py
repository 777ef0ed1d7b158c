"""An OutboundAudio's RTCP sender counters, computed only when aiortc reads them (issue 16).

The sender-report counters (packets, octets, the last packet's RTP and NTP timestamps) are written by aiortc on
every packet it sends; ours are forwarded by ``OutboundAudio`` (media/passthrough.py), which keeps two plain ints.
``LazyCountersSender``, the class of our senders only, turns aiortc's private counter attributes into properties
over them, read when an SR is built or getStats() runs, so a forwarded packet writes none of aiortc's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc import RTCRtpSender

from .aiortc_compat import TX_COUNTERS

if TYPE_CHECKING:
    from .passthrough import OutboundAudio

OWNER = "_voicebridge_outbound"


def _counter(read: Callable[[OutboundAudio], int], doc: str) -> property:
    def get(sender: RTCRtpSender) -> int:
        return read(vars(sender)[OWNER])

    def set_(sender: RTCRtpSender, value: int) -> None:
        # aiortc's own send loop would write here; ours never sends (idle track), so there is nothing to keep.
        pass

    return property(get, set_, doc=doc)


class LazyCountersSender(RTCRtpSender):
    """The class of OutboundAudio's senders only: aiortc's RTCP counters read from the OutboundAudio on demand.

    aiortc's methods read ``self.__packet_count`` etc. (name-mangled to the names in TX_COUNTERS); a property
    of the same name on the class wins over the instance attribute, so an SR or getStats() sees our counters
    as of that moment while the per-packet path only increments two ints. No state of its own (no __slots__
    change): assigning it as an instance's __class__ is safe, and check_aiortc_compatibility guards the rest.
    """

    __slots__ = ()
    voicebridge_lazy_counters = True  # media/aiortc_compat.py accepts a sender already of this class


for _name, _read, _doc in (
    (TX_COUNTERS[0], lambda o: o.packets_sent, "RTP packets sent (SR packet count, outbound-rtp packetsSent)"),
    (TX_COUNTERS[1], lambda o: o.bytes_sent, "payload octets sent (SR octet count, outbound-rtp bytesSent)"),
    (TX_COUNTERS[2], lambda o: o._last_ts if o.packets_sent else 0, "RTP timestamp of the last packet sent (SR)"),
    (TX_COUNTERS[3], lambda o: o.sent_ntp_time(), "NTP time of the last packet sent (SR)"),
):
    setattr(LazyCountersSender, _name, _counter(_read, _doc))


def make_lazy(sender: RTCRtpSender, owner: OutboundAudio) -> None:
    """Per instance: this sender's RTCP counters become views of owner's, computed when aiortc reads them."""
    vars(sender)[OWNER] = owner
    for name in TX_COUNTERS:
        vars(sender).pop(name, None)
    sender.__class__ = LazyCountersSender

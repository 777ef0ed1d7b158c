"""The short receive/send paths (media/passthrough.py) on a real call: what aiortc's own path kept working still works.

One call, both legs real aiortc peers over loopback (DTLS-SRTP), the far ends built like the bench's agents
(OutboundAudio out, InboundTap in: short paths on their side too), each leg with a data channel. While the
relay forwards on the short paths, the test checks each thing the long path used to serve: RTCP sender and
receiver reports both ways, ICE consent freshness (checked every 50 ms here, answered both ways), DTLS
application data (the data channel), and the getStats counters (inbound-rtp, remote-inbound/outbound-rtp,
transport).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtp import AnyRtcpPacket, RtcpRrPacket, RtcpSrPacket

from tests.integration.test_relay import connected, opus_tone
from voicebridge.bridge.audio import AudioRelay
from voicebridge.media import passthrough, rtcp_pace, short_receive
from voicebridge.media.passthrough import InboundTap, OutboundAudio, RtpAudio

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
PACKETS = 60


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


@dataclass
class End:
    """One peer connection's audio ends and data channel, and what its tap saw (and by which path)."""

    pc: RTCPeerConnection
    out: OutboundAudio
    tap: InboundTap
    channel: RTCDataChannel | None = None
    got: list[RtpAudio] = field(default_factory=list)
    came_short: list[bool] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tap.subscribe(self._on_packet)

    def _on_packet(self, pkt: RtpAudio) -> None:
        self.came_short.append(self.tap.short_packets > sum(self.came_short))
        self.got.append(pkt)
        if len(self.got) >= PACKETS:
            self.event("all").set()

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())

    def on_message(self, text: str) -> None:
        self.messages.append(text)
        self.event(f"msg:{text}").set()

    @property
    def sender(self) -> RTCRtpSender:
        assert self.out.sender is not None
        return self.out.sender

    @property
    def receiver(self) -> RTCRtpReceiver:
        return self.tap.receiver

    def watch_rtcp(self, name: str, obj: Any, want: Callable[[AnyRtcpPacket], bool]) -> None:
        """Set event `name` once obj (a sender or receiver) handles an RTCP packet satisfying want."""
        real = obj._handle_rtcp_packet

        async def handle(packet: AnyRtcpPacket) -> None:
            await real(packet)
            if want(packet):
                self.event(name).set()

        obj._handle_rtcp_packet = handle


async def leg(pcs: list[RTCPeerConnection]) -> tuple[End, End]:
    """(bridge end, far end): the bridge offers with a data channel, the far end answers like a bench agent."""
    b_pc, f_pc = new_pc(), new_pc()
    pcs += [b_pc, f_pc]
    b_out, f_out = OutboundAudio(), OutboundAudio()
    b_out.add_to(b_pc)
    assert b_out.receiver is not None
    bridge = End(b_pc, b_out, InboundTap(b_out.receiver), b_pc.createDataChannel("events"))
    bridge.channel.on("message", bridge.on_message)  # type: ignore[union-attr]
    f_out.add_to(f_pc)
    assert f_out.receiver is not None
    far = End(f_pc, f_out, InboundTap(f_out.receiver))

    @f_pc.on("datachannel")
    def _channel(channel: RTCDataChannel) -> None:
        far.channel = channel
        channel.on("message", far.on_message)
        far.event("channel").set()

    await b_pc.setLocalDescription(await b_pc.createOffer())
    await f_pc.setRemoteDescription(b_pc.localDescription)
    await f_pc.setLocalDescription(await f_pc.createAnswer())
    await b_pc.setRemoteDescription(f_pc.localDescription)
    await asyncio.gather(connected(b_pc), connected(f_pc))
    await asyncio.wait_for(far.event("channel").wait(), TIMEOUT)
    return bridge, far


def pair_of(pc: RTCPeerConnection) -> Any:
    dtls = pc.getTransceivers()[0].sender.transport
    return dtls.transport._connection._nominated[1]


def count_consent(end: End) -> None:
    """Count this peer's consent checks that got their answer (aioice closes the connection after failures)."""
    protocol = pair_of(end.pc).protocol
    real = protocol.request
    end.events["consent_ok"] = asyncio.Event()
    answered = [0]

    async def request(*args: Any, **kwargs: Any) -> Any:
        response = await real(*args, **kwargs)
        if end.tap.short_packets:  # only checks made while the short path is in use count
            answered[0] += 1
            if answered[0] >= 3:
                end.event("consent_ok").set()
        return response

    protocol.request = request


async def send_paced(end: End, payloads: list[bytes]) -> None:
    for i, payload in enumerate(payloads):
        end.out.send(RtpAudio(payload, 960 * i, i, i == 0, time.perf_counter()), "agent")
        await asyncio.sleep(0.02)  # media pacing, not a wait for a result


def sr_of(ssrc: int) -> Callable[[AnyRtcpPacket], bool]:
    def want(p: AnyRtcpPacket) -> bool:
        return isinstance(p, RtcpSrPacket) and p.ssrc == ssrc and p.sender_info.packet_count == PACKETS

    return want


def rr_for(ssrc: int) -> Callable[[AnyRtcpPacket], bool]:
    def want(p: AnyRtcpPacket) -> bool:
        return isinstance(p, RtcpRrPacket | RtcpSrPacket) and any(
            r.ssrc == ssrc and r.lsr and r.packets_lost == 0 for r in p.reports
        )

    return want


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


async def test_short_paths_keep_rtcp_consent_dtls_and_stats_working(
    pcs: list[RTCPeerConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passthrough, "SHORT_PATH", True)
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)  # read by every consent round: ~20 checks/s
    # Our legs' RTCP pace (2.5-7.5 s between reports after the first) shortened, not skipped: reports still go
    # through the pacing wrapper, a few per second.
    monkeypatch.setattr(rtcp_pace, "RTCP_EXTRA_S", (0.1, 0.3))
    (a_b, a_far), (c_b, c_far) = await leg(pcs), await leg(pcs)
    relay = AudioRelay(a_b.tap, a_b.out, c_b.tap, c_b.out)
    relay.start()
    for end in (a_b, a_far, c_b, c_far):
        count_consent(end)
    a_sent, c_sent = opus_tone(440, PACKETS), opus_tone(660, PACKETS)
    await asyncio.gather(send_paced(a_far, a_sent), send_paced(c_far, c_sent))
    await asyncio.wait_for(asyncio.gather(c_far.event("all").wait(), a_far.event("all").wait()), TIMEOUT)

    # Media: byte-identical, in order, and every hop but a leg's first packets came the short way.
    assert [p.payload for p in c_far.got] == a_sent and [p.payload for p in a_far.got] == c_sent
    for end in (a_b, c_b, a_far, c_far):
        flags = end.came_short
        assert flags[0] is False, "a tap's first packet comes aiortc's way (it learns the SSRC)"
        first_short = flags.index(True)
        assert all(flags[first_short:]), "once short, a leg never went back to aiortc's path"
        assert end.tap.srtp_errors == 0 and end.tap.ignored == 0
    assert relay.stats()["caller_to_cs"]["packets"] == PACKETS == relay.stats()["cs_to_caller"]["packets"]

    # DTLS application data still flows (SCTP over DTLS, through the callback's fall-through), both ways.
    for bridge, far in ((a_b, a_far), (c_b, c_far)):
        assert bridge.channel is not None and far.channel is not None
        bridge.channel.send("ping")
        far.channel.send("pong")
        await asyncio.wait_for(
            asyncio.gather(far.event("msg:ping").wait(), bridge.event("msg:pong").wait()), TIMEOUT
        )

    # Consent freshness: each peer's checks, made while the short path runs, were answered (else aioice closes).
    ends = (a_b, a_far, c_b, c_far)
    await asyncio.wait_for(asyncio.gather(*(e.event("consent_ok").wait() for e in ends)), TIMEOUT)
    assert all(e.pc.connectionState == "connected" for e in ends)

    # RTCP both ways on each leg, after the media: the bridge's SR (counting every packet) reaches the far end and
    # the far end's RR echoing an SR, no loss, comes back; and the other way round.
    for bridge, far in ((a_b, a_far), (c_b, c_far)):
        b_ssrc, f_ssrc = bridge.sender._ssrc, far.sender._ssrc
        far.watch_rtcp("sr", far.receiver, sr_of(b_ssrc))
        bridge.watch_rtcp("sr", bridge.receiver, sr_of(f_ssrc))
        bridge.watch_rtcp("rr", bridge.sender, rr_for(b_ssrc))
        far.watch_rtcp("rr", far.sender, rr_for(f_ssrc))
    await asyncio.wait_for(
        asyncio.gather(*(e.event(n).wait() for e in ends for n in ("sr", "rr"))), TIMEOUT
    )

    # getStats: what the short paths counted is what aiortc reports.
    for bridge, far in ((a_b, a_far), (c_b, c_far)):
        inbound = next(s for s in (await bridge.receiver.getStats()).values() if s.type == "inbound-rtp")
        assert inbound.packetsReceived == PACKETS
        far_in = next(s for s in (await far.receiver.getStats()).values() if s.type == "inbound-rtp")
        assert far_in.packetsReceived == PACKETS
        outbound = next(s for s in (await bridge.sender.getStats()).values() if s.type == "outbound-rtp")
        assert outbound.packetsSent == PACKETS
        remote_in = next(s for s in (await far.sender.getStats()).values() if s.type == "remote-inbound-rtp")
        assert remote_in.packetsReceived == PACKETS and remote_in.packetsLost == 0  # the bridge's RR
        report = await bridge.pc.getStats()
        transport = next(s for s in report.values() if s.type == "transport")
        # DTLS handshake, RTCP and data channel datagrams count too: at least every media packet each way.
        assert transport.packetsReceived >= PACKETS and transport.packetsSent >= PACKETS
        assert transport.bytesReceived >= sum(len(p) for p in a_sent) // 2
    relay.stop()


async def test_with_the_short_path_off_every_packet_takes_aiortcs_path(
    pcs: list[RTCPeerConnection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passthrough, "SHORT_PATH", False)
    bridge, far = await leg(pcs)
    sent = opus_tone(330, 10)
    done = asyncio.Event()
    bridge.tap.subscribe(lambda p: done.set() if len(bridge.got) >= len(sent) else None)
    await send_paced(far, sent)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert [p.payload for p in bridge.got] == sent
    assert bridge.tap.short_packets == 0 and short_receive.FAST_RX not in vars(bridge.receiver.transport)
    assert "datagram_received" not in vars(pair_of(bridge.pc).protocol)

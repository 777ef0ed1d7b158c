"""Network impairment on the real relay path: two aiortc peers through AudioRelay over loopback (DTLS/SRTP).

The stage sits before the relay's sequence rewrite, so what it drops is a gap the far end counts as loss: the
receiving peer's inbound-rtp and the receiver reports it sends back (the sender's remote-inbound-rtp) must show
exactly the packets the stage dropped between the first and the last one it forwarded, in the same run.
"""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import AnyRtcpPacket, RtcpRrPacket, RtcpSrPacket

from voicebridge.bridge.audio import AudioRelay
from voicebridge.media.passthrough import InboundTap
from voicebridge.scenarios.impairment import parse_impairment

from .test_relay import TIMEOUT, Collector, PacketTrack, open_leg, opus_tone, pcs  # noqa: F401  (pcs: fixture)

pytestmark = pytest.mark.integration
COUNT = 250  # 5 s of 20 ms packets


async def test_far_end_rtcp_counts_the_loss_the_stage_applied(pcs: list[RTCPeerConnection]) -> None:  # noqa: F811
    payloads = opus_tone(440, COUNT)
    caller_track = PacketTrack(payloads, hold=True)
    caller = await open_leg(pcs, caller_track)
    cs = await open_leg(pcs, None)  # the CS peer only receives here
    relay = AudioRelay(caller.tap, caller.out, cs.tap, cs.out, impair=parse_impairment("loss=10%"), impair_seed=1)
    at_cs = Collector()
    InboundTap(cs.peer_receiver).subscribe(at_cs)

    sender = cs.out.sender
    assert sender is not None
    # Wait for the CS peer's receiver report that covers the last packet it got.
    rr_done = asyncio.Event()
    last_seq: list[int] = []
    real_tx = sender._handle_rtcp_packet

    async def on_tx_rtcp(packet: AnyRtcpPacket) -> None:
        await real_tx(packet)
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket) and last_seq:
            if any(r.ssrc == sender._ssrc and r.highest_sequence & 0xFFFF == last_seq[0] for r in packet.reports):
                rr_done.set()

    sender._handle_rtcp_packet = on_tx_rtcp  # type: ignore[method-assign]

    # Every packet the caller's peer sends reaches the stage (the hook runs after it): wait for the last one.
    all_in = asyncio.Event()
    arrived: list[int] = []

    def on_packet(party: str, _pkt: object) -> None:
        arrived.append(1)
        if len(arrived) == COUNT:
            all_in.set()

    relay.on_packet(on_packet)
    relay.start()
    caller_track.go.set()
    await asyncio.wait_for(all_in.wait(), TIMEOUT)
    applied = relay.impairment_stats()
    assert applied is not None
    to_cs = applied["caller_to_cs"]
    assert to_cs["packets_in"] == COUNT
    assert to_cs["dropped"] == to_cs["lost_random"] > 0
    await at_cs.wait_for(to_cs["forwarded"])
    got = at_cs.packets
    assert len(got) == to_cs["forwarded"] == COUNT - to_cs["dropped"]
    last_seq.append(got[-1].sequence)
    await asyncio.wait_for(rr_done.wait(), TIMEOUT)

    # Drops before the first or after the last forwarded packet are invisible to any receiver (no gap to see).
    span = ((got[-1].sequence - got[0].sequence) & 0xFFFF) + 1
    edge = COUNT - span
    assert 0 <= edge <= to_cs["dropped"]
    expected_lost = to_cs["dropped"] - edge

    inbound = next(s for s in (await cs.peer_receiver.getStats()).values() if s.type == "inbound-rtp")
    assert inbound.packetsLost == expected_lost
    remote = next(s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp")
    assert remote.packetsLost == expected_lost
    # The requested 10 % over this run's packets: the stage's own applied figure, which RTCP just confirmed.
    assert abs(to_cs["applied_loss"] - 0.10) < 0.05
    relay.stop()

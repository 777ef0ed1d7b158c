"""The pass-through relay on real aiortc peers over loopback: real Opus (libopus via PyAV), real DTLS/SRTP.

Topology: agent peers (A = caller agent, C = CS agent, H = human browser, L = listeners) each talk to the
bridge's own peer connection; the bridge is the offerer on every leg, like the real server.
"""

from __future__ import annotations

import asyncio
import datetime
import fractions
import itertools
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import AnyRtcpPacket, RtcpRrPacket, RtcpSrPacket

from voicebridge.bridge.audio import AudioRelay
from voicebridge.media.passthrough import InboundTap, OutboundAudio, RtpAudio
from voicebridge.media.recording import Recorder

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


def opus_tone(freq: float, count: int) -> list[bytes]:
    """count 20 ms Opus packets of a sine tone with a little noise (so every packet is unique), by libopus."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "stereo"
    enc.format = "s16"
    enc.bit_rate = 32000
    out: list[bytes] = []
    n = 0
    rng = np.random.default_rng(int(freq))
    while len(out) < count:
        t = (np.arange(960) + n * 960) / 48000.0
        wave = 0.3 * np.sin(2 * math.pi * freq * t) + 0.02 * rng.standard_normal(960)
        mono = (wave * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = n * 960
        out.extend(bytes(p) for p in enc.encode(frame))
        n += 1
    assert len(set(out[:count])) == count, "test tone packets must be unique to check order"
    return out[:count]


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded Opus packets (av.Packet) at real-time pace, then loops (count=None) or ends.

    It starts sending once `go` is set (at once by default): a test whose relay is set up after the legs
    connect holds it until then, so how long the set-up took never decides how many packets are left to relay.
    """

    kind = "audio"

    def __init__(self, payloads: list[bytes], loop_forever: bool = False, hold: bool = False) -> None:
        super().__init__()
        self.payloads = payloads
        self.loop_forever = loop_forever
        self.index = 0
        self._t0: float | None = None
        self.go = asyncio.Event()
        if not hold:
            self.go.set()

    async def recv(self) -> av.Packet:
        if self.index >= len(self.payloads) and not self.loop_forever:
            await asyncio.get_running_loop().create_future()  # stay silent until the sender stops
        if self._t0 is None:
            await self.go.wait()
            self._t0 = time.monotonic()
        # Media pacing (one packet per 20 ms), not a test wait.
        await asyncio.sleep(max(0.0, self._t0 + self.index * 0.02 - time.monotonic()))
        if self.readyState != "live":
            raise MediaStreamError
        packet = av.Packet(self.payloads[self.index % len(self.payloads)])
        packet.pts = self.index * 960
        packet.time_base = fractions.Fraction(1, 48000)
        self.index += 1
        return packet


@dataclass
class Collector:
    """Everything one far-end peer received, straight off its receiver (so it decodes nothing either)."""

    packets: list[RtpAudio] = field(default_factory=list)
    want: int = 0
    reached: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, pkt: RtpAudio) -> None:
        self.packets.append(pkt)
        if self.want and len(self.packets) >= self.want:
            self.reached.set()

    async def wait_for(self, n: int) -> None:
        self.want = n
        if len(self.packets) >= n:
            return
        self.reached.clear()
        await asyncio.wait_for(self.reached.wait(), TIMEOUT)


@dataclass
class Leg:
    """The bridge's end (bridge_pc, its OutboundAudio and InboundTap) and the far peer (peer_pc)."""

    bridge_pc: RTCPeerConnection
    peer_pc: RTCPeerConnection
    out: OutboundAudio
    tap: InboundTap
    peer_receiver: RTCRtpReceiver


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def connected(pc: RTCPeerConnection) -> None:
    done = asyncio.get_running_loop().create_future()

    @pc.on("connectionstatechange")
    def _changed() -> None:
        if pc.connectionState == "connected" and not done.done():
            done.set_result(None)
        elif pc.connectionState == "failed" and not done.done():
            done.set_exception(RuntimeError("peer connection failed"))

    if pc.connectionState == "connected":
        return
    await asyncio.wait_for(done, TIMEOUT)


async def open_leg(pcs: list[RTCPeerConnection], track: MediaStreamTrack | None) -> Leg:
    """Bridge offers (OutboundAudio added before createOffer); peer answers, sending `track` (or nothing)."""
    bridge_pc, peer_pc = new_pc(), new_pc()
    pcs += [bridge_pc, peer_pc]
    out = OutboundAudio()
    out.add_to(bridge_pc)
    assert out.receiver is not None
    tap = InboundTap(out.receiver)
    await bridge_pc.setLocalDescription(await bridge_pc.createOffer())
    await peer_pc.setRemoteDescription(bridge_pc.localDescription)
    if track is not None:
        peer_pc.addTrack(track)
    peer_receiver = peer_pc.getTransceivers()[0].receiver
    await peer_pc.setLocalDescription(await peer_pc.createAnswer())
    await bridge_pc.setRemoteDescription(peer_pc.localDescription)
    await asyncio.gather(connected(bridge_pc), connected(peer_pc))
    return Leg(bridge_pc, peer_pc, out, tap, peer_receiver)


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


@dataclass
class CodecCalls:
    """Who asked aiortc for an encoder (senders) or a decoder (receivers' track queues)."""

    encoders: list[Any] = field(default_factory=list)
    decoders: list[Any] = field(default_factory=list)


@pytest.fixture
def codec_calls(monkeypatch: pytest.MonkeyPatch) -> CodecCalls:
    calls = CodecCalls()
    real_encoder = aiortc.rtcrtpsender.get_encoder
    real_decoder = aiortc.rtcrtpreceiver.get_decoder

    def get_encoder(codec: Any) -> Any:
        calls.encoders.append(sys._getframe(1).f_locals.get("self"))  # the RTCRtpSender asking
        return real_encoder(codec)

    def get_decoder(codec: Any) -> Any:
        calls.decoders.append(sys._getframe(1).f_locals.get("output_q"))  # the receiving track's queue
        return real_decoder(codec)

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", get_decoder)
    return calls


def assert_continuous(packets: list[RtpAudio], switches: frozenset[int] = frozenset()) -> None:
    """Consecutive sequence numbers; timestamps one 20 ms frame apart, except into packet i for i in `switches`
    (a change of source), where the bridge advances them by the real time that passed, in whole frames: how many
    depends on how fast the machine switched, so only "whole frames, at least one" is asserted there."""
    for i, (prev, cur) in enumerate(itertools.pairwise(packets), start=1):
        seq_step = (cur.sequence - prev.sequence) & 0xFFFF
        assert seq_step == 1, f"sequence jump {prev.sequence} -> {cur.sequence}"
        step = (cur.timestamp - prev.timestamp) & 0xFFFFFFFF
        if i in switches:
            assert step >= 960 and step % 960 == 0, f"timestamp step {step} at the switch at seq {cur.sequence}"
        else:
            assert step == 960, f"timestamp step {step} at seq {cur.sequence} (want 960)"


async def test_relay_is_byte_identical_in_order_and_never_decodes_or_encodes(
    pcs: list[RTCPeerConnection], codec_calls: CodecCalls, tmp_path: Path
) -> None:
    caller_payloads, cs_payloads = opus_tone(440, 50), opus_tone(660, 50)
    caller_track, cs_track = PacketTrack(caller_payloads, hold=True), PacketTrack(cs_payloads, hold=True)
    caller = await open_leg(pcs, caller_track)
    cs = await open_leg(pcs, cs_track)
    # One listener that decodes with aiortc's normal path (proves the codec counter sees real decodes).
    listener = await open_leg(pcs, None)
    relay = AudioRelay(caller.tap, caller.out, cs.tap, cs.out)
    relay.add_listener(listener.out, None)
    seen: list[str] = []
    relay.on_packet(lambda party, pkt: seen.append(party))
    recorder = Recorder(tmp_path)
    relay.on_packet(recorder.feed)
    at_cs, at_caller = Collector(), Collector()
    InboundTap(cs.peer_receiver).subscribe(at_cs)
    InboundTap(caller.peer_receiver).subscribe(at_caller)
    relay.start()
    caller_track.go.set()
    cs_track.go.set()
    listener_track = listener.peer_receiver.track
    first_frame = asyncio.ensure_future(listener_track.recv())

    await asyncio.gather(at_cs.wait_for(20), at_caller.wait_for(20))
    frame = await asyncio.wait_for(first_frame, TIMEOUT)
    assert isinstance(frame, av.AudioFrame) and frame.sample_rate == 48000

    # Byte-identical and in order: what the CS agent got is a contiguous run of what the caller agent sent.
    got = [p.payload for p in at_cs.packets]
    start = caller_payloads.index(got[0])
    assert got == caller_payloads[start : start + len(got)]
    got_back = [p.payload for p in at_caller.packets]
    start = cs_payloads.index(got_back[0])
    assert got_back == cs_payloads[start : start + len(got_back)]
    assert_continuous(at_cs.packets)
    assert_continuous(at_caller.packets)
    assert {"caller", "cs"} <= set(seen)

    # No codec on the relay path: none of the bridge's senders asked for an encoder, none of its receivers
    # for a decoder, and nothing was ever queued for their decoder threads.
    bridge_legs = (caller, cs, listener)
    assert not any(leg.out.sender in codec_calls.encoders for leg in bridge_legs)
    bridge_queues = [leg.out.receiver._track._queue for leg in bridge_legs if leg.out.receiver._track]
    assert len(bridge_queues) == 2  # the two agent legs receive; the listener leg only sends
    assert not any(q is d for q in bridge_queues for d in codec_calls.decoders)
    for leg in bridge_legs:
        assert leg.out.receiver is not None
        assert leg.out.receiver._RTCRtpReceiver__decoder_queue.qsize() == 0
    # ... while the counters do see real codecs: the far peers' senders and the decoding listener.
    assert caller.peer_pc.getSenders()[0] in codec_calls.encoders
    assert any(d is listener.peer_receiver.track._queue for d in codec_calls.decoders)

    stats = relay.stats()
    assert stats["caller_to_cs"]["packets"] >= 20 and stats["cs_to_caller"]["packets"] >= 20
    assert stats["caller_to_cs"]["latency_ms"]["count"] >= 20
    assert stats["listeners"]["packets"] >= 1
    assert caller.out.deferred_sends == 0 and cs.out.deferred_sends == 0  # the sync send path still holds
    relay.stop()

    # The recording holds the caller agent's packets exactly as they arrived (muxed, not transcoded).
    paths = recorder.close()
    with av.open(str(paths["caller"])) as container:
        recorded = [bytes(p) for p in container.demux(audio=0) if p.size]
    assert recorded and recorded == caller_payloads[caller_payloads.index(recorded[0]) :][: len(recorded)]


async def test_switching_to_a_human_and_back_keeps_the_cs_leg_continuous(
    pcs: list[RTCPeerConnection],
) -> None:
    agent_payloads, human_payloads, cs_payloads = opus_tone(440, 40), opus_tone(550, 40), opus_tone(660, 40)
    agent = await open_leg(pcs, PacketTrack(agent_payloads, loop_forever=True))
    cs = await open_leg(pcs, PacketTrack(cs_payloads, loop_forever=True))
    human = await open_leg(pcs, PacketTrack(human_payloads, loop_forever=True))
    relay = AudioRelay(agent.tap, agent.out, cs.tap, cs.out)
    at_cs, at_agent, at_human = Collector(), Collector(), Collector()
    InboundTap(cs.peer_receiver).subscribe(at_cs)
    InboundTap(agent.peer_receiver).subscribe(at_agent)
    InboundTap(human.peer_receiver).subscribe(at_human)
    relay.start()

    await at_cs.wait_for(10)
    relay.set_caller_source(human.tap, human.out)
    assert relay.on_hold
    switched_at = len(at_cs.packets)
    sent_to_agent = agent.out.packets_sent  # what the bridge had sent the caller agent when the hold began
    await at_cs.wait_for(switched_at + 15)
    await at_human.wait_for(5)
    held_sent, held_heard = agent.out.packets_sent, len(at_agent.packets)
    relay.set_caller_source(None)
    back_at = len(at_cs.packets)
    await at_cs.wait_for(back_at + 10)
    relay.stop()

    # The CS leg saw one stream: consecutive sequence numbers, timestamps 20 ms apart (whole frames of real time
    # where the source changed), and three stretches (agent, human, agent), each byte-identical to a
    # contiguous run of what that source sent.
    packets = at_cs.packets
    assert not set(agent_payloads) & set(human_payloads)
    source = ["human" if p.payload in human_payloads else "agent" for p in packets]
    assert_continuous(packets, frozenset(i for i in range(1, len(packets)) if source[i] != source[i - 1]))
    runs: list[tuple[str, list[bytes]]] = []
    for p in packets:
        who = "agent" if p.payload in agent_payloads else "human" if p.payload in human_payloads else "?"
        assert who != "?", "the CS leg received a payload nobody sent"
        if not runs or runs[-1][0] != who:
            runs.append((who, []))
        runs[-1][1].append(p.payload)
    assert [who for who, _ in runs] == ["agent", "human", "agent"]
    for who, got in runs:
        src = agent_payloads if who == "agent" else human_payloads
        i = src.index(got[0])
        assert got == [src[(i + k) % len(src)] for k in range(len(got))], f"{who} stretch not contiguous"
    assert cs.out.switches == 2
    # On hold the caller agent hears nothing from the CS agent; the human does.
    assert len(at_human.packets) >= 5
    assert human.out.packets_sent >= 5
    # The bridge sent the caller agent nothing during the hold, so it cannot have heard more than what was sent
    # before it (however many of those packets were still in flight when it began).
    assert held_sent == sent_to_agent
    assert held_heard <= sent_to_agent


async def test_send_before_connected_and_after_close_drops_without_raising(
    pcs: list[RTCPeerConnection],
) -> None:
    pkt = RtpAudio(opus_tone(440, 1)[0], 1234, 7, False, time.perf_counter())
    loose = OutboundAudio()
    loose.send(pkt)  # never added to a peer connection
    assert loose.dropped == 1 and loose.packets_sent == 0

    bridge_pc = new_pc()
    pcs.append(bridge_pc)
    out = OutboundAudio()
    out.add_to(bridge_pc)
    await bridge_pc.setLocalDescription(await bridge_pc.createOffer())
    out.send(pkt)  # negotiated nothing yet, transport not connected
    assert out.dropped == 1 and not out.connected

    leg = await open_leg(pcs, None)
    at_peer = Collector()
    InboundTap(leg.peer_receiver).subscribe(at_peer)
    leg.out.send(pkt)
    await at_peer.wait_for(1)
    assert at_peer.packets[0].payload == pkt.payload
    leg.out.close()
    leg.out.send(pkt)
    assert leg.out.dropped == 1 and leg.out.packets_sent == 1

    # The far end closes: sending on a dead transport is counted, not raised.
    await leg.peer_pc.close()
    await leg.bridge_pc.close()
    survivor = leg.out
    survivor._closed = False
    survivor.send(pkt)
    assert survivor.dropped == 2


async def test_a_failing_subscriber_does_not_stop_the_leg(pcs: list[RTCPeerConnection]) -> None:
    leg = await open_leg(pcs, PacketTrack(opus_tone(440, 30), loop_forever=True))  # as many packets as it takes
    calls = Collector()

    def broken(pkt: RtpAudio) -> None:
        raise RuntimeError("subscriber bug")

    leg.tap.subscribe(broken)
    unsubscribe: Callable[[], None] = leg.tap.subscribe(calls)
    await calls.wait_for(5)
    assert leg.tap.errors >= 5 and leg.tap.packets >= 5
    unsubscribe()
    n = len(calls.packets)
    more = Collector()
    leg.tap.subscribe(more)
    await more.wait_for(2)
    assert len(calls.packets) == n  # unsubscribed: no longer called


async def test_rtcp_sender_reports_and_stats_count_exactly_what_was_forwarded(pcs: list[RTCPeerConnection]) -> None:
    """The SR counters are computed when aiortc builds a report (not written per packet): still exact."""
    leg = await open_leg(pcs, None)  # the far peer only receives
    payloads = opus_tone(330, 40)
    sender = leg.out.sender
    assert sender is not None
    # The far peer's receiver: every SR it gets (aiortc makes them its remote-outbound-rtp stats).
    receiver = leg.peer_receiver
    srs: list[RtcpSrPacket] = []
    sr_with_all = asyncio.Event()
    real_rx = receiver._handle_rtcp_packet

    async def on_rx_rtcp(packet: AnyRtcpPacket) -> None:
        await real_rx(packet)
        if isinstance(packet, RtcpSrPacket) and packet.ssrc == sender._ssrc:
            srs.append(packet)
            if packet.sender_info.packet_count == len(payloads):
                sr_with_all.set()

    receiver._handle_rtcp_packet = on_rx_rtcp  # type: ignore[method-assign]
    # Our sender: receiver reports echoing one of its SRs (LSR), from which aiortc computes the round trip.
    rr_echoing_sr = asyncio.Event()
    real_tx = sender._handle_rtcp_packet

    async def on_tx_rtcp(packet: AnyRtcpPacket) -> None:
        await real_tx(packet)
        if isinstance(packet, RtcpRrPacket | RtcpSrPacket) and sr_with_all.is_set():
            if any(r.ssrc == sender._ssrc and r.lsr for r in packet.reports):
                rr_echoing_sr.set()

    sender._handle_rtcp_packet = on_tx_rtcp  # type: ignore[method-assign]

    for i, payload in enumerate(payloads):
        if i == len(payloads) - 1:
            before_last = datetime.datetime.now(datetime.UTC)
        leg.out.send(RtpAudio(payload, 1000 + 960 * i, 500 + i, False, time.perf_counter()), "agent")
    after_last = datetime.datetime.now(datetime.UTC)
    assert leg.out.packets_sent == len(payloads) and leg.out.dropped == 0
    octets = sum(len(p) for p in payloads)

    await asyncio.wait_for(sr_with_all.wait(), TIMEOUT)
    info = srs[-1].sender_info
    assert (info.packet_count, info.octet_count) == (len(payloads), octets)
    # The SR pairs the last packet's RTP timestamp with the wall-clock time of its send (not of the report).
    assert info.rtp_timestamp == (1000 + 960 * (len(payloads) - 1) + leg.out._ts_off) & 0xFFFFFFFF
    remote = next(s for s in (await receiver.getStats()).values() if s.type == "remote-outbound-rtp")
    assert (remote.packetsSent, remote.bytesSent) == (len(payloads), octets)
    slack = datetime.timedelta(milliseconds=50)  # clock conversion; the report itself comes 0.5-1.5 s later
    assert before_last - slack <= remote.remoteTimestamp <= after_last + slack
    outbound = next(s for s in (await sender.getStats()).values() if s.type == "outbound-rtp")
    assert (outbound.packetsSent, outbound.bytesSent) == (len(payloads), octets)

    # The far end's receiver report echoes the SR's NTP time: aiortc matches it (same NTP read for SR and LSR)
    # and reports all packets received, none lost.
    await asyncio.wait_for(rr_echoing_sr.wait(), TIMEOUT)
    inbound = next(s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp")
    assert inbound.packetsReceived == len(payloads) and inbound.packetsLost == 0
    assert inbound.roundTripTime is not None and inbound.roundTripTime >= 0

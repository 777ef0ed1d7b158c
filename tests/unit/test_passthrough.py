"""The aiortc internals the pass-through hooks: fail loudly, with a clear message, if an upgrade changes."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
from aioice.ice import StunProtocol
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport

from voicebridge.media import aiortc_compat, drive, rtcp_pace
from voicebridge.media.passthrough import (
    AiortcIncompatible,
    InboundTap,
    OutboundAudio,
    check_aiortc_compatibility,
    latency_summary,
    opus_samples,
)

pytestmark = pytest.mark.unit


@pytest.fixture
async def pc() -> AsyncIterator[RTCPeerConnection]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    yield pc
    await pc.close()


async def test_installed_aiortc_has_everything_we_hook(pc: RTCPeerConnection) -> None:
    transceiver = pc.addTransceiver("audio")
    check_aiortc_compatibility(receiver=transceiver.receiver, sender=transceiver.sender)


async def test_a_changed_receive_hook_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    async def renamed(self: Any, packet: Any, arrival_time: int) -> None:
        return None

    monkeypatch.setattr(RTCRtpReceiver, "_handle_rtp_packet", renamed)
    with pytest.raises(AiortcIncompatible, match=r"_handle_rtp_packet\(self, packet, arrival_time_ms\)"):
        check_aiortc_compatibility()


async def test_a_missing_transport_send_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCDtlsTransport, "_send_rtp")
    with pytest.raises(AiortcIncompatible, match=r"RTCDtlsTransport._send_rtp"):
        check_aiortc_compatibility()


async def test_renamed_private_state_is_reported_by_name(pc: RTCPeerConnection) -> None:
    transceiver = pc.addTransceiver("audio")
    del transceiver.receiver._RTCRtpReceiver__remote_streams
    with pytest.raises(AiortcIncompatible, match="__remote_streams"):
        InboundTap(transceiver.receiver)
    sender: RTCRtpSender = transceiver.sender
    del sender._RTCRtpSender__packet_count
    with pytest.raises(AiortcIncompatible, match="__packet_count"):
        check_aiortc_compatibility(sender=sender)


async def test_a_sender_that_no_longer_reads_its_counters_as_attributes_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run_rtcp(self: Any) -> None:  # an aiortc that would keep its SR counters elsewhere
        return None

    monkeypatch.setattr(RTCRtpSender, "_run_rtcp", run_rtcp)
    with pytest.raises(AiortcIncompatible, match=r"RTCRtpSender._run_rtcp counters"):
        check_aiortc_compatibility()


async def test_rtcp_counters_are_views_of_the_outbound_counters_on_its_own_sender_only(pc: RTCPeerConnection) -> None:
    out = OutboundAudio()
    sender = out.add_to(pc)
    plain = pc.addTransceiver("audio").sender
    assert type(plain) is RTCRtpSender and isinstance(sender, RTCRtpSender) and type(sender) is not RTCRtpSender
    # Before any packet: what aiortc itself starts from.
    assert [getattr(sender, n) for n in aiortc_compat.TX_COUNTERS] == [0, 0, 0, 0]
    out.packets_sent, out.bytes_sent, out._last_ts = 7, 560, 123456  # what send() leaves behind
    out._last_sent_at = 1.0
    assert sender._RTCRtpSender__packet_count == 7 and sender._RTCRtpSender__octet_count == 560
    assert sender._RTCRtpSender__rtp_timestamp == 123456
    ntp = sender._RTCRtpSender__ntp_timestamp
    assert ntp > 0 and sender._RTCRtpSender__ntp_timestamp == ntp  # computed once per send: SR and LSR agree
    stats = await sender.getStats()  # aiortc's own getStats reads them
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    assert (outbound.packetsSent, outbound.bytesSent) == (7, 560)
    sender._RTCRtpSender__packet_count = 99  # aiortc's send loop would write; ours never sends, ours win
    assert sender._RTCRtpSender__packet_count == 7
    check_aiortc_compatibility(sender=sender)  # still passes on a sender already converted
    assert plain._RTCRtpSender__packet_count == 0


async def test_tap_is_per_instance_and_reversible(pc: RTCPeerConnection) -> None:
    tapped, other = pc.addTransceiver("audio").receiver, pc.addTransceiver("audio").receiver
    tap = InboundTap(tapped)
    # Only this receiver's handler changed: the other one (the emulator's, in tests) keeps decoding normally.
    assert tapped._handle_rtp_packet == tap._handle
    assert other._handle_rtp_packet.__func__ is RTCRtpReceiver._handle_rtp_packet
    with pytest.raises(ValueError, match="already tapped"):
        InboundTap(tapped)
    tap.close()
    assert tapped._handle_rtp_packet.__func__ is RTCRtpReceiver._handle_rtp_packet


async def test_outbound_hooks_only_its_own_sender(pc: RTCPeerConnection) -> None:
    out = OutboundAudio()
    sender = out.add_to(pc)
    plain = pc.addTransceiver("audio").sender
    assert "send" in vars(sender) and "send" not in vars(plain)
    assert out.receiver is pc.getTransceivers()[0].receiver
    with pytest.raises(RuntimeError, match="already added"):
        out.add_to(pc)


def _encode(frame_ms: str, frames: int = 10) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48000, "stereo", "s16"
    enc.options = {"frame_duration": frame_ms}
    out: list[bytes] = []
    for n in range(frames):
        t = (np.arange(960) + n * 960) / 48000.0
        mono = (8000 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, n * 960
        out.extend(bytes(p) for p in enc.encode(frame))
    return out


@pytest.mark.parametrize(("frame_ms", "samples"), [("10", 480), ("20", 960), ("60", 2880)])
def test_opus_samples_reads_real_libopus_packets(frame_ms: str, samples: int) -> None:
    packets = _encode(frame_ms)
    assert packets, "libopus produced no packets"
    assert {opus_samples(p) for p in packets} == {samples}


def test_opus_samples_of_garbage_defaults_to_one_frame() -> None:
    assert opus_samples(b"") == 960


def test_latency_summary() -> None:
    assert latency_summary([]) == {"count": 0}
    s = latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s["count"] == 100 and s["p50"] == 51.0 and s["p99"] == 100.0 and s["max"] == 100.0


async def test_a_send_that_really_suspends_is_finished_by_the_loop() -> None:
    done = asyncio.Event()

    async def slow_send() -> None:
        await asyncio.sleep(0)
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_result, None)
        await fut
        done.set()

    assert drive.run_now(slow_send()) is False
    await asyncio.wait_for(done.wait(), 2)

    async def instant() -> None:
        return None

    assert drive.run_now(instant()) is True


async def test_a_changed_ice_datagram_callback_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def received(self: Any, data: bytes, addr: Any) -> None:  # an aioice that no longer hands data on this way
        return None

    monkeypatch.setattr(StunProtocol, "datagram_received", received)
    with pytest.raises(AiortcIncompatible, match=r"StunProtocol.datagram_received"):
        check_aiortc_compatibility()


async def test_a_dtls_receive_loop_that_no_longer_unprotects_there_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def recv_next(self: Any) -> None:  # an aiortc whose SRTP moved elsewhere
        return None

    monkeypatch.setattr(RTCDtlsTransport, "_recv_next", recv_next)
    with pytest.raises(AiortcIncompatible, match=r"RTCDtlsTransport._recv_next"):
        check_aiortc_compatibility()


async def test_a_dtls_transport_without_srtp_or_ice_pair_is_not_taken_short(pc: RTCPeerConnection) -> None:
    # Before DTLS is connected there is no SRTP session nor nominated pair: the check names them.
    dtls = pc.addTransceiver("audio").receiver.transport
    with pytest.raises(AiortcIncompatible, match=r"_rx_srtp/_tx_srtp.*_nominated\[1\]"):
        check_aiortc_compatibility(dtls=dtls)


async def test_a_tap_whose_leg_cannot_go_short_stays_on_aiortcs_path(
    pc: RTCPeerConnection, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = pc.addTransceiver("audio").receiver
    tap = InboundTap(receiver)
    tap._go_short(1234)  # not connected: the check fails, the error is logged, nothing raises into aiortc
    assert tap._fast is None and receiver._handle_rtp_packet == tap._handle_long_only
    assert "no short receive path" in caplog.text
    tap.close()
    assert "_handle_rtp_packet" not in vars(receiver)


async def test_an_rtcp_loop_with_another_pace_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run_rtcp(self: Any) -> None:  # an aiortc that reports on another schedule
        await asyncio.sleep(5)

    monkeypatch.setattr(RTCRtpReceiver, "_run_rtcp", run_rtcp)
    with pytest.raises(AiortcIncompatible, match=r"RTCRtpReceiver._run_rtcp sleeping 0.5-1.5 s per report"):
        check_aiortc_compatibility()


async def test_our_legs_rtcp_loops_are_paced_per_instance(pc: RTCPeerConnection) -> None:
    out = OutboundAudio()
    sender = out.add_to(pc)
    tap = InboundTap(pc.getTransceivers()[0].receiver)
    plain = pc.addTransceiver("audio")
    assert "_run_rtcp" in vars(sender) and "_run_rtcp" in vars(tap.receiver)
    assert "_run_rtcp" not in vars(plain.sender) and "_run_rtcp" not in vars(plain.receiver)
    tap.close()
    assert "_run_rtcp" not in vars(tap.receiver)


async def test_paced_rtcp_waits_longer_after_the_first_report_and_ends_as_aiortc_s_loop_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stand-in for aiortc's loop (sleep, report, again; on cancellation a BYE): its first report comes at its
    own pace, each next one after an extra wait of RTCP_EXTRA_S; cancelled, it still sends its BYE and returns."""
    monkeypatch.setattr(rtcp_pace, "RTCP_EXTRA_S", (0.3, 0.3))
    extra_waits: list[tuple[float, float]] = []
    uniform = rtcp_pace.random.uniform

    def spy(low: float, high: float) -> float:
        extra_waits.append((low, high))
        return uniform(low, high)

    monkeypatch.setattr(rtcp_pace.random, "uniform", spy)
    loop = asyncio.get_running_loop()
    reports: list[tuple[float, int]] = []  # (when, extra waits drawn before it)
    bye, three = asyncio.Event(), asyncio.Event()

    async def run_rtcp() -> None:
        try:
            while True:
                await asyncio.sleep(0.01)
                reports.append((loop.time(), len(extra_waits)))
                if len(reports) == 3:
                    three.set()
        except asyncio.CancelledError:
            pass
        bye.set()

    task = asyncio.ensure_future(rtcp_pace.paced_rtcp(run_rtcp))
    await three.wait()
    task.cancel()
    await task  # aiortc's loop swallowed the cancellation after its BYE: the task ends normally
    assert bye.is_set() and task.done() and not task.cancelled()
    assert [n for _, n in reports[:3]] == [0, 1, 2]  # no extra wait before the first report, one before each next
    assert extra_waits[:2] == [(0.3, 0.3)] * 2
    # Each next report came at least the extra wait later (less a millisecond: libuv's timers have that grain).
    assert all(b - a >= 0.3 - 0.001 for (a, _), (b, _) in itertools.pairwise(reports[:3]))

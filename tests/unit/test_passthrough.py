"""The aiortc internals the pass-through hooks: fail loudly, with a clear message, if an upgrade changes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport

from voicebridge.media import passthrough
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

    assert passthrough._run_now(slow_send()) is False
    await asyncio.wait_for(done.wait(), 2)

    async def instant() -> None:
        return None

    assert passthrough._run_now(instant()) is True

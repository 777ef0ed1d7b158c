"""media/pcm.py: Opus <-> PCM16 24 kHz transcoding and the relay adapters that carry a WebSocket leg."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voicebridge.media.passthrough import RtpAudio
from voicebridge.media.pcm import (
    FRAME_BYTES,
    PCM_RATE,
    RTP_FRAME,
    OpusDecoder,
    OpusEncoder,
    OpusToPcmSink,
    PcmError,
    PcmToOpusTap,
    transcode_cost,
)

pytestmark = pytest.mark.unit


def tone(hz: float, seconds: float, amplitude: int = 8000) -> bytes:
    t = np.arange(int(PCM_RATE * seconds)) / PCM_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


def dominant_hz(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / PCM_RATE)[int(np.argmax(spectrum))])


def test_round_trip_keeps_the_pitch_and_the_duration() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    packets = [p for f in frames(tone(440, 1.0)) for p in encoder.encode(f)]
    assert 48 <= len(packets) <= 50  # one packet per 20 ms frame (libopus keeps its look-ahead back)
    pcm = b"".join(decoder.decode(p) for p in packets)
    assert abs(len(pcm) // 2 - len(packets) * 480) < 100  # 24 kHz out: 480 samples a packet
    assert abs(dominant_hz(pcm[4800:]) - 440) < 10
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 3000  # not silence


def test_silence_stays_silence() -> None:
    encoder, decoder = OpusEncoder(), OpusDecoder()
    pcm = b"".join(decoder.decode(p) for f in frames(bytes(FRAME_BYTES * 20)) for p in encoder.encode(f))
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() < 50


def test_encoder_refuses_a_frame_of_the_wrong_size() -> None:
    with pytest.raises(PcmError, match="960 bytes"):
        OpusEncoder().encode(b"\x00" * 100)


def test_tap_publishes_continuous_rtp_numbering() -> None:
    tap = PcmToOpusTap()
    got: list[RtpAudio] = []
    tap.subscribe(got.append)
    for f in frames(tone(300, 0.5)):
        tap.push(f, received_at=1.0)
    assert len(got) >= 23 and tap.packets == len(got)
    assert [p.sequence for p in got] == list(range(got[0].sequence, got[0].sequence + len(got)))
    assert all(b.timestamp - a.timestamp == RTP_FRAME for a, b in itertools.pairwise(got))
    assert all(p.received_at == 1.0 for p in got)
    tap.close()
    tap.push(frames(tone(300, 0.02))[0])
    assert tap.packets == len(got)  # closed: nothing more


def test_a_failing_subscriber_is_counted_not_raised() -> None:
    tap = PcmToOpusTap()

    def boom(_: RtpAudio) -> None:
        raise RuntimeError("boom")

    tap.subscribe(boom)
    for f in frames(tone(300, 0.1)):
        tap.push(f)
    assert tap.errors == tap.packets > 0


def test_sink_decodes_what_the_tap_encodes() -> None:
    delivered: list[bytes] = []
    sink = OpusToPcmSink(delivered.append)
    tap = PcmToOpusTap()
    tap.subscribe(sink.send)
    for f in frames(tone(600, 1.0)):
        tap.push(f)
    assert sink.packets_sent == tap.packets and sink.dropped == 0
    assert abs(dominant_hz(b"".join(delivered)[4800:]) - 600) < 10
    stats = sink.stats()
    assert stats["packets"] == tap.packets and stats["latency_ms"]["count"] == tap.packets


def test_sink_counts_garbage_and_closed_sends_as_dropped() -> None:
    delivered: list[bytes] = []
    sink = OpusToPcmSink(delivered.append)
    sink.send(RtpAudio(b"", 0, 1, False, 0.0))  # an empty payload is not an Opus packet
    assert sink.dropped == 1 and not delivered
    sink.close()
    sink.send(RtpAudio(b"\xf8\xff\xfe", 0, 2, False, 0.0))
    assert sink.dropped == 2 and not delivered and not sink.connected


def test_transcode_cost_reports_cpu_per_frame() -> None:
    cost = transcode_cost(frames=50)
    assert cost["encode_cpu_ms_per_frame"] > 0 and cost["decode_cpu_ms_per_frame"] > 0
    assert cost["core_percent_per_call"] > 0
    with pytest.raises(ValueError):
        transcode_cost(frames=1)

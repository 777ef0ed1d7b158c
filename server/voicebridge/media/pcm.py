"""Opus (RTP, 48 kHz clock) <-> PCM16 24 kHz mono: the transcoding that happens only where a WebSocket leg
meets a WebRTC leg.

The WebRTC side speaks Opus packets (``RtpAudio``, the pass-through relay's unit); the Realtime WebSocket
transport speaks base64 PCM16, 24 kHz, mono. Two adapters let the pass-through relay (bridge/audio.py) carry
a WebSocket leg unchanged, so listeners, recording and the human take-over work in mixed calls too:

* ``PcmToOpusTap`` looks like an ``InboundTap`` to the relay: it is fed one 20 ms PCM frame at a time (by
  the WebSocket leg's real-time pacer) and publishes each as an encoded Opus packet with continuous RTP
  sequence numbers and timestamps.
* ``OpusToPcmSink`` looks like an ``OutboundAudio``: each Opus packet handed to ``send`` is decoded, resampled
  to 24 kHz mono with av's resampler (libswresample) and delivered as PCM16 bytes.

They subclass the pass-through classes only for the relay's (nominal) types; neither touches aiortc.
``transcode_cost()`` measures what one call's transcoding costs, for `voicebridge bench`.
"""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext

from .passthrough import OPUS_CLOCK, InboundTap, OutboundAudio, OutboundStats, RtpAudio, latency_summary

PCM_RATE = 24000
FRAME_MS = 20
FRAME_SAMPLES = PCM_RATE * FRAME_MS // 1000  # 480 samples of 24 kHz mono
FRAME_BYTES = FRAME_SAMPLES * 2  # PCM16
RTP_FRAME = OPUS_CLOCK * FRAME_MS // 1000  # 960: the RTP clock step of one 20 ms Opus frame
SILENCE = bytes(FRAME_BYTES)
# Speech, mono, 32 kbit/s: espeak speech encoded at this rate, decoded and resampled to 16 kHz, was verified to be
# recognised word for word by a pocketsphinx grammar (the emulator's hearing).
BIT_RATE = 32000
_TB = fractions.Fraction(1, PCM_RATE)


class PcmError(ValueError):
    """PCM16 audio that is not what the WebSocket transport carries (odd byte count, wrong frame size)."""


class OpusEncoder:
    """PCM16 24 kHz mono, 20 ms at a time -> Opus packets (libopus takes 24 kHz input natively: no resampler)."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, AudioCodecContext)
        codec.bit_rate = BIT_RATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = PCM_RATE
        codec.time_base = _TB
        # voip: tuned for speech; frame_duration pins one packet per 20 ms frame.
        codec.options = {"application": "voip", "frame_duration": str(FRAME_MS)}
        self._codec = codec
        self._pts = 0

    def encode(self, frame: bytes) -> list[bytes]:
        """One 20 ms frame (960 bytes) in; usually one packet out (none while libopus fills its look-ahead)."""
        if len(frame) != FRAME_BYTES:
            raise PcmError(f"an Opus frame takes {FRAME_BYTES} bytes (20 ms of PCM16 24 kHz), got {len(frame)}")
        samples = np.frombuffer(frame, dtype="<i2").reshape(1, -1)
        f = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        f.sample_rate = PCM_RATE
        f.pts = self._pts
        f.time_base = _TB
        self._pts += FRAME_SAMPLES
        return [bytes(p) for p in self._codec.encode(f)]


class OpusDecoder:
    """Opus packets (any mode, mono or stereo) -> PCM16 24 kHz mono bytes, through av's resampler."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("opus", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)

    def decode(self, payload: bytes) -> bytes:
        """One packet in, its PCM out (the resampler keeps a few samples of history, so sizes vary slightly)."""
        if not payload:  # an empty av.Packet would flush (and end) the decoder
            raise PcmError("an empty Opus packet")
        out: list[bytes] = []
        for frame in self._codec.decode(av.Packet(payload)):
            for f in self._resampler.resample(frame):
                out.append(bytes(f.to_ndarray().astype("<i2").tobytes()))
        return b"".join(out)


class PcmToOpusTap(InboundTap):
    """A relay source fed PCM: each 20 ms frame pushed is encoded and published as an Opus ``RtpAudio``.

    Like ``InboundTap``, subscribers run synchronously and an exception in one is counted, never raised.
    """

    def __init__(self) -> None:  # no receiver: deliberately not InboundTap.__init__
        self.packets = 0
        self.bytes = 0
        self.ignored = 0
        self.errors = 0
        self.encode_s = 0.0  # CPU time spent in the encoder
        self._subs: tuple[Callable[[RtpAudio], None], ...] = ()
        self._encoder = OpusEncoder()
        self._seq = 0
        self._ts = 0
        self._closed = False

    def push(self, frame: bytes, received_at: float | None = None) -> None:
        """Encode one 20 ms frame; `received_at` (perf_counter) is when its audio reached the bridge."""
        if self._closed:
            return
        t0 = time.perf_counter()
        packets = self._encoder.encode(frame)
        self.encode_s += time.perf_counter() - t0
        for payload in packets:
            self._seq = (self._seq + 1) & 0xFFFF
            pkt = RtpAudio(payload, self._ts, self._seq, False, t0 if received_at is None else received_at)
            self._ts = (self._ts + RTP_FRAME) & 0xFFFFFFFF
            self.packets += 1
            self.bytes += len(payload)
            for fn in self._subs:
                try:
                    fn(pkt)
                except Exception:
                    self.errors += 1

    def close(self) -> None:
        self._closed = True
        self._subs = ()


class OpusToPcmSink(OutboundAudio):
    """A relay destination that decodes: ``send(packet)`` -> ``deliver(pcm16_24k_mono_bytes)``."""

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        super().__init__()
        self._deliver = deliver
        self._decoder = OpusDecoder()
        self.decode_s = 0.0  # CPU time spent decoding and resampling

    @property
    def connected(self) -> bool:
        return not self._closed

    def send(self, pkt: RtpAudio, source: str = "") -> None:
        """Decode and deliver one packet. Never raises (a bad packet is counted as dropped)."""
        if self._closed:
            self.dropped += 1
            return
        t0 = time.perf_counter()
        try:
            pcm = self._decoder.decode(pkt.payload)
        except (av.FFmpegError, ValueError):  # PcmError is a ValueError
            self.dropped += 1
            self.send_errors += 1
            return
        self.decode_s += time.perf_counter() - t0
        try:
            self._deliver(pcm)
        except Exception:
            self.dropped += 1
            self.send_errors += 1
            return
        now = time.perf_counter()
        self._latency.append(now - pkt.received_at)
        self.packets_sent += 1
        self.bytes_sent += len(pkt.payload)

    def stats(self) -> OutboundStats:
        out = super().stats()
        out["decode_ms"] = round(self.decode_s * 1000.0, 3)
        return out


def transcode_cost(frames: int = 500) -> dict[str, Any]:
    """CPU of the transcoding path for one call, measured on synthetic voiced audio (for `voicebridge bench`).

    Per 20 ms frame: encode (PCM16 24 kHz -> Opus) and decode + resample (Opus -> PCM16 24 kHz). A call has
    one frame per direction every 20 ms, so `core_percent_per_call` = (encode + decode) per frame / 20 ms.
    """
    if frames < 10:
        raise ValueError(f"transcode_cost needs at least 10 frames, got {frames}")
    t = np.arange(frames * FRAME_SAMPLES) / PCM_RATE
    # A vowel-ish signal with an envelope (pure silence would let libopus take its cheap path).
    wave = 6000 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    wave += 1500 * np.sin(2 * np.pi * 900 * t)
    pcm = wave.astype("<i2").tobytes()
    encoder, decoder = OpusEncoder(), OpusDecoder()
    packets: list[bytes] = []
    enc_lat: list[float] = []
    c0 = time.process_time()
    for i in range(frames):
        w0 = time.perf_counter()
        packets.extend(encoder.encode(pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]))
        enc_lat.append(time.perf_counter() - w0)
    c1 = time.process_time()
    dec_lat: list[float] = []
    for p in packets:
        w0 = time.perf_counter()
        decoder.decode(p)
        dec_lat.append(time.perf_counter() - w0)
    c2 = time.process_time()
    enc_ms = (c1 - c0) * 1000.0 / frames
    dec_ms = (c2 - c1) * 1000.0 / max(1, len(packets))
    return {
        "frames": frames,
        "encode_cpu_ms_per_frame": round(enc_ms, 4),
        "decode_cpu_ms_per_frame": round(dec_ms, 4),
        "core_percent_per_call": round((enc_ms + dec_ms) / FRAME_MS * 100.0, 2),
        "encode_latency_ms": latency_summary(enc_lat),
        "decode_latency_ms": latency_summary(dec_lat),
    }

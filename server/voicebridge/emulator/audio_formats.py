"""The audio formats of a WebSocket session (`audio.input.format`, `audio.output.format`, or a response's
`audio.output.format`): PCM16 24 kHz mono, and G.711 at 8 kHz as telephony bridges send it, μ-law
(`audio/pcmu`) and A-law (`audio/pcma`), one byte a sample.

G.711 goes through FFmpeg's `pcm_mulaw` / `pcm_alaw` codecs via PyAV. Why that one: PyAV is already the
emulator's Opus codec and resampler (no new dependency); FFmpeg is maintained and used by countless telephony
stacks; its decoder is the G.711 table bit for bit (identical to Python's `audioop`, which is deprecated since
3.11 and gone in 3.13, so not something to build on), and its encoder picks the nearest code (audioop's
reference encoder truncates: FFmpeg differs on <1.5 % of inputs, always with less error). A hand-written numpy
companding would be one more thing to get subtly wrong (the unit test keeps one, as the independent
reference). G.711 is stateless sample by sample, so a fresh codec context per chunk is exact (~30 us / 20 ms).

A WebRTC session ignores these formats: its audio is Opus on the track, as on the real API.
"""

from __future__ import annotations

from typing import Any, Literal

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

FormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
PCM: FormatType = "audio/pcm"
RATES: dict[FormatType, int] = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
_G711: dict[FormatType, str] = {"audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}


class FormatError(ValueError):
    """Audio bytes that are not whole samples of the session's format."""


def format_type(fmt: Any) -> FormatType:
    """The `type` of a format object as the session holds it (`{"type": "audio/pcmu"}`); PCM when unset."""
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in RATES:
        return kind  # type: ignore[no-any-return]
    return PCM


def decode(kind: FormatType, raw: bytes) -> npt.NDArray[np.int16]:
    """Appended audio -> PCM16 mono samples at RATES[kind]."""
    if kind == PCM:
        if len(raw) % 2:
            raise FormatError(f"{len(raw)} bytes is not whole PCM16 samples (2 bytes each)")
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if not raw:
        return np.zeros(0, dtype=np.int16)
    codec = _codec(kind, "r")
    frames = [f.to_ndarray().reshape(-1) for f in codec.decode(av.Packet(raw))]
    return np.concatenate(frames).astype(np.int16) if frames else np.zeros(0, dtype=np.int16)


def encode(kind: FormatType, pcm: npt.NDArray[np.int16]) -> bytes:
    """PCM16 mono samples at RATES[kind] -> the bytes a `response.output_audio.delta` carries."""
    if kind == PCM:
        return pcm.astype("<i2").tobytes()
    if not len(pcm):
        return b""
    codec = _codec(kind, "w")
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16",
                                       layout="mono")  # fmt: skip
    frame.sample_rate = RATES[kind]
    return b"".join(bytes(p) for p in codec.encode(frame))


def _codec(kind: FormatType, mode: Literal["r", "w"]) -> AudioCodecContext:
    codec = av.CodecContext.create(_G711[kind], mode)
    assert isinstance(codec, AudioCodecContext)
    codec.sample_rate = RATES[kind]
    codec.layout = "mono"
    if mode == "w":
        codec.format = "s16"
    return codec

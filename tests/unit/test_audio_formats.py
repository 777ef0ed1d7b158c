"""G.711 in the emulator (audio_formats.py) against an independent numpy implementation of the ITU-T G.711
reference algorithm (the one in Sun's g711.c and CPython's audioop), over every code and every PCM16 value."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from voicebridge.emulator import audio_formats as af

pytestmark = pytest.mark.unit
ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = np.arange(256, dtype=np.uint8)


def ulaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    u = (~codes.astype(np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def alaw_decode(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    a = codes.astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    v = pcm.astype(np.int32) >> 2  # 14-bit
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + (0x84 >> 2)
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), v)
    u = np.where(seg >= 8, 0x7F, (seg << 4) | ((v >> (seg + 1)) & 0xF))
    return (u ^ mask).astype(np.uint8)


def alaw_encode(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    v = pcm.astype(np.int32) >> 3  # 13-bit
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), v)
    a = np.where(seg >= 8, 0x7F, (seg << 4) | np.where(seg < 2, (v >> 1) & 0xF, (v >> np.maximum(seg, 1)) & 0xF))
    return (a ^ mask).astype(np.uint8)


REFERENCE = {"audio/pcmu": (ulaw_encode, ulaw_decode), "audio/pcma": (alaw_encode, alaw_decode)}


@pytest.mark.parametrize("kind", ["audio/pcmu", "audio/pcma"])
def test_g711_decodes_every_code_as_the_reference(kind: af.FormatType) -> None:
    _, decode = REFERENCE[kind]
    assert np.array_equal(af.decode(kind, ALL_CODES.tobytes()), decode(ALL_CODES))


@pytest.mark.parametrize("kind", ["audio/pcmu", "audio/pcma"])
def test_g711_encodes_every_sample_at_least_as_closely_as_the_reference(kind: af.FormatType) -> None:
    encode, decode = REFERENCE[kind]
    ours = np.frombuffer(af.encode(kind, ALL_PCM), dtype=np.uint8)
    assert len(ours) == len(ALL_PCM)  # one byte a sample
    ours_err = np.abs(decode(ours).astype(np.int32) - ALL_PCM)
    ref_err = np.abs(decode(encode(ALL_PCM)).astype(np.int32) - ALL_PCM)
    # FFmpeg rounds to the nearest code where the reference truncates: never worse than one 13/14-bit step.
    assert (ours_err <= ref_err + 8).all()
    assert (ours == encode(ALL_PCM)).mean() > 0.98


@pytest.mark.parametrize("kind", ["audio/pcm", "audio/pcmu", "audio/pcma"])
def test_speech_like_audio_survives_a_round_trip(kind: af.FormatType) -> None:
    t = np.arange(af.RATES[kind]) / af.RATES[kind]
    pcm = (9000 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.int16)
    back = af.decode(kind, af.encode(kind, pcm))
    noise = np.sum((back.astype(np.float64) - pcm) ** 2) + 1e-9
    assert 10 * np.log10(np.sum(pcm.astype(np.float64) ** 2) / noise) > 30  # G.711 is ~38 dB SNR


def test_formats_and_bad_input() -> None:
    assert af.format_type({"type": "audio/pcmu"}) == "audio/pcmu"
    assert af.format_type({"type": "audio/pcm", "rate": 24000}) == "audio/pcm"
    assert af.format_type(None) == "audio/pcm"
    assert af.RATES["audio/pcma"] == 8000
    assert len(af.decode("audio/pcmu", b"")) == 0 and af.encode("audio/pcma", np.zeros(0, np.int16)) == b""
    with pytest.raises(af.FormatError, match="3 bytes"):
        af.decode("audio/pcm", b"abc")
    assert len(af.decode("audio/pcmu", b"abc")) == 3  # any byte count is whole G.711 samples

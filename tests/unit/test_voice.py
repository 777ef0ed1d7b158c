"""The emulator's mouth: real espeak-ng speech, real libopus packets, decoded by a real Opus decoder."""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest

from voicebridge.emulator import voice as voice_mod
from voicebridge.emulator.voice import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    Utterance,
    Voice,
    VoiceError,
    parse_wav,
    synthesize_wav,
)

pytestmark = pytest.mark.unit

LINE = "Thank you for calling the help desk, how can I help you today?"
VOICE = Voice()  # shared across tests: each line is synthesised once per test run, as in the emulator


def decode(packets: tuple[bytes, ...] | list[bytes]) -> list[av.AudioFrame]:
    """Decode Opus payloads the way aiortc's receiver does (s16, stereo, 48 kHz)."""
    codec = av.CodecContext.create("libopus", "r")
    codec.format = "s16"
    codec.layout = "stereo"
    codec.sample_rate = SAMPLE_RATE
    frames: list[av.AudioFrame] = []
    for p in packets:
        frames.extend(codec.decode(av.Packet(p)))
    return frames


async def test_speak_gives_20ms_opus_packets_of_the_whole_line() -> None:
    wav = await synthesize_wav(LINE)
    pcm, rate = parse_wav(wav)
    spoken_ms = len(pcm) * 1000 / rate
    utterance = await VOICE.speak(LINE)
    assert utterance.text == LINE
    assert utterance.duration_ms == len(utterance.packets) * FRAME_MS
    frames = decode(utterance.packets)
    assert len(frames) == len(utterance.packets)  # one packet, one frame
    assert {f.samples for f in frames} == {FRAME_SAMPLES}
    assert {(f.sample_rate, f.layout.name) for f in frames} == {(SAMPLE_RATE, "stereo")}
    # The whole line, padded to whole frames plus the flushed look-ahead: never shorter, barely longer.
    assert spoken_ms <= utterance.duration_ms <= spoken_ms + 2 * FRAME_MS
    audio = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float64)
    assert np.sqrt(np.mean(audio**2)) > 500  # speech, not silence (espeak peaks near full scale)


async def test_decoded_speech_follows_the_original_loudness() -> None:
    """The packets carry this line's audio: 20 ms loudness envelopes of input and output correlate."""
    pcm, rate = parse_wav(await synthesize_wav(LINE))
    utterance = await VOICE.speak(LINE)
    out = np.concatenate([f.to_ndarray().reshape(-1)[::2] for f in decode(utterance.packets)]).astype(float)
    src = voice_mod.resample_to_48k_stereo(pcm, rate)[::2].astype(float)
    n = min(len(src), len(out)) // FRAME_SAMPLES * FRAME_SAMPLES

    def envelope(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.sqrt(np.mean(x[:n].reshape(-1, FRAME_SAMPLES) ** 2, axis=1)))

    assert np.corrcoef(envelope(src), envelope(out))[0, 1] > 0.9


async def test_cache_hit_returns_the_same_utterance() -> None:
    first = await VOICE.speak(LINE)
    assert await VOICE.speak(LINE) is first
    assert VOICE.cached(LINE) is first
    faster = await VOICE.speak(LINE, speed=200)
    assert faster is not first
    assert faster.duration_ms < first.duration_ms  # speed reaches espeak


async def test_concurrent_calls_share_one_synthesis() -> None:
    voice = Voice()
    results = await asyncio.gather(*(voice.speak("Shared line for three callers.") for _ in range(3)))
    assert results[0] is results[1] is results[2]


async def test_one_waiter_cancelled_does_not_cancel_the_others() -> None:
    voice = Voice()
    text = "Somebody hung up while I was thinking."
    quitter = asyncio.ensure_future(voice.speak(text))
    stayer = asyncio.ensure_future(voice.speak(text))
    await asyncio.sleep(0)  # let both start waiting on the one synthesis
    quitter.cancel()
    utterance = await asyncio.wait_for(stayer, 30)
    assert isinstance(utterance, Utterance) and utterance.packets
    assert voice.cached(text) is utterance


async def test_least_recently_used_line_is_evicted() -> None:
    voice = Voice(max_cached=2)
    a = await voice.speak("one")
    await voice.speak("two")
    assert await voice.speak("one") is a  # "one" is now the most recent
    await voice.speak("three")
    assert voice.cached("two") is None
    assert voice.cached("one") is a and voice.cached("three") is not None


def test_silence_packet_decodes_to_digital_silence() -> None:
    packet = VOICE.silence_packet
    assert VOICE.silence_packet is packet  # encoded once
    frames = decode([packet] * 3)
    assert [f.samples for f in frames] == [FRAME_SAMPLES] * 3
    assert all(not f.to_ndarray().any() for f in frames)


@pytest.mark.parametrize(
    ("text", "espeak_voice", "speed", "complaint"),
    [
        ("", "en-us", 165, "empty"),
        ("   ", "en-us", 165, "empty"),
        ("x" * 5000, "en-us", 165, "limit"),
        ("hello", "en-us; rm -rf /", 165, "not a voice name"),
        ("hello", "en-us", 10, "speed"),
        ("hello", "en-us", 1000, "speed"),
    ],
)
async def test_malformed_requests_are_refused_by_name(
    text: str, espeak_voice: str, speed: int, complaint: str
) -> None:
    with pytest.raises(VoiceError, match=complaint):
        await Voice().speak(text, espeak_voice, speed)


async def test_unknown_espeak_voice_names_the_voice_and_is_not_cached() -> None:
    voice = Voice()
    for _ in range(2):  # a failure is not cached: the second call runs espeak again and fails the same way
        with pytest.raises(VoiceError, match="nosuchvoice"):
            await voice.speak("hello", espeak_voice="nosuchvoice")
    assert voice.cached("hello", "nosuchvoice") is None


async def test_missing_espeak_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voice_mod, "ESPEAK", "espeak-ng-not-installed-here")
    with pytest.raises(VoiceError, match="apt-get install espeak-ng"):
        await Voice().speak("hello")


def test_parse_wav_refuses_what_is_not_a_wav() -> None:
    with pytest.raises(VoiceError, match="did not write a WAV"):
        parse_wav(b"Error: something went wrong\n")
    with pytest.raises(VoiceError, match="no data chunk"):
        parse_wav(b"RIFF" + b"\0" * 4 + b"WAVE" + b"LIST" + (28).to_bytes(4, "little") + b"\0" * 28)


async def test_measure_speech_synthesis_cost() -> None:
    """Not asserted: printed for the report (run with -s)."""
    voice = Voice()
    text = "I am sorry, your order four two one seven is late. I have issued a refund of forty two dollars."
    t = time.perf_counter()
    u = await voice.speak(text)
    took = time.perf_counter() - t
    print(f"\nespeak+resample+encode: {took * 1000:.0f} ms for {u.duration_ms} ms of speech "
          f"= {took * 1000 / (u.duration_ms / 1000):.0f} ms per second of speech")  # fmt: skip
    assert u.duration_ms > 3000

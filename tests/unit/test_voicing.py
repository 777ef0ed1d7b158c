"""A tone is not speech: the server VAD against generated beeps, DTMF, clicks and noise, and espeak speech.

Everything goes through the Ear as a session hears it, most of it through Opus first (as it arrives over WebRTC).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from tests.unit.test_hearing import VOICE, Turns, decode
from voicebridge.emulator.hearing import VadSettings
from voicebridge.emulator.voice import encode_pcm48k_stereo
from voicebridge.emulator.voicing import SpeechJudge, level_db, periodicity, tone_share

pytestmark = pytest.mark.unit

RATE = 48000
Pcm = npt.NDArray[np.int16]


def silence(ms: int) -> Pcm:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


def tone(freqs: Sequence[float], ms: int, dbfs: float = -10.0) -> Pcm:
    t = np.arange(RATE * ms // 1000) / RATE
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    return (x * 32767 * 10 ** (dbfs / 20)).astype(np.int16)


def chromium_beeps(seconds: int) -> Pcm:
    """Chromium's fake microphone: a 20 ms, 400 Hz square wave between silence and full scale (unipolar, as its
    8-bit 128/255 buffer), every 500 ms."""
    out = silence(seconds * 1000)
    period = RATE // 400
    t = np.arange(RATE * 20 // 1000)
    beep = np.where(t % period < period // 2, 32767, 0).astype(np.int16)
    for start in range(RATE // 10, len(out) - len(beep), RATE // 2):
        out[start : start + len(beep)] = beep
    return out


DTMF = {"1": (697, 1209), "5": (770, 1336), "9": (852, 1477), "#": (941, 1477), "0": (941, 1336)}


def dtmf(digits: str, on_ms: int = 100, off_ms: int = 100) -> Pcm:
    return np.concatenate([np.concatenate([tone(DTMF[d], on_ms), silence(off_ms)]) for d in digits])


def clicks(seconds: int, every_ms: int = 300, seed: int = 3) -> Pcm:
    rng = np.random.default_rng(seed)
    out = silence(seconds * 1000)
    for start in range(RATE // 10, len(out) - 500, RATE * every_ms // 1000):
        n = int(rng.integers(48, 480))  # 1 to 10 ms: a click, a pop, a tap on the microphone
        out[start : start + n] = rng.integers(-25000, 25000, n)
    return out


def through_opus(pcm: Pcm) -> list[object]:
    """Mono 48 kHz -> Opus packets -> the decoded frames aiortc hands the session."""
    return list(decode(encode_pcm48k_stereo(np.repeat(pcm, 2))))


def hear(pcm: Pcm, vad: VadSettings | None = None, opus: bool = True) -> Turns:
    turns = Turns()
    ear = turns.ear(vad)
    if opus:
        for frame in through_opus(np.concatenate([pcm, silence(1000)])):
            ear.feed(frame)  # type: ignore[arg-type]
    else:
        ear.feed_pcm16(np.concatenate([pcm, silence(1000)]), RATE)
    return turns


async def speech(text: str, espeak_voice: str = "en-us", speed: int = 165) -> Pcm:
    """espeak's line as mono 48 kHz PCM (decoded from the cached Opus packets)."""
    line = await VOICE.speak(text, espeak_voice, speed)
    return np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in decode(line.packets)]).astype(np.int16)


@pytest.mark.parametrize("opus", [True, False], ids=["opus", "raw"])
def test_chromium_fake_microphone_beeps_never_start_a_turn(opus: bool) -> None:
    turns = hear(chromium_beeps(6), opus=opus)
    assert turns.started == []


@pytest.mark.parametrize("freq", [200, 400, 1000, 2500])
def test_a_steady_tone_is_not_speech(freq: int) -> None:
    assert hear(np.concatenate([silence(300), tone([freq], 2000)])).started == []


@pytest.mark.parametrize("ms", [20, 60, 100, 150, 300])
def test_tone_bursts_do_not_start_a_turn(ms: int) -> None:
    bursts = np.concatenate([np.concatenate([tone([1000], ms), silence(250)]) for _ in range(5)])
    assert hear(bursts).started == []


def test_dtmf_digits_and_a_held_key_are_not_speech() -> None:
    assert hear(dtmf("159#0" * 2)).started == []
    assert hear(dtmf("5", on_ms=1500)).started == []


def test_clicks_and_hiss_are_not_speech() -> None:
    assert hear(clicks(4)).started == []
    hiss = (np.random.default_rng(5).standard_normal(RATE * 2) * 3000).astype(np.int16)
    assert hear(hiss).started == []


VOICES = [("en-us", 165), ("en-us+f3", 175), ("en-gb", 150), ("en-us+f4", 140), ("en-us+m3", 210)]


@pytest.mark.parametrize(("espeak_voice", "speed"), VOICES)
async def test_espeak_speech_starts_and_ends_one_turn(espeak_voice: str, speed: int) -> None:
    pcm = await speech("Hello, my order has not arrived. The order number is four two one seven.", espeak_voice, speed)
    # espeak pauses up to ~0.6 s between sentences below 150 words a minute: a real VAD ends a 500 ms turn there too
    turns = hear(np.concatenate([silence(500), pcm]), VadSettings(silence_duration_ms=800))
    assert len(turns.started) == 1 and len(turns.stopped) == 1
    assert 500 - 300 <= turns.started[0] <= 500 - 300 + 200  # backdated by the prefix padding to the onset


async def test_speech_among_beeps_is_one_turn_and_the_beeps_do_not_hold_it_open() -> None:
    """The fake microphone keeps beeping while someone talks and after: one turn, and it ends."""
    pcm = await speech("No, that is all. Thank you so much, goodbye.")
    beeps = chromium_beeps(6)
    mixed = beeps.astype(np.int32)
    mixed[RATE : RATE + len(pcm)] += pcm
    turns = hear(np.clip(mixed, -32768, 32767).astype(np.int16))
    assert len(turns.started) == 1 and len(turns.stopped) == 1
    end_ms = turns.stopped[0][0]
    assert end_ms < 1000 + len(pcm) * 1000 // RATE + 500 + 300  # the silence after the line ends the turn


async def test_threshold_asks_for_louder_speech() -> None:
    pcm = await speech("Thank you for calling the help desk, how can I help you today?")
    quiet = (pcm.astype(np.float64) * 10 ** (-30 / 20)).astype(np.int16)  # 30 dB down
    assert len(hear(np.concatenate([silence(300), quiet]), VadSettings(threshold=0.1)).started) == 1
    assert hear(np.concatenate([silence(300), quiet]), VadSettings(threshold=0.9)).started == []
    assert len(hear(np.concatenate([silence(300), pcm]), VadSettings(threshold=0.9)).started) == 1


def test_the_measures_on_their_own() -> None:
    """The judge's three measures on textbook signals (16 kHz)."""
    t = np.arange(1920) / 16000
    sine = np.sin(2 * np.pi * 440 * t) * 8000
    noise = np.random.default_rng(1).standard_normal(1920) * 8000
    pulses = np.zeros(1920)
    pulses[::128] = 20000  # a 125 Hz pulse train: rich in harmonics, like a glottal source
    assert tone_share(sine) > 0.97 and tone_share(noise) < 0.3 and tone_share(pulses) < 0.5
    assert periodicity(sine[-640:]) > 0.9 and periodicity(pulses[-640:]) > 0.9 and periodicity(noise[-640:]) < 0.3
    full = (np.sin(2 * np.pi * 1000 * t[:320]) * 32767).astype(np.int16)
    assert -4.0 < level_db(full) < -2.0
    assert level_db(np.full(320, 20000, dtype=np.int16)) < -60  # DC is not in the speech band
    judge = SpeechJudge(0.5)
    verdicts = [judge.judge(np.zeros(320, dtype=np.int16)) for _ in range(3)]
    assert not any(v.active or v.onset for v in verdicts)


async def test_a_beep_as_the_silence_runs_out_neither_ends_the_turn_late_nor_opens_another() -> None:
    pcm = await speech("No, that is all. Thank you so much, goodbye.")
    beep = chromium_beeps(1)[RATE // 10 : RATE // 10 + RATE // 50]
    for gap_ms in (440, 460, 480, 500, 520):
        turns = Turns()
        ear = turns.ear()
        audio = np.concatenate([silence(300), pcm, silence(gap_ms), beep, silence(1500)])
        for frame in through_opus(audio):
            ear.feed(frame)  # type: ignore[arg-type]
        assert len(turns.started) == 1 and len(turns.stopped) == 1, gap_ms
        assert turns.stopped[0][0] - ear.speech_end_ms == 500, gap_ms  # audio_end_ms: speech end + silence
        assert len(turns.stopped[0][1]) == 16 * (turns.stopped[0][0] - turns.started[0])

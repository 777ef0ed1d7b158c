"""The emulator's ears on real audio: espeak speech -> libopus -> Opus decode -> VAD -> grammar recognizer."""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import numpy.typing as npt
import pytest

from voicebridge.emulator.hearing import (
    Ear,
    HearingError,
    Recognizer,
    VadSettings,
    missing_words,
    recognizer_for,
    unexplained,
)
from voicebridge.emulator.voice import FRAME_MS, SAMPLE_RATE, Voice
from voicebridge.media.impair import ImpairStage, parse_impairment
from voicebridge.media.passthrough import RtpAudio
from voicebridge.scenarios import builtin_names, load_scenario, normalize_phrase

pytestmark = pytest.mark.unit

GREETING = "Thank you for calling the help desk, how can I help you today?"
ORDER = "Hello, my order has not arrived. The order number is four two one seven."
BYE = "No, that is all. Thank you so much, goodbye."
PHRASES = (GREETING, ORDER, BYE)
VOICE = Voice()


def decode(packets: Sequence[bytes]) -> list[av.AudioFrame]:
    """Opus payloads -> the frames aiortc's receiver would hand a track consumer (s16 stereo 48 kHz)."""
    codec = av.CodecContext.create("libopus", "r")
    codec.format = "s16"
    codec.layout = "stereo"
    codec.sample_rate = SAMPLE_RATE
    frames: list[av.AudioFrame] = []
    for p in packets:
        frames.extend(codec.decode(av.Packet(p)))
    return frames


def silence(ms: int) -> list[bytes]:
    return [VOICE.silence_packet] * (ms // FRAME_MS)


def pcm16k(frames: list[av.AudioFrame]) -> npt.NDArray[np.int16]:
    """The decoded frames as 16 kHz mono, the recognizer's input."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    out = [o.to_ndarray().reshape(-1) for f in frames for o in resampler.resample(f)]
    return np.concatenate(out).astype(np.int16)


class Turns:
    """Records an Ear's callbacks."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.stopped: list[tuple[int, npt.NDArray[np.int16]]] = []

    def ear(self, vad: VadSettings | None = None) -> Ear:
        return Ear(vad or VadSettings(), self.started.append, lambda ms, pcm: self.stopped.append((ms, pcm)))


async def test_ear_hears_one_turn_with_sane_times() -> None:
    line = await VOICE.speak(GREETING)
    turns = Turns()
    ear = turns.ear(VadSettings(prefix_padding_ms=300, silence_duration_ms=500))
    for frame in decode(silence(1000) + list(line.packets) + silence(1500)):
        ear.feed(frame)
    fed_ms = 1000 + line.duration_ms + 1500
    assert fed_ms - FRAME_MS <= ear.audio_ms <= fed_ms  # the resampler holds back ~1 ms of filter history
    assert len(turns.started) == 1 and len(turns.stopped) == 1
    start, (end, pcm) = turns.started[0], turns.stopped[0]
    # Speech begins in the line (espeak leads with a little silence); the start is backdated by the padding.
    assert 1000 - 300 <= start <= 1000 - 300 + 200
    # audio_end_ms, as the SDK defines it, includes the closing silence; the speech ended before it.
    assert end - 500 - FRAME_MS <= ear.speech_end_ms <= end - 500
    assert 1000 + line.duration_ms - 400 <= ear.speech_end_ms <= 1000 + line.duration_ms
    assert len(pcm) == (end - start) * 16  # the turn's PCM runs from audio_start_ms to audio_end_ms
    assert not ear.speaking


async def test_ear_tells_how_long_the_turn_has_been_heard_from_its_onset_frame_by_frame() -> None:
    line = await VOICE.speak(GREETING)
    turns = Turns()
    ear = turns.ear(VadSettings(prefix_padding_ms=300, silence_duration_ms=500))
    heard: list[tuple[int, int]] = []  # (ms since the onset, the clock then)
    ear.on_speech_ms = lambda ms: heard.append((ms, ear.audio_ms))
    for frame in decode(silence(1000) + list(line.packets) + silence(1500)):
        ear.feed(frame)
    assert len(turns.started) == 1 and len(turns.stopped) == 1
    onset = turns.started[0] + 300  # audio_start_ms is backdated by the padding
    first_ms, first_clock = heard[0]
    assert first_ms >= 120 and first_clock - first_ms == onset  # at the start: the start window's speech, heard
    assert [ms for ms, _ in heard] == list(range(first_ms, first_ms + FRAME_MS * len(heard), FRAME_MS))
    assert all(clock - ms == onset for ms, clock in heard)  # always measured from the onset
    assert heard[-1][1] < turns.stopped[0][0]  # never after the turn ended


@pytest.mark.parametrize("threshold", [0.0, 1.0])
async def test_ear_hears_the_turn_at_every_aggressiveness(threshold: float) -> None:
    line = await VOICE.speak(BYE)
    turns = Turns()
    ear = turns.ear(VadSettings(threshold=threshold, prefix_padding_ms=0))
    for frame in decode(silence(500) + list(line.packets) + silence(800)):
        ear.feed(frame)
    assert len(turns.started) == 1 and len(turns.stopped) == 1
    assert 500 <= turns.started[0] <= 500 + 200  # no padding: the start is where speech begins


async def test_ear_hears_two_turns_and_reset_restarts_the_clock() -> None:
    a, b = await VOICE.speak(GREETING), await VOICE.speak(BYE)
    turns = Turns()
    ear = turns.ear()
    for frame in decode(silence(400) + list(a.packets) + silence(1000) + list(b.packets) + silence(1000)):
        ear.feed(frame)
    assert len(turns.started) == 2 and len(turns.stopped) == 2
    assert turns.started[0] < turns.stopped[0][0] < turns.started[1] < turns.stopped[1][0]
    ear.reset()
    assert ear.audio_ms == 0 and not ear.speaking


async def test_ear_is_silent_on_silence_and_short_of_silence_duration() -> None:
    line = await VOICE.speak(GREETING)
    turns = Turns()
    ear = turns.ear(VadSettings(silence_duration_ms=2000))
    for frame in decode(silence(2000) + list(line.packets) + silence(1000)):
        ear.feed(frame)
    # 1 s of trailing silence is less than the 2 s this session asked for: the turn is still open.
    assert len(turns.started) == 1 and turns.stopped == []
    assert ear.speaking


async def test_feed_pcm16_at_24khz_hears_the_same_turn() -> None:
    line = await VOICE.speak(GREETING)
    frames = decode(silence(600) + list(line.packets) + silence(1000))
    resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
    pcm24 = np.concatenate([o.to_ndarray().reshape(-1) for f in frames for o in resampler.resample(f)])
    by_frame, by_pcm = Turns(), Turns()
    ear_frames, ear_pcm = by_frame.ear(), by_pcm.ear()
    for frame in frames:
        ear_frames.feed(frame)
    for chunk in np.array_split(pcm24.astype(np.int16), 137):  # odd chunk sizes, as a WebSocket client sends
        ear_pcm.feed_pcm16(chunk, 24000)
    assert len(by_pcm.started) == 1 and len(by_pcm.stopped) == 1
    assert abs(by_pcm.started[0] - by_frame.started[0]) <= 2 * FRAME_MS
    assert abs(by_pcm.stopped[0][0] - by_frame.stopped[0][0]) <= 2 * FRAME_MS


def test_ear_refuses_bad_input_by_name() -> None:
    ear = Turns().ear()
    with pytest.raises(HearingError, match="int16"):
        ear.feed_pcm16(np.zeros(320, dtype=np.float32), 16000)
    with pytest.raises(HearingError, match="sample rate"):
        ear.feed_pcm16(np.zeros(320, dtype=np.int16), 4000)
    with pytest.raises(HearingError, match="threshold"):
        VadSettings(threshold=1.5)
    with pytest.raises(HearingError, match="silence_duration_ms"):
        VadSettings(silence_duration_ms=0)
    with pytest.raises(HearingError, match="prefix_padding_ms"):
        VadSettings(prefix_padding_ms=-1)
    assert [VadSettings(threshold=t).aggressiveness for t in (0.0, 0.3, 0.5, 0.8, 1.0)] == [0, 1, 2, 3, 3]


async def test_recognizer_hears_the_exact_phrase_through_opus() -> None:
    line = await VOICE.speak(GREETING)
    recognizer = recognizer_for(PHRASES)
    heard = recognizer.transcribe(pcm16k(decode(silence(300) + list(line.packets) + silence(300))))
    assert heard == normalize_phrase(GREETING)


async def test_recognizer_hears_two_lines_back_to_back_as_their_concatenation() -> None:
    a, b = await VOICE.speak(ORDER), await VOICE.speak(BYE, speed=170)
    heard = recognizer_for(PHRASES).transcribe(pcm16k(decode(list(a.packets) + list(b.packets))))
    assert heard == f"{normalize_phrase(ORDER)} {normalize_phrase(BYE)}"


async def test_what_the_ear_kept_is_what_the_recognizer_hears() -> None:
    line = await VOICE.speak(ORDER)
    turns = Turns()
    ear = turns.ear()
    for frame in decode(silence(800) + list(line.packets) + silence(800)):
        ear.feed(frame)
    assert len(turns.stopped) == 1
    assert recognizer_for(PHRASES).transcribe(turns.stopped[0][1]) == normalize_phrase(ORDER)


@pytest.mark.parametrize(
    "text",
    ["The weather is lovely in Paris this time of year.", "I would like a refund please", "Hello, my order"],
)
async def test_speech_outside_the_grammar_is_not_heard(text: str) -> None:
    """Other sentences, and a phrase cut short (barge-in), give no hypothesis rather than a wrong phrase."""
    line = await VOICE.speak(text)
    assert recognizer_for(PHRASES).transcribe(pcm16k(decode(line.packets))) is None


async def test_half_a_phrase_is_not_heard() -> None:
    line = await VOICE.speak(GREETING)
    half = line.packets[: len(line.packets) // 2]
    assert recognizer_for(PHRASES).transcribe(pcm16k(decode(half))) is None


def test_noise_and_silence_are_not_heard_as_phrases() -> None:
    recognizer = recognizer_for(PHRASES)
    noise = (np.random.default_rng(7).standard_normal(3 * 16000) * 3000).astype(np.int16)
    assert recognizer.transcribe(noise) is None
    assert recognizer.transcribe(np.zeros(3 * 16000, dtype=np.int16)) is None
    assert recognizer.transcribe(np.zeros(10, dtype=np.int16)) is None


async def test_recognizer_is_safe_from_several_threads() -> None:
    a, b = await VOICE.speak(GREETING), await VOICE.speak(BYE)
    pa, pb = pcm16k(decode(a.packets)), pcm16k(decode(b.packets))
    recognizer = recognizer_for(PHRASES)
    with ThreadPoolExecutor(4) as pool:
        heard = list(pool.map(recognizer.transcribe, [pa, pb] * 4))
    assert heard == [normalize_phrase(GREETING), normalize_phrase(BYE)] * 4


def test_missing_words_finds_a_made_up_word_and_the_recognizer_names_it() -> None:
    assert missing_words(["Hello there, Blorptastic friend!", "zyxxyq"]) == ["blorptastic", "zyxxyq"]
    assert missing_words(PHRASES) == []
    with pytest.raises(HearingError, match="'blorptastic'"):
        Recognizer(["hello blorptastic world"])
    with pytest.raises(HearingError, match="at least one phrase"):
        Recognizer(["...", ""])
    with pytest.raises(HearingError, match="one string"):
        Recognizer("hello world")


def test_recognizer_for_is_cached_per_phrase_set() -> None:
    first = recognizer_for(PHRASES)
    assert recognizer_for(list(reversed(PHRASES))) is first  # order and punctuation do not matter
    assert recognizer_for([normalize_phrase(p) for p in PHRASES]) is first
    assert recognizer_for(PHRASES[:2]) is not first


def test_every_word_of_the_builtin_scenario_is_in_the_dictionary() -> None:
    """Both personas hear each other's `say` lines, so every `hear` and `say` word must be recognisable."""
    scenario = load_scenario("late_order")
    lines = []
    for persona in (scenario.caller, scenario.cs):
        for rule in persona.script:
            lines += [rule.hear or "", re.sub(r"\{[^}]*\}", " ", rule.say or "")]  # {tool.field} filled later
    assert len([line for line in lines if line]) >= 8
    assert missing_words(lines) == []


async def test_measure_hearing_costs() -> None:
    """Not asserted: printed for the report (run with -s)."""
    line = await VOICE.speak(ORDER)
    frames = decode(silence(1000) + list(line.packets) + silence(1000))
    ear = Turns().ear()
    t = time.perf_counter()
    for frame in frames:
        ear.feed(frame)
    feed_us = (time.perf_counter() - t) / len(frames) * 1e6
    t = time.perf_counter()
    recognizer = Recognizer([*PHRASES, "one more phrase to make a new grammar"])
    load_s = time.perf_counter() - t
    pcm = pcm16k(frames)
    t = time.perf_counter()
    heard = recognizer.transcribe(pcm)
    took = time.perf_counter() - t
    print(f"\nEar.feed: {feed_us:.0f} us per 20 ms frame; Recognizer load {load_s * 1000:.0f} ms; "
          f"transcribe {took * 1000:.0f} ms for {len(pcm) / 16:.0f} ms of audio")  # fmt: skip
    assert heard == normalize_phrase(ORDER)


def lossy(packets: Sequence[bytes], seed: int) -> list[tuple[int, bytes]]:
    """(sequence, payload) in arrival order after the lab's `--impair lossy` stage (media/impair.py: 10 % loss,
    bursts, 40 ms delay with 20 ms of jitter, 1 % duplicates), on a virtual clock."""
    events: list[tuple[float, int, Callable[[], None]]] = []
    order = itertools.count()
    now = [0.0]
    arrived: list[tuple[int, bytes]] = []

    def schedule(delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(events, (now[0] + delay, next(order), fn))

    def until(t: float) -> None:
        while events and events[0][0] <= t:
            now[0], _, fn = heapq.heappop(events)
            fn()
        now[0] = t

    stage = ImpairStage(
        parse_impairment("lossy"),
        lambda pkt, _source: arrived.append((pkt.sequence, pkt.payload)),
        seed=seed,
        clock=lambda: now[0],
        schedule=schedule,
    )
    for i, payload in enumerate(packets):
        until(i * FRAME_MS / 1000)
        stage.push(RtpAudio(payload, i * 960, i, False, now[0]))
    until(len(packets) * FRAME_MS / 1000 + 1.0)
    assert stage.dropped > 0
    return arrived


# Seed 1 takes most of a word out of the two longest lines: with the settings before FRAME_STEP and today's WORD_BEAM
# they were missed (the only misses over seeds 0-11).
LOSSY_SEEDS = (0, 1, 2)


async def test_every_builtin_persona_hears_every_line_it_listens_for_clean_and_over_a_lossy_path() -> None:
    """Each phrase a persona of a built-in scenario may hear (its grammar: its `hear` phrases and the generic
    reply), said by the OTHER persona's espeak voice and speed, encoded by the emulator's mouth and heard by its ear
    (Listener -> VAD turn -> recognizer, in this process as in a worker), is recognised exactly: over a clean path
    and over the lab's `lossy` impairment. The recognizer's settings (hearing.BEAM, FRAME_STEP) must keep this."""
    from voicebridge.emulator.listening import Listener
    from voicebridge.emulator.persona import Script

    missed: list[str] = []
    for name in builtin_names():
        scenario = load_scenario(name)
        for role, listener, speaker in (("caller", scenario.caller, scenario.cs), ("cs", scenario.cs, scenario.caller)):
            grammar = Script(listener).phrases
            recognizer = recognizer_for(grammar)
            for phrase in grammar:
                line = await VOICE.speak(phrase, speaker.espeak_voice, speaker.espeak_speed)
                stream = silence(1000) + list(line.packets) + silence(1500)
                paths = {"clean": list(enumerate(stream))} | {f"lossy seed {s}": lossy(stream, s) for s in LOSSY_SEEDS}
                for path, arrivals in paths.items():
                    turns = Turns()
                    ear = turns.ear()
                    hear = Listener(ear)
                    for seq, payload in arrivals:
                        hear.push(payload, seq)
                    heard = [recognizer.transcribe(pcm) for _, pcm in turns.stopped]
                    if heard != [normalize_phrase(phrase)]:
                        missed.append(f"{name}: the {role} heard {heard!r} for {phrase!r} ({path})")
    assert missed == []


async def test_drop_speech_forgets_the_turn_in_progress_but_keeps_the_clock() -> None:
    """input_audio_buffer.clear mid-speech: no speech_stopped for what was dropped; the clock is not rewound."""
    line = await VOICE.speak(GREETING)
    turns = Turns()
    ear = turns.ear()
    frames = decode(silence(500) + list(line.packets) + silence(1500))
    half = (500 + line.duration_ms // 2) // FRAME_MS
    for frame in frames[:half]:
        ear.feed(frame)
    assert len(turns.started) == 1 and ear.speaking
    before = ear.audio_ms
    ear.drop_speech()
    assert not ear.speaking and ear.audio_ms == before
    for frame in frames[half:]:  # the rest of the line may start a new turn, but the dropped half is never heard
        ear.feed(frame)
    assert all(len(pcm) < 16 * (line.duration_ms // 2 + 1500 + 300) for _, pcm in turns.stopped)
    assert ear.audio_ms > before


async def test_take_speech_hands_over_the_turn_in_progress() -> None:
    """input_audio_buffer.commit with turn detection off commits the speech heard so far, mid-line too."""
    line = await VOICE.speak(GREETING)
    turns = Turns()
    ear = turns.ear(VadSettings(prefix_padding_ms=300))
    assert ear.take_speech() is None
    frames = decode(silence(500) + list(line.packets))
    for frame in frames:
        ear.feed(frame)
    before = ear.audio_ms
    pcm = ear.take_speech()
    assert pcm is not None and not ear.speaking and ear.audio_ms == before
    assert len(pcm) == 16 * (before - turns.started[0])  # from audio_start_ms (padding included) to now
    assert turns.stopped == []  # handed over, not ended by silence


def test_unexplained_is_the_share_of_loud_audio_no_word_covers() -> None:
    loud = (np.random.default_rng(3).standard_normal(100 * 160) * 3000).astype(np.int16)
    loud[: 20 * 160] = 0  # 10 ms frames 0-19 and 80-99 silent, 20-79 loud
    loud[80 * 160 :] = 0
    assert unexplained(loud, [(20, 79)]) == 0.0
    assert unexplained(loud, [(0, 10), (20, 49)]) == pytest.approx(0.5)  # a word over silence explains nothing
    assert unexplained(loud, []) == 1.0
    assert unexplained(np.zeros(16000, dtype=np.int16), []) == 0.0  # nothing loud: nothing to explain
    assert unexplained(np.zeros(10, dtype=np.int16), []) == 0.0


# Sentences no built-in persona listens for: before MAX_UNEXPLAINED, "hello there" was heard in five of them.
OUTSIDE = ("Please hold the line while I transfer you.", "It has been raining all week long.")


async def test_every_builtin_persona_refuses_its_lines_reversed_and_sentences_outside_its_grammar() -> None:
    """Garbled audio is refused: each line a built-in persona listens for, reversed (espeak's samples backwards, in
    the other persona's voice), and sentences outside its grammar are not heard through the whole ear (Listener ->
    VAD turn -> recognizer), as a model would not understand them. Without the cut-off on unexplained audio some of
    them were taken for a phrase (checked: that is what refuses them), while every line forwards is still heard
    (test_every_builtin_persona_hears_every_line_it_listens_for_clean_and_over_a_lossy_path)."""
    from voicebridge.emulator.listening import Listener
    from voicebridge.emulator.persona import Script
    from voicebridge.emulator.voice import encode_pcm48k_stereo, parse_wav, resample_to_48k_stereo, synthesize_wav

    heard: list[str] = []
    cut: list[str] = []  # refused only because of the cut-off
    for name in builtin_names():
        scenario = load_scenario(name)
        for role, listener, speaker in (("caller", scenario.caller, scenario.cs), ("cs", scenario.cs, scenario.caller)):
            grammar = Script(listener).phrases
            if not grammar:
                continue
            recognizer = recognizer_for(grammar)
            garbled: list[tuple[str, Sequence[bytes]]] = []
            for phrase in grammar:
                mono, rate = parse_wav(await synthesize_wav(phrase, speaker.espeak_voice, speaker.espeak_speed))
                backwards = np.ascontiguousarray(mono[::-1])
                garbled.append((f"{phrase!r} reversed", encode_pcm48k_stereo(resample_to_48k_stereo(backwards, rate))))
            for text in OUTSIDE:
                line = await VOICE.speak(text, speaker.espeak_voice, speaker.espeak_speed)
                garbled.append((repr(text), line.packets))
            for what, packets in garbled:
                turns = Turns()
                hear = Listener(turns.ear())
                for seq, payload in enumerate(silence(1000) + list(packets) + silence(1500)):
                    hear.push(payload, seq)
                for _, pcm in turns.stopped:
                    text = recognizer.transcribe(pcm)
                    if text is not None:
                        heard.append(f"{name}: the {role} heard {text!r} for {what}")
                        continue
                    recognizer.max_unexplained = 1.0
                    try:
                        if recognizer.transcribe(pcm) is not None:
                            cut.append(what)
                    finally:
                        del recognizer.max_unexplained  # back to the class's
    assert heard == []
    assert len(cut) >= 3

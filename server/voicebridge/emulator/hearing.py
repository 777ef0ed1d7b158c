"""The emulator's ears: server VAD on the incoming track, and a recognizer that knows what a persona may hear.

`Ear` is the server-VAD half: fed every decoded frame, it judges 16 kHz mono 20 ms frames (voicing.py: webrtcvad,
loudness, not a tone, voiced) and reports `speech_started` / `speech_stopped` on the Realtime API's clock (ms of
input audio heard so far). A turn starts only after START_VOICED voiced frames within START_WINDOW (120 ms of
voiced speech in 200 ms), so clicks, beeps and short bursts never start one; it ends after `silence_duration_ms`
without active (speech-like) frames.
Following the SDK's definitions, `audio_start_ms` includes `prefix_padding_ms` (it is backdated) and
`audio_end_ms` includes `silence_duration_ms` (it is when the silence grew long enough to end the turn); the
speech itself ended at `Ear.speech_end_ms`.

`Recognizer` is the transcription half: pocketsphinx restricted to a JSGF grammar of the phrases a persona may
hear, one or more in sequence. Free recognition of espeak speech is poor; a grammar makes it exact for lines
that were actually spoken and gives no hypothesis for noise, silence or garbled audio, which is what a
faithful emulated listener needs.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt

from voicebridge.scenarios import normalize_phrase

from .voicing import SpeechJudge, Verdict
from .voicing import aggressiveness as vad_aggressiveness

VAD_RATE = 16000
VAD_FRAME_MS = 20
VAD_FRAME_SAMPLES = VAD_RATE * VAD_FRAME_MS // 1000  # 320
# Speech starts when START_VOICED of the last START_WINDOW frames are voiced speech: 120 ms within 200 ms. A
# syllable is longer; a beep, a click, a DTMF digit's edges or webrtcvad's hangover after a bang are shorter.
START_WINDOW = 10
START_VOICED = 6
# Inside a turn, a speech-like frame counts when RESUME_ACTIVE of the last RESUME_WINDOW frames are: a beep every
# 500 ms (one or two frames) cannot hold a turn open.
RESUME_WINDOW = 5
RESUME_ACTIVE = 3
MAX_SILENCE_MS = 10_000  # silence_duration_ms's maximum (VadSettings)
MAX_SILENCE_FRAMES = MAX_SILENCE_MS // VAD_FRAME_MS  # the same, in VAD frames
MAX_UTTERANCE_MS = 120_000  # a turn longer than two minutes is ended anyway: memory stays bounded
MAX_PHRASES = 500


class HearingError(ValueError):
    """Bad VAD settings, or phrases the recognizer cannot hear (the message names the words)."""


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5  # 0..1: webrtcvad aggressiveness 0..3 and a level floor (higher: louder, clearer)
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise HearingError(f"VAD threshold must be between 0.0 and 1.0, got {self.threshold!r}")
        if not 0 <= self.prefix_padding_ms <= 10_000:
            raise HearingError(f"prefix_padding_ms must be 0..10000, got {self.prefix_padding_ms!r}")
        if not 0 < self.silence_duration_ms <= MAX_SILENCE_MS:
            raise HearingError(f"silence_duration_ms must be 1..{MAX_SILENCE_MS}, got {self.silence_duration_ms!r}")

    @property
    def aggressiveness(self) -> int:
        return vad_aggressiveness(self.threshold)


SILENT = Verdict(False, False)
_SILENT_CHUNK = np.zeros(VAD_FRAME_SAMPLES, dtype=np.int16)
_SILENT_CHUNK.flags.writeable = False


class Backlog(Protocol):
    """Audio a listener has received but not yet fed (listening.py: silent Opus packets kept undecoded as the
    next turn's padding). It counts on the Ear's clock, and input_audio_buffer.clear forgets it too."""

    def held_ms(self) -> int: ...

    def discard(self) -> None: ...


class _Resampler:
    """Any audio frame -> 16 kHz mono s16 in libswresample (downmix, filter, decimate in C: ~60 us a frame).

    Stateful: it keeps its filter history across frames. It resamples by sample count and ignores pts jumps,
    so a gap or a reset in the track's timestamps never inserts audio: the Ear's clock counts what was heard.
    """

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self._av = av.AudioResampler(format="s16", layout="mono", rate=VAD_RATE)

    def __call__(self, frame: av.AudioFrame) -> list[npt.NDArray[np.int16]]:
        return [np.asarray(f.to_ndarray(), dtype=np.int16).reshape(-1) for f in self._av.resample(frame)]


class Ear:
    """Fed every decoded 20 ms frame of the incoming track (av.AudioFrame from aiortc: s16, 48 kHz, stereo).

    Callbacks: on_speech_started(audio_start_ms); on_speech_stopped(audio_end_ms, PCM16 mono 16 kHz of the
    turn, prefix padding included); `on_speech_ms`, when set, (ms of the turn heard since its speech onset,
    padding excluded) at the turn's start and after each frame inside it (a persona's barge-in watches it).
    They run inside feed(), so they must be quick: schedule work, don't do it.
    """

    def __init__(
        self,
        vad: VadSettings,
        on_speech_started: Callable[[int], None],
        on_speech_stopped: Callable[[int, npt.NDArray[np.int16]], None],
    ) -> None:
        self._on_started = on_speech_started
        self._on_stopped = on_speech_stopped
        self._resampler: _Resampler | None = None
        self.settings = vad
        self._judge = SpeechJudge(vad.threshold)
        self.backlog: Backlog | None = None
        self.on_speech_ms: Callable[[int], None] | None = None
        self._apply(vad)
        self.reset()

    def _apply(self, vad: VadSettings) -> None:
        if vad.threshold != self.settings.threshold:
            self._judge = SpeechJudge(vad.threshold)
        self.settings = vad
        self._prefix_frames = -(-vad.prefix_padding_ms // VAD_FRAME_MS)
        self._silence_frames = -(-vad.silence_duration_ms // VAD_FRAME_MS)

    def reset(self) -> None:
        """Forget everything heard (input_audio_buffer.clear, or a new session): the clock restarts at 0."""
        self._judge.reset()
        self._pending = np.zeros(0, dtype=np.int16)  # 16 kHz samples not yet a whole VAD frame
        self._frames = 0  # whole VAD frames processed: the clock
        # Frames heard outside a turn, judged: the start window, and the prefix padding before it.
        self._history: deque[tuple[npt.NDArray[np.int16], Verdict]] = deque(
            maxlen=self._prefix_frames + START_WINDOW
        )
        self._speaking = False
        # Inside a turn, the verdicts of its frames (and of the RESUME_WINDOW frames before it), newest last: where
        # the turn's speech last went on is worked out from them only when the turn could end (_advance).
        self._recent: deque[Verdict] = deque(maxlen=MAX_SILENCE_FRAMES + RESUME_WINDOW)
        self._checked = 0  # frames up to here are known not to have gone on with the speech (after _last_voiced_end)
        self._utterance: list[npt.NDArray[np.int16]] = []
        self._start_frame = 0
        self._onset_frame = 0  # where the current turn's speech began (its padding before that)
        self._last_voiced_end = 0
        self.speech_end_ms = 0  # where the last utterance's speech ended (before the closing silence)

    def configure(self, vad: VadSettings) -> None:
        """New settings (session.update) from the next frame on: the clock, a turn in progress and the padding
        heard so far are kept, as the API's audio timeline is."""
        if vad == self.settings:
            return
        self._apply(vad)
        self._history = deque(self._history, maxlen=self._prefix_frames + START_WINDOW)

    def drop_speech(self) -> None:
        """input_audio_buffer.clear: forget the speech in progress and the padding kept for the next one; unlike
        reset(), the clock goes on, so later audio_start_ms values stay on the session's audio timeline."""
        if self.backlog is not None:
            self.backlog.discard()
        self._history.clear()
        self._speaking = False
        self._utterance = []

    def take_speech(self) -> npt.NDArray[np.int16] | None:
        """input_audio_buffer.commit with turn detection off: the speech in progress so far (prefix padding
        included) goes into the committed turn, and the ear listens afresh; the clock goes on."""
        if not self._speaking:
            return None
        pcm = np.concatenate(self._utterance) if self._utterance else np.zeros(0, dtype=np.int16)
        self.drop_speech()
        return pcm

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio heard so far: the clock of audio_start_ms and audio_end_ms."""
        held = self.backlog.held_ms() if self.backlog is not None else 0
        return self._frames * VAD_FRAME_MS + held

    @property
    def speaking(self) -> bool:
        return self._speaking

    def feed(self, frame: av.AudioFrame) -> None:
        """One decoded frame of the track (any format, layout and rate). Cheap: it runs in the event loop."""
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._resampler is None or self._resampler.key != key:
            if not 8000 <= frame.sample_rate <= 192000:
                raise HearingError(f"sample rate {frame.sample_rate} Hz is outside 8000..192000")
            self._resampler = _Resampler(key)
        for part in self._resampler(frame):
            self.feed_vad_rate(part)

    def feed_vad_rate(self, pcm: npt.NDArray[np.int16]) -> None:
        """Mono int16 samples already at the VAD's 16 kHz (listening.py decodes Opus straight to it)."""
        self._pending = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        n = len(self._pending) // VAD_FRAME_SAMPLES
        for i in range(n):
            self._step(self._pending[i * VAD_FRAME_SAMPLES : (i + 1) * VAD_FRAME_SAMPLES])
        self._pending = self._pending[n * VAD_FRAME_SAMPLES :]

    def feed_pcm16(self, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
        """Mono PCM16 samples at any rate (e.g. 24 kHz from the WebSocket transport)."""
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise HearingError(f"Ear.feed_pcm16 needs 1-D int16 samples, got {pcm.dtype} shape {pcm.shape}")
        if not len(pcm):
            return
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = sample_rate
        self.feed(frame)

    def skip(self, samples: int) -> None:
        """`samples` (16 kHz) known to be silence without decoding them (a silent Opus packet): the clock goes
        on and they count as silent frames, neither resampled nor judged."""
        if samples <= 0:
            return
        if len(self._pending):
            take = min(samples, VAD_FRAME_SAMPLES - len(self._pending))
            self._pending = np.concatenate([self._pending, np.zeros(take, dtype=np.int16)])
            samples -= take
            if len(self._pending) < VAD_FRAME_SAMPLES:
                return
            chunk, self._pending = self._pending, np.zeros(0, dtype=np.int16)
            self._step(chunk)
        whole, rest = divmod(samples, VAD_FRAME_SAMPLES)
        self._judge.skip(whole)
        for _ in range(whole):
            self._frames += 1
            self._advance(_SILENT_CHUNK, SILENT)
        if rest:
            self._pending = np.zeros(rest, dtype=np.int16)

    def _step(self, chunk: npt.NDArray[np.int16]) -> None:
        self._frames += 1
        self._advance(chunk, self._judge.judge(chunk))

    def _advance(self, chunk: npt.NDArray[np.int16], verdict: Verdict) -> None:
        if not self._speaking:
            self._history.append((chunk, verdict))
            window = list(self._history)[-START_WINDOW:]
            if sum(v.onset for _, v in window) >= START_VOICED:
                self._begin()
            return
        self._utterance.append(chunk)
        self._recent.append(verdict)
        silence = self._silence_frames
        # Active frames just now may be a word beginning (confirmed within RESUME_ACTIVE frames): wait for them.
        if (
            self._frames - self._last_voiced_end >= silence  # cheap: the last frame known to go on is that far back
            and self._frames - self._went_on() >= silence
            and not any(v.active for v in list(self._recent)[-(RESUME_ACTIVE - 1) :])
        ):
            self._end(self._last_voiced_end + silence)
        elif len(self._utterance) * VAD_FRAME_MS >= MAX_UTTERANCE_MS:
            self._went_on()  # speech_end_ms
            self._end(self._frames)
        elif self.on_speech_ms is not None:
            self.on_speech_ms((self._frames - self._onset_frame) * VAD_FRAME_MS)

    def _went_on(self) -> int:
        """The last frame where the speech went on: one that is active with RESUME_ACTIVE active frames among the
        RESUME_WINDOW ending there (a lone beep or click in the silence after a turn does not restart its silence
        count). Worked out from the frames not checked yet, newest first, and only when asked: when the last frame
        known to go on is silence_duration_ms back, or the turn ends anyway; so inside speech most frames' verdicts
        are never asked for, and the result is the one judging every frame as it came gave."""
        recent = list(self._recent)  # recent[-1] is this frame's verdict
        for back in range(self._frames - max(self._last_voiced_end, self._checked)):
            window = recent[-RESUME_WINDOW - back : len(recent) - back]
            if window[-1].active and sum(v.active for v in window) >= RESUME_ACTIVE:
                self._last_voiced_end = self._frames - back
                break
        self._checked = self._frames
        return self._last_voiced_end

    def _begin(self) -> None:
        # Speech began with the run of active frames (an unvoiced "th" or "s" included) that leads to the window's
        # first voiced frame; the turn's audio starts prefix_padding_ms before that.
        history = list(self._history)
        first = next(i for i in range(max(0, len(history) - START_WINDOW), len(history)) if history[i][1].onset)
        while first > 0 and history[first - 1][1].active:
            first -= 1
        onset = self._frames - len(history) + first
        keep = min(len(history), self._frames - max(0, onset - self._prefix_frames))
        self._utterance = [c for c, _ in history[-keep:]]
        self._history.clear()
        self._speaking = True
        self._recent = deque([v for _, v in history[-RESUME_WINDOW:]], maxlen=MAX_SILENCE_FRAMES + RESUME_WINDOW)
        self._last_voiced_end = self._checked = self._frames
        self._start_frame = self._frames - keep
        self._onset_frame = onset
        self._on_started(self._start_frame * VAD_FRAME_MS)
        if self.on_speech_ms is not None and self._speaking:
            self.on_speech_ms((self._frames - onset) * VAD_FRAME_MS)

    def _end(self, end_frame: int) -> None:
        """The turn ends at `end_frame` (speech end + silence_duration_ms); frames heard after it, while a blip was
        being ruled out, go back to the history: they may be the padding of the next turn."""
        extra = self._frames - end_frame
        turn = self._utterance[: len(self._utterance) - extra]
        if extra:
            self._history.extend(zip(self._utterance[-extra:], list(self._recent)[-extra:], strict=True))
        pcm = np.concatenate(turn) if turn else np.zeros(0, dtype=np.int16)
        self._utterance = []
        self._speaking = False
        self.speech_end_ms = self._last_voiced_end * VAD_FRAME_MS
        self._on_stopped(end_frame * VAD_FRAME_MS, pcm)


def _model_dir() -> Path:
    from pocketsphinx import get_model_path

    return Path(get_model_path())


@cache
def dictionary_words() -> frozenset[str]:
    """Every word of pocketsphinx's en-US pronouncing dictionary (alternates like `read(2)` folded in)."""
    words: set[str] = set()
    with open(_model_dir() / "en-us" / "cmudict-en-us.dict", encoding="utf-8", errors="replace") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            words.add(head.split("(", 1)[0])
    return frozenset(words)


def missing_words(phrases: Sequence[str]) -> list[str]:
    """Words of the phrases (normalized) that the recognizer's dictionary lacks, sorted, each once."""
    known = dictionary_words()
    return sorted({w for p in phrases for w in normalize_phrase(p).split() if w not in known})


def _grammar(phrases: Sequence[str]) -> str:
    alternatives = " | ".join(phrases)
    # <phrase>+ : lines spoken back to back (two script lines before a pause) are still one recognisable turn.
    return f"#JSGF V1.0;\ngrammar persona;\npublic <turn> = <phrase>+;\n<phrase> = ( {alternatives} );\n"


BEAM = 1e-80  # pocketsphinx's beam and pbeam: hypotheses this much less likely than the best are pruned
WORD_BEAM = 1e-70  # and at word exits
# pocketsphinx's `ds`: the acoustic model's Gaussians are evaluated on every FRAME_STEP-th 10 ms frame, the scores
# reused in between (the search still steps every frame). Most of recognition's CPU is that evaluation (perf: ~65 %
# in ptm_mgau_frame_eval). With 2 alone one built-in line was no longer heard (its path was pruned at a word exit),
# so WORD_BEAM went from 1e-60 to 1e-70 with it. Measured over every built-in persona's grammar, each phrase in the
# other persona's voice, clean and over 12 `lossy` loss patterns (377 turns): 0.0161 -> 0.0125 CPU s per s of audio
# (-22 %), all 377 heard exactly (2 missed before), and of 61 half lines and other sentences 7 taken for a phrase
# (8 before; all in quick_bye's two-word grammars, and none that was refused before). 3 missed 5 of 21 clean lines.
FRAME_STEP = 2
# A hypothesis is refused when its words leave more than MAX_UNEXPLAINED of the turn's loud audio to silence and
# filler (pocketsphinx's <sil>, [NOISE], ...). A grammar search must end on the grammar's phrases, so speech that is
# none of them (another sentence, reversed speech) was often taken for the shortest phrase that could be fitted in,
# the rest of the turn absorbed as "silence": a model would not have understood it. Loud = 10 ms frames within
# LOUD_DB of the turn's loudest (relative, so a quiet talker is judged like a loud one). Measured over every
# built-in persona's grammar (the 377 turns of FRAME_STEP above): heard lines leave at most 0.21 of it unexplained
# (a lossy path's concealed gaps), while the sentences outside the grammar and the reversed lines that were taken
# for a phrase leave 0.67-0.88.
MAX_UNEXPLAINED = 0.45
LOUD_DB = 30.0
QUIET_DB = 20.0  # an RMS of 10 (-70 dBFS): nothing quieter counts as loud, however quiet the turn
_FILLER_PREFIXES = ("<", "[", "+", "(")  # <sil>, <s>, [NOISE], +SPN+, (NULL): not words of a phrase


class Recognizer:
    """pocketsphinx constrained to a JSGF grammar of the phrases a persona may hear (one or more in a row)."""

    # The bench's baseline sets these back to before issue 17: 1 (every frame scored) and 1e-60.
    frame_step = FRAME_STEP
    word_beam = WORD_BEAM
    max_unexplained = MAX_UNEXPLAINED  # the bench's baseline: 1.0 (no cut-off, as before)

    def __init__(self, phrases: Sequence[str]) -> None:
        if isinstance(phrases, str):
            raise HearingError("Recognizer needs a sequence of phrases, got one string")
        normalized = sorted({normalize_phrase(p) for p in phrases} - {""})
        if not normalized:
            raise HearingError("Recognizer needs at least one phrase with words in it")
        if len(normalized) > MAX_PHRASES:
            raise HearingError(f"{len(normalized)} phrases is over the {MAX_PHRASES}-phrase limit")
        missing = missing_words(normalized)
        if missing:
            raise HearingError(
                f"the recognizer's dictionary lacks {', '.join(repr(w) for w in missing)}: "
                "reword the phrase (e.g. spell numbers and abbreviations as words)"
            )
        from pocketsphinx import Decoder

        self.phrases: tuple[str, ...] = tuple(normalized)
        # A hypothesis counts only if it is whole phrases: pocketsphinx falls back to a partial path when no
        # path reaches the grammar's end, and a half-heard line must not pass for the line.
        alternatives = "|".join(re.escape(p) for p in normalized)
        self._whole = re.compile(f"(?:{alternatives})(?: (?:{alternatives}))*")
        # lm=None: the grammar is the only search, so the 30 MB language model is never loaded.
        # bestpath=False: the lattice rescoring pass ignores the grammar's end states and was seen to append a
        # stray word ("... today i": the first word of another phrase); the Viterbi path does not.
        # Wider beams than pocketsphinx's defaults (1e-48, 7e-29, 1e-48): audio with lost packets concealed (PLC)
        # loses the one right path under the default pruning, and then nothing is heard at all. Measured on the
        # built-in lines under 15 % loss with bursts: 70 of 80 heard exactly with the defaults, 78 with these, for
        # ~10 % more CPU; speech outside the grammar, half a phrase and noise are still not heard (test_hearing).
        # (That was with a 1e-60 word beam and every frame scored: FRAME_STEP above.)
        self._decoder = Decoder(**self.decoder_settings())
        try:
            self._decoder.add_jsgf_string("persona", _grammar(normalized))
            self._decoder.activate_search("persona")
        except Exception as e:  # pocketsphinx raises RuntimeError with its own log as the only detail
            raise HearingError(f"pocketsphinx rejected the grammar of {len(normalized)} phrases: {e}") from e
        self._lock = threading.Lock()  # one decoder, one utterance at a time

    def decoder_settings(self) -> dict[str, Any]:
        """pocketsphinx's Decoder settings (scripts/hearing-check.py overrides this to try others)."""
        return {
            "samprate": VAD_RATE, "lm": None, "bestpath": False, "loglevel": "FATAL",
            "beam": BEAM, "wbeam": self.word_beam, "pbeam": BEAM, "ds": self.frame_step,
        }  # fmt: skip

    def transcribe(self, pcm16k: npt.NDArray[np.int16]) -> str | None:
        """The recognised words (normalized), or None when nothing in the grammar was heard. Blocking."""
        if pcm16k.dtype != np.int16 or pcm16k.ndim != 1:
            raise HearingError(f"transcribe needs 1-D int16 PCM at 16 kHz, got {pcm16k.dtype} {pcm16k.shape}")
        if len(pcm16k) < VAD_FRAME_SAMPLES:
            return None
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm16k.tobytes(), no_search=False, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            words = [
                (seg.start_frame, seg.end_frame)
                for seg in (self._decoder.seg() if hyp is not None else ())
                if not seg.word.startswith(_FILLER_PREFIXES)
            ]
        text = normalize_phrase(hyp.hypstr) if hyp is not None else ""
        if not self._whole.fullmatch(text):
            return None
        return text if unexplained(pcm16k, words) <= self.max_unexplained else None


def unexplained(pcm16k: npt.NDArray[np.int16], words: Sequence[tuple[int, int]]) -> float:
    """The share of the turn's loud 10 ms frames (within LOUD_DB of its loudest, and above QUIET_DB) that no word
    covers, given the words' (first, last) frames; 0.0 for a turn with nothing loud in it."""
    frames = len(pcm16k) // 160
    if frames == 0:
        return 0.0
    x = pcm16k[: frames * 160].reshape(frames, 160).astype(np.float64)
    power = np.einsum("ij,ij->i", x, x) / 160 + 1.0  # mean square over one LSB's: digital silence is 1 (0 dB)
    loud = power > max(float(power.max()) * 10 ** (-LOUD_DB / 10), 10 ** (QUIET_DB / 10))
    covered = np.zeros(frames, dtype=bool)
    for first, last in words:
        covered[max(0, first) : last + 1] = True
    return float(np.count_nonzero(loud & ~covered)) / max(1, int(np.count_nonzero(loud)))


_recognizers: OrderedDict[tuple[str, ...], Recognizer] = OrderedDict()
_recognizers_lock = threading.Lock()
MAX_RECOGNIZERS = 32


def phrase_key(phrases: Sequence[str]) -> tuple[str, ...]:
    """A phrase set as the recognisers know it: normalized, sorted, without empty phrases."""
    return tuple(sorted({normalize_phrase(p) for p in phrases} - {""}))


def recognizer_for(phrases: Sequence[str]) -> Recognizer:
    """A Recognizer for this phrase set, loaded once (about 0.2 s) and shared; safe to use from threads."""
    key = phrase_key(phrases)
    with _recognizers_lock:
        hit = _recognizers.get(key)
        if hit is not None:
            _recognizers.move_to_end(key)
            return hit
        recognizer = Recognizer(key)
        _recognizers[key] = recognizer
        while len(_recognizers) > MAX_RECOGNIZERS:
            _recognizers.popitem(last=False)
        return recognizer

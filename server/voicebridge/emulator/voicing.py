"""Is this 20 ms frame speech? The server VAD's per-frame judgement, stricter than webrtcvad alone.

webrtcvad answers "is there energy in the speech bands", so a beep, a DTMF digit, a click or hiss counts as speech
for it, and its hangover stretches a 20 ms beep over several frames: Chromium's fake microphone (a 20 ms square
beep every 500 ms) started turns that never ended. The real server VAD is a speech-probability model with a
`threshold` ("a higher threshold will require louder audio to activate the model"). This judge approximates it
with four measurable properties of speech, each cheap on a 16 kHz frame:

- webrtcvad says voice, at an aggressiveness from `threshold` (0..1 -> 0..3);
- loud enough: the frame's energy between 100 and 4000 Hz is at least `floor_db` dBFS, from `threshold` too
  (-60 + 30 * threshold: -45 dBFS by default). In-band, so a DC step or rumble (a unipolar beep's decay) is not
  loud;
- not a tone: over the last 120 ms, the 3 strongest spectral peaks hold less than 90 % of the in-band energy.
  Sines, DTMF pairs and square waves are ~1.0 (steady partials stay sharp over a long window); speech is
  ~0.55-0.8 (its pitch and formants move, smearing harmonics across a 120 ms window);
- voiced: a normalized autocorrelation peak >= 0.5 at a pitch lag (62-400 Hz) over the last 40 ms. Vowels are
  ~0.9; clicks and noise ~0.1-0.3.

A frame that passes the first three is `active` (it keeps an open turn open: fricatives are not voiced but are
speech); `onset` frames pass all four and are what may open a turn (the Ear also wants enough of them in a row,
so a 20 ms beep or a short burst never does).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt
import webrtcvad

RATE = 16000
FRAME = 320  # 20 ms at 16 kHz
BAND_HZ = (100, 4000)
TONE_FRAMES = 6  # 120 ms: long enough for a steady partial to be sharp and a moving one to smear
TONE_FFT = 2048
TONE_PEAKS = 3
TONE_SHARE = 0.90
PITCH_FFT = 1024  # the last 40 ms (640 samples), zero-padded: no circular wrap up to lag 384
PITCH_LAGS = (RATE // 400, RATE // 62)  # 40..258 samples: f0 from 62 to 400 Hz
VOICED = 0.5

_TONE_WINDOW = np.hanning(TONE_FRAMES * FRAME)
_FRAME_WINDOW = np.hanning(FRAME)
_FRAME_FFT = 512
# Power-spectrum sums -> mean square of the signal (Parseval, with the window's energy), then dBFS.
_FRAME_NORM = 2.0 / (_FRAME_FFT * float(np.sum(_FRAME_WINDOW**2)))
_FULL_SCALE_DB = 20 * np.log10(32768.0)


def _band(n_fft: int) -> slice:
    return slice(int(BAND_HZ[0] * n_fft / RATE), int(BAND_HZ[1] * n_fft / RATE) + 1)


_FRAME_BAND = _band(_FRAME_FFT)
_TONE_BAND = _band(TONE_FFT)
# A peak's share is counted over its window's main lobe (+-2 bins of the unpadded window) plus one bin.
_TONE_HALF = int(np.ceil(2 * TONE_FFT / (TONE_FRAMES * FRAME))) + 1


class Verdict:
    """One frame's judgement: `active` (speech for keeping a turn open) and `onset` (voiced speech: what may open a
    turn). Both are worked out only when asked, from the frames they need (`pending`: the last TONE_FRAMES frames,
    never changed once judged): webrtcvad has already said voice (it keeps state, so it hears every frame in order),
    the level and the tone test (`active`, ~45 us under the GIL) and the pitch search (`onset`, ~30 us) wait. Inside a
    turn the Ear asks `active` only of the frames that decide where the turn ends, so most speech frames never pay
    for them; outside a turn it asks `onset` of every frame, as before."""

    __slots__ = ("_active", "_floor", "_onset", "_window")

    def __init__(
        self,
        active: bool,
        onset: bool = False,
        pending: tuple[npt.NDArray[np.float64], ...] | None = None,
        floor: float | None = None,
    ) -> None:
        self._active = active
        self._onset = onset
        self._window = pending
        self._floor = floor  # not None: `active` still to be worked out (level and tone over `pending`)

    @property
    def active(self) -> bool:
        if self._floor is not None and self._window is not None:
            window = self._window
            self._active = level_db(window[-1]) >= self._floor and tone_share(np.concatenate(window)) < TONE_SHARE
            self._floor = None
            if not self._active:
                self._window = None
        return self._active

    @property
    def onset(self) -> bool:
        if not self.active:
            return False
        if self._window is not None:
            self._onset = periodicity(np.concatenate(self._window[-2:])) >= VOICED
            self._window = None
        return self._onset

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Verdict) and (self.active, self.onset) == (other.active, other.onset)

    def __hash__(self) -> int:
        return hash((self.active, self.onset))

    def __repr__(self) -> str:
        return f"Verdict(active={self.active}, onset={self.onset})"


def floor_db(threshold: float) -> float:
    """The in-band level a frame needs, from turn_detection.threshold (higher: louder audio needed)."""
    return -60.0 + 30.0 * threshold


def aggressiveness(threshold: float) -> int:
    return min(3, int(threshold * 4))


def level_db(frame: npt.NDArray[np.int16] | npt.NDArray[np.float64]) -> float:
    """The frame's energy between 100 and 4000 Hz, in dBFS (a full-scale sine in the band is about -3)."""
    x = frame.astype(np.float64)
    x -= x.mean()  # DC leaks through the window's sidelobes otherwise
    power = np.abs(np.fft.rfft(x * _FRAME_WINDOW, _FRAME_FFT)) ** 2
    mean_square = float(power[_FRAME_BAND].sum()) * _FRAME_NORM
    return 10 * float(np.log10(mean_square + 1e-9)) - float(_FULL_SCALE_DB)


def tone_share(window: npt.NDArray[np.float64]) -> float:
    """Share of the in-band energy held by the strongest TONE_PEAKS spectral peaks of a 120 ms window (~1 for
    tones)."""
    x = window - window.mean()
    power = np.abs(np.fft.rfft(x * _TONE_WINDOW, TONE_FFT)) ** 2
    band = power[_TONE_BAND]
    total = float(band.sum())
    if total <= 0:
        return 0.0
    got = 0.0
    for _ in range(TONE_PEAKS):
        k = int(np.argmax(band))
        lo, hi = max(0, k - _TONE_HALF), k + _TONE_HALF + 1
        got += float(band[lo:hi].sum())
        band[lo:hi] = 0.0
    return got / total


def periodicity(window: npt.NDArray[np.float64]) -> float:
    """The normalized autocorrelation's highest peak at a pitch lag (0..1): ~0.9 for vowels, low for noise."""
    x = window - window.mean()
    spectrum = np.fft.rfft(x, PITCH_FFT)
    r = np.fft.irfft(np.abs(spectrum) ** 2, PITCH_FFT)
    if r[0] <= 0:
        return 0.0
    lo, hi = PITCH_LAGS
    lags = np.arange(lo, hi + 1)
    # Unbiased: each lag has len(x) - lag products, so the raw sum shrinks with the lag on its own.
    normalized = r[lo : hi + 1] / r[0] * len(x) / (len(x) - lags)
    return float(normalized.max())


class SpeechJudge:
    """Judges consecutive 20 ms frames of 16 kHz mono audio (it keeps the last 120 ms for its windows)."""

    eager_onset = False  # True: every speech frame's pitch searched at once, as before issue 17 (bench baseline)

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.floor_db = floor_db(threshold)
        self._vad = webrtcvad.Vad(aggressiveness(threshold))
        self._recent: deque[npt.NDArray[np.float64]] = deque(maxlen=TONE_FRAMES)
        self.reset()

    def reset(self) -> None:
        """Forget the audio before now (it counts as silence in the windows)."""
        self._recent.extend([np.zeros(FRAME)] * TONE_FRAMES)

    def skip(self, frames: int) -> None:
        """`frames` of silence went by unjudged (never decoded): the windows see them as zeros."""
        self._recent.extend([np.zeros(FRAME)] * min(frames, TONE_FRAMES))

    def judge(self, frame: npt.NDArray[np.int16]) -> Verdict:
        self._recent.append(frame.astype(np.float64))
        # Cheapest test first: most frames of a call are silence, and they cost one webrtcvad call. webrtcvad adapts
        # to what it heard, so it is asked of every frame now; the rest waits until the verdict is asked for.
        if not self._vad.is_speech(frame.tobytes(), RATE):
            return Verdict(False, False)
        verdict = Verdict(True, pending=tuple(self._recent), floor=self.floor_db)  # frames never changed once in
        if self.eager_onset:
            verdict.onset  # noqa: B018 (evaluated now, for the bench's baseline)
        return verdict

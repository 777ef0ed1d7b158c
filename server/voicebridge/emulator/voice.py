"""The emulator's mouth: text -> espeak-ng speech -> 20 ms Opus packets, synthesised once and cached.

An emulated agent says the same scripted lines again and again, so each line is synthesised and encoded once
(espeak-ng, resampled to 48 kHz stereo, libopus) and its packets are replayed as they are on the RTP track:
the sender hands them on without encoding, as a relayed Opus stream. Packets are plain `bytes`, one per 20 ms
frame, so the caller decides pacing, timestamps and where to stop (barge-in truncation is a packet count).
"""

from __future__ import annotations

import asyncio
import fractions
import re
from collections import OrderedDict
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext

SAMPLE_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
CHANNELS = 2  # WebRTC negotiates opus/48000/2; a mono voice is sent as two equal channels
BIT_RATE = 48000  # plenty for espeak's 22 kHz speech; the recognizer was verified down to 32 kbit/s
MAX_TEXT_CHARS = 4000  # about four minutes of speech: more is a bug in a script, not a line
ESPEAK = "espeak-ng"
ESPEAK_TIMEOUT_S = 30.0
MIN_SPEED, MAX_SPEED = 80, 450  # espeak-ng's own words-per-minute range
_VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+\-/]{0,63}$")
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class VoiceError(RuntimeError):
    """Speech could not be synthesised: espeak-ng is missing or failed, or the request is malformed."""


@dataclass(frozen=True)
class Utterance:
    text: str
    packets: tuple[bytes, ...]  # Opus payloads, one per 20 ms frame, 48 kHz stereo

    @property
    def duration_ms(self) -> int:
        return len(self.packets) * FRAME_MS


def _new_encoder(application: str = "voip") -> AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = BIT_RATE
    codec.format = "s16"
    codec.layout = "stereo"
    codec.sample_rate = SAMPLE_RATE
    codec.time_base = _TIME_BASE
    # voip: tuned for speech; frame_duration pins one packet per 20 ms frame whatever the default becomes.
    codec.options = {"application": application, "frame_duration": str(FRAME_MS)}
    return codec


def _stereo_frame(samples: npt.NDArray[np.int16], pts: int) -> av.AudioFrame:
    """One packed s16 stereo frame from interleaved samples (L R L R ...)."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = _TIME_BASE
    return frame


def encode_pcm48k_stereo(interleaved: npt.NDArray[np.int16], application: str = "voip") -> tuple[bytes, ...]:
    """Encode 48 kHz interleaved stereo PCM16 to Opus packets, one per 20 ms (the last frame zero-padded)."""
    per_frame = FRAME_SAMPLES * CHANNELS
    pad = (-len(interleaved)) % per_frame
    if pad:
        interleaved = np.concatenate([interleaved, np.zeros(pad, dtype=np.int16)])
    codec = _new_encoder(application)
    packets: list[bytes] = []
    for i, start in enumerate(range(0, len(interleaved), per_frame)):
        frame = _stereo_frame(interleaved[start : start + per_frame], pts=i * FRAME_SAMPLES)
        packets.extend(bytes(p) for p in codec.encode(frame))
    # Flush: the encoder holds its look-ahead (6.5 ms) back; without this the line's last syllable is cut.
    packets.extend(bytes(p) for p in codec.encode(None))
    return tuple(packets)


def parse_wav(data: bytes) -> tuple[npt.NDArray[np.int16], int]:
    """PCM16 mono samples and the rate from espeak-ng's WAV (it streams, so the header sizes are bogus)."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise VoiceError(f"{ESPEAK} did not write a WAV file ({len(data)} bytes on stdout)")
    pos, rate, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            fmt = int.from_bytes(data[body : body + 2], "little")
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            bits = int.from_bytes(data[body + 14 : body + 16], "little")
            if fmt != 1 or bits != 16 or channels not in (1, 2) or not 8000 <= rate <= 192000:
                raise VoiceError(
                    f"{ESPEAK} wrote an unexpected WAV format ({fmt=}, {channels=}, {rate=}, {bits=})"
                )
        elif chunk == b"data":
            if not rate:
                raise VoiceError(f"{ESPEAK} wrote a WAV with no fmt chunk before its data")
            # The streamed header says 0x7ffff000 bytes: the data is simply the rest of the output.
            raw = data[body:]
            raw = raw[: len(raw) - len(raw) % (2 * channels)]
            pcm = np.frombuffer(raw, dtype="<i2").astype(np.int16)
            if channels == 2:
                pcm = pcm.reshape(-1, 2).mean(axis=1).astype(np.int16)
            return pcm, rate
        pos = body + size + (size & 1)
    raise VoiceError(f"{ESPEAK} wrote a WAV with no data chunk")


def resample_to_48k_stereo(mono: npt.NDArray[np.int16], rate: int) -> npt.NDArray[np.int16]:
    """Mono PCM16 at any rate -> interleaved 48 kHz stereo PCM16 (libswresample through PyAV)."""
    if len(mono) == 0:
        return np.zeros(0, dtype=np.int16)
    frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
    out = [np.asarray(f.to_ndarray(), dtype=np.int16).reshape(-1) for f in resampler.resample(frame)]
    out += [np.asarray(f.to_ndarray(), dtype=np.int16).reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def _check_request(text: str, espeak_voice: str, speed: int) -> None:
    if not text.strip():
        raise VoiceError("cannot speak an empty line: `text` has no characters to say")
    if len(text) > MAX_TEXT_CHARS:
        raise VoiceError(f"line of {len(text)} characters is over the {MAX_TEXT_CHARS}-character limit")
    if not _VOICE_NAME.match(espeak_voice):
        raise VoiceError(f"espeak voice {espeak_voice!r} is not a voice name (letters, digits, _ + - / only)")
    if isinstance(speed, bool) or not isinstance(speed, int) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise VoiceError(
            f"espeak speed {speed!r} must be an integer from {MIN_SPEED} to {MAX_SPEED} words/minute"
        )


async def synthesize_wav(text: str, espeak_voice: str = "en-us", speed: int = 165) -> bytes:
    """Run espeak-ng once; the WAV it writes to stdout. Text goes on stdin, so it is never read as options."""
    _check_request(text, espeak_voice, speed)
    try:
        proc = await asyncio.create_subprocess_exec(
            ESPEAK, "--stdout", "-v", espeak_voice, "-s", str(speed),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError as e:
        raise VoiceError(f"{ESPEAK} is not installed (not on PATH): apt-get install espeak-ng") from e
    try:
        out, err = await asyncio.wait_for(proc.communicate(text.encode("utf-8")), ESPEAK_TIMEOUT_S)
    except TimeoutError as e:
        proc.kill()
        await proc.wait()
        raise VoiceError(f"{ESPEAK} took over {ESPEAK_TIMEOUT_S:.0f} s to speak {text[:40]!r}") from e
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        why = err.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise VoiceError(f"{ESPEAK} failed (voice {espeak_voice!r}, speed {speed}): {why}")
    return out


def _wav_to_packets(wav: bytes) -> tuple[bytes, ...]:
    mono, rate = parse_wav(wav)
    return encode_pcm48k_stereo(resample_to_48k_stereo(mono, rate))


_Key = tuple[str, str, int]


class Voice:
    """Speaks lines as cached Opus packets. One instance per process is enough; it is safe across sessions."""

    def __init__(self, max_cached: int = 256) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached must be at least 1, got {max_cached}")
        self._max_cached = max_cached
        self._cache: OrderedDict[_Key, Utterance] = OrderedDict()
        self._pending: dict[_Key, asyncio.Task[Utterance]] = {}
        self._silence: bytes | None = None

    async def speak(self, text: str, espeak_voice: str = "en-us", speed: int = 165) -> Utterance:
        """The line as Opus packets; synthesised on first use, then served from the LRU cache."""
        key = (text, espeak_voice, speed)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        _check_request(text, espeak_voice, speed)  # fail before starting a task for a bad request
        task = self._pending.get(key)
        # A task from another event loop (a closed test loop, a second server loop) cannot be awaited here.
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._synthesize(key))
            self._pending[key] = task
            task.add_done_callback(lambda _t: self._pending.pop(key, None))
        # shield: one waiter giving up (barge-in, hang-up) must not cancel the synthesis others wait on.
        return await asyncio.shield(task)

    async def _synthesize(self, key: _Key) -> Utterance:
        wav = await synthesize_wav(*key)
        # Resampling and encoding seconds of audio takes milliseconds of CPU: keep it off the event loop.
        packets = await asyncio.to_thread(_wav_to_packets, wav)
        utterance = Utterance(text=key[0], packets=packets)
        self._cache[key] = utterance
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return utterance

    def cached(self, text: str, espeak_voice: str = "en-us", speed: int = 165) -> Utterance | None:
        """The cached utterance, if this line was already spoken (no synthesis)."""
        return self._cache.get((text, espeak_voice, speed))

    @property
    def silence_packet(self) -> bytes:
        """One 20 ms Opus frame of digital silence, to keep the track's clock running between lines."""
        if self._silence is None:
            self._silence = silence_packet()
        return self._silence


def silence_packet() -> bytes:
    """Encode digital silence and take a steady-state packet (the first ones carry the encoder's start-up).

    "audio" mode (CELT) codes silence as a 3-byte frame that decodes to exact zeros; "voip" (SILK) would add a
    +-2 noise floor, which a listener's level meter and a VAD would see as "something".
    """
    packets = encode_pcm48k_stereo(
        np.zeros(FRAME_SAMPLES * CHANNELS * 5, dtype=np.int16), application="audio"
    )
    return packets[len(packets) // 2]

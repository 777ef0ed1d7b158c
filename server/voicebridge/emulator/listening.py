"""What the emulator's ear decodes of an incoming Opus stream: only packets that may hold speech.

Decoding every packet for the VAD cost most of an idle session's CPU, yet a silent Opus packet says so by its size:
digital silence, DTX and comfort noise from libopus (our own encoder, aiortc's, Chromium's) are 1-3 bytes, and no
Opus mode codes speech under 6 kbit/s (15 bytes a 20 ms frame). So a packet under SPEECH_BPS is silence, known
without decoding it.

`Listener` keeps silent packets undecoded in a ring as long as the Ear's history (prefix padding and the start
window). A packet that may hold speech wakes it: the ring is decoded first, oldest first (the decoder warms up on
it and the Ear judges it, so `prefix_padding_ms` and a quiet first syllable are kept exactly as if everything had
been decoded), then the packet. Awake, it decodes every packet; it sleeps again after SLEEP_AFTER silent packets in
a row outside a turn. Packets pushed out of the ring count on the Ear's clock as silence (`Ear.skip`), and the ring
itself counts there too (`Ear.backlog`), so audio_start_ms / audio_end_ms stay on the audio timeline.

`decode_all=True` decodes every packet: the reference the tests compare the turns with.
"""

from __future__ import annotations

import logging
from collections import deque

import av
from av.audio.codeccontext import AudioCodecContext

from voicebridge.media.passthrough import OPUS_CLOCK, opus_samples

from .hearing import START_WINDOW, VAD_FRAME_MS, VAD_RATE, Ear, HearingError

log = logging.getLogger(__name__)

SPEECH_BPS = 4000  # below this a packet holds no speech: Opus codes speech from 6 kbit/s up
SLEEP_AFTER = 10  # silent packets in a row (200 ms) outside a turn before decoding stops
RING_MARGIN_MS = 100  # beyond the Ear's history: a word's quiet lead-in that the start window looks back on


def may_hold_speech(payload: bytes) -> bool:
    """False for a packet too small to code speech (silence, DTX, comfort noise): read from its size and TOC."""
    if not payload:
        return False
    return len(payload) * 8 * OPUS_CLOCK >= SPEECH_BPS * opus_samples(payload)


class Listener:
    """Feeds an Ear from Opus packets as they arrive (RTP payloads, in order), decoding only what may be speech."""

    def __init__(self, ear: Ear, decode_all: bool = False) -> None:
        self.ear = ear
        self.decode_all = decode_all
        self.packets = 0  # packets pushed
        self.decoded = 0  # packets decoded (the ring's included when it was decoded)
        self.skipped = 0  # packets never decoded: counted on the Ear's clock as silence
        self.late = 0  # packets older than one already heard (dropped: there is no jitter buffer)
        self.errors = 0  # packets libopus refused
        self._codec = self._new_codec()
        self._ring: deque[tuple[bytes, int]] = deque()  # silent packets and their 48 kHz samples
        self._ring_samples = 0
        self._awake = False
        self._quiet = 0
        self._last_seq: int | None = None
        ear.backlog = self

    @staticmethod
    def _new_codec() -> AudioCodecContext:
        codec: AudioCodecContext = av.CodecContext.create("libopus", "r")
        codec.format = "s16"
        codec.layout = "stereo"
        codec.sample_rate = OPUS_CLOCK
        return codec

    @property
    def awake(self) -> bool:
        return self._awake

    def push(self, payload: bytes, sequence: int | None = None) -> None:
        """One packet. Raises HearingError for a packet libopus cannot decode (the stream goes on)."""
        if sequence is not None:
            if self._last_seq is not None and 0 < (self._last_seq - sequence) & 0xFFFF < 0x8000:
                self.late += 1
                return
            self._last_seq = sequence
        self.packets += 1
        if self.decode_all:
            self._decode(payload)
            return
        speech = may_hold_speech(payload)
        if self._awake:
            self._quiet = 0 if speech else self._quiet + 1
            self._decode(payload)
            if self._quiet >= SLEEP_AFTER and not self.ear.speaking:
                self._awake = False
            return
        if not speech:
            samples = opus_samples(payload)
            self._ring.append((payload, samples))
            self._ring_samples += samples
            limit = (self.ear.settings.prefix_padding_ms + START_WINDOW * VAD_FRAME_MS + RING_MARGIN_MS) * 48
            while self._ring_samples > limit:
                self._skip_oldest()
            return
        self._awake, self._quiet = True, 0
        ring, self._ring, self._ring_samples = self._ring, deque(), 0
        for held, _ in ring:
            self._decode(held)
        self._decode(payload)

    def held_ms(self) -> int:
        return self._ring_samples // (OPUS_CLOCK // 1000)

    def discard(self) -> None:
        """Forget the ring's packets: they count on the clock as silence (input_audio_buffer.clear)."""
        while self._ring:
            self._skip_oldest()

    def _skip_oldest(self) -> None:
        _, samples = self._ring.popleft()
        self._ring_samples -= samples
        self.skipped += 1
        self.ear.skip(samples * VAD_RATE // OPUS_CLOCK)

    def _decode(self, payload: bytes) -> None:
        self.decoded += 1
        try:
            frames = self._codec.decode(av.Packet(payload))
        except av.FFmpegError as e:
            self.errors += 1
            # A broken packet still took its time: its length counts as silence, and the decoder starts afresh.
            self.ear.skip(opus_samples(payload) * VAD_RATE // OPUS_CLOCK)
            self._codec = self._new_codec()
            raise HearingError(f"an Opus packet of {len(payload)} bytes cannot be decoded: {e}") from e
        for frame in frames:
            self.ear.feed(frame)

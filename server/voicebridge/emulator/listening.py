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

Packets with RTP sequence numbers first pass a `Reorder` stage: a jittery path (a real network, or the bridge's own
impairment stage) delivers packets out of order, and libopus and the VAD need them in order, or a reordered stretch
is heard as noise. It holds at most REORDER_DEPTH packets behind a missing one, then gives that one up as lost.

A lost packet is concealed, as a real receiver's jitter buffer does (libwebrtc's NetEq): libopus decodes the next
packet's in-band FEC copy of it when there is one, and otherwise extends the audio before it (PLC), for the lost
packet's length (opus.py). The hole is filled instead of closed up, so the audio clock keeps the sender's timeline
and a word with a few packets missing is still that word for the recogniser: under 15 % loss with bursts a call is
understood (docs/impairment.md), where skipping the lost packets left it deaf. A packet lost while the listener
sleeps is a silent packet in its ring (concealed from silence if the ring is decoded).
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np
import numpy.typing as npt

from voicebridge.media.passthrough import OPUS_CLOCK, opus_samples

from .hearing import START_WINDOW, VAD_FRAME_MS, VAD_RATE, Ear, HearingError
from .opus import OpusDecodeError, OpusDecoder

log = logging.getLogger(__name__)

SPEECH_BPS = 4000  # below this a packet holds no speech: Opus codes speech from 6 kbit/s up
SLEEP_AFTER = 10  # silent packets in a row (200 ms) outside a turn before decoding stops
RING_MARGIN_MS = 100  # beyond the Ear's history: a word's quiet lead-in that the start window looks back on
# Packets held behind a missing one before it counts as lost: 5 frames (100 ms) puts back in order any path whose
# jitter spreads arrivals over up to 100 ms, and delays hearing only while a packet is actually missing.
REORDER_DEPTH = 5


def may_hold_speech(payload: bytes) -> bool:
    """False for a packet too small to code speech (silence, DTX, comfort noise): read from its size and TOC."""
    if not payload:
        return False
    return len(payload) * 8 * OPUS_CLOCK >= SPEECH_BPS * opus_samples(payload)


class Reorder:
    """RTP payloads back in sequence order. In-order packets pass at once; behind a missing one, up to `depth`
    packets wait for it; past that it is lost (released as None, one per lost packet, in its place) and the wait
    moves on to the next one held."""

    def __init__(self, depth: int = REORDER_DEPTH) -> None:
        self.depth = depth
        self.late = 0  # older than a packet already released (or a duplicate of one): dropped
        self.lost = 0  # never arrived while `depth` packets waited behind it
        self.reordered = 0  # arrived after a later one and were put back in place
        self._held: dict[int, bytes] = {}
        self._next: int | None = None

    def push(self, sequence: int, payload: bytes) -> list[bytes | None]:
        """The payloads that are now in order (often just this one, none while a gap is open); None stands for a
        packet given up as lost."""
        if self._next is None:
            self._next = sequence
        ahead = (sequence - self._next) & 0xFFFF
        if ahead >= 0x8000 or sequence in self._held:
            self.late += 1
            return []
        if ahead == 0 and self._held:
            self.reordered += 1  # the missing one arrived while later ones waited
        self._held[sequence] = payload
        out: list[bytes | None] = []
        while self._held:
            if self._next in self._held:
                out.append(self._held.pop(self._next))
                self._next = (self._next + 1) & 0xFFFF
            elif len(self._held) > self.depth:
                nearest = min(self._held, key=lambda s: (s - (self._next or 0)) & 0xFFFF)
                gap = (nearest - self._next) & 0xFFFF
                self.lost += gap
                out.extend([None] * gap)
                self._next = nearest
            else:
                break
        return out


class Listener:
    """Feeds an Ear from Opus packets as they arrive (RTP payloads, in order), decoding only what may be speech."""

    def __init__(self, ear: Ear, decode_all: bool = False) -> None:
        self.ear = ear
        self.decode_all = decode_all
        self.packets = 0  # packets pushed
        self.decoded = 0  # packets decoded (the ring's included when it was decoded)
        self.skipped = 0  # packets never decoded: counted on the Ear's clock as silence
        self.reorder = Reorder()  # packets with sequence numbers are put back in order first
        self.errors = 0  # packets libopus refused
        self.concealed = 0  # lost packets filled in by libopus (FEC or PLC) while decoding
        self._codec = OpusDecoder(VAD_RATE, 1)  # straight to what the VAD hears: no resampling
        self._samples = 960  # the last packet's length: what a lost packet is taken to have held
        self._ring: deque[tuple[bytes | None, int]] = deque()  # silent (or lost) packets, their 48 kHz samples
        self._ring_samples = 0
        self._awake = False
        self._quiet = 0
        ear.backlog = self

    @property
    def awake(self) -> bool:
        return self._awake

    @property
    def late(self) -> int:
        return self.reorder.late

    def push(self, payload: bytes, sequence: int | None = None) -> None:
        """One packet as it arrived. Raises HearingError for a packet libopus cannot decode, after the packets
        released with it are heard (the stream goes on)."""
        if sequence is None:
            self._hear(payload)
            return
        refused: HearingError | None = None
        ready = self.reorder.push(sequence, payload)
        for i, packet in enumerate(ready):
            try:
                if packet is None:
                    following = ready[i + 1] if i + 1 < len(ready) else None
                    self._lost(following)
                else:
                    self._hear(packet)
            except HearingError as e:
                refused = refused or e
        if refused is not None:
            raise refused

    def _lost(self, following: bytes | None) -> None:
        """A packet that never arrived; `following` is the next one if it came (it may carry this one's FEC)."""
        if self.decode_all or self._awake:
            self._conceal(following)
            return
        self._keep(None, self._samples)

    def _hear(self, payload: bytes) -> None:
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
            self._samples = opus_samples(payload)
            self._keep(payload, self._samples)
            return
        self._awake, self._quiet = True, 0
        ring, self._ring, self._ring_samples = self._ring, deque(), 0
        held = list(ring)
        for i, (kept, _) in enumerate(held):
            if kept is None:
                self._conceal(held[i + 1][0] if i + 1 < len(held) else payload)
            else:
                self._decode(kept)
        self._decode(payload)

    def _keep(self, payload: bytes | None, samples: int) -> None:
        """Asleep: a silent (or lost) packet goes into the ring, undecoded."""
        self._ring.append((payload, samples))
        self._ring_samples += samples
        limit = (self.ear.settings.prefix_padding_ms + START_WINDOW * VAD_FRAME_MS + RING_MARGIN_MS) * 48
        while self._ring_samples > limit:
            self._skip_oldest()

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
        self._samples = opus_samples(payload)
        try:
            pcm = self._codec.decode(payload)
        except OpusDecodeError as e:
            self.errors += 1
            # A broken packet still took its time: its length counts as silence, and the decoder starts afresh.
            self.ear.skip(self._samples * VAD_RATE // OPUS_CLOCK)
            self._codec = OpusDecoder(VAD_RATE, 1)
            raise HearingError(f"an Opus packet of {len(payload)} bytes cannot be decoded: {e}") from e
        self._feed(pcm)

    def _conceal(self, following: bytes | None) -> None:
        """Fill a lost packet's time with libopus's FEC (from the packet after it) or PLC, for its length."""
        self.concealed += 1
        samples = opus_samples(following) if following else self._samples
        try:
            pcm = self._codec.recover(following, samples) if following else self._codec.conceal(samples)
        except OpusDecodeError:  # the following packet is broken: its own decode will say so; conceal without it
            pcm = self._codec.conceal(samples)
        self._feed(pcm)

    def _feed(self, pcm: npt.NDArray[np.int16]) -> None:
        self.ear.feed_vad_rate(pcm)

"""The lines a mouth plays (Playback, PlaybackQueue), and the emulated model's mouth as an aiortc audio track that
sends cached Opus packets at real-time pace, silence when idle.

A WebRTC session speaks through mouth.py's paced sender; this track (pulled by aiortc's per-session send loop) is
its fallback when aiortc's internals changed, with VOICEBRIDGE_SHORT_PATH=0 and in the bench's baseline, and the
test clients' microphone. aiortc's sender passes an `av.Packet` from `recv()` straight to RTP without encoding, so
speech costs no CPU beyond the packet bookkeeping. Timestamps stay continuous across lines and silence (one 20 ms
step per packet).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Sequence

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

FRAME_S = 0.020
FRAME_SAMPLES = 960  # 20 ms at 48 kHz: the RTP clock step of one Opus frame
TIME_BASE = fractions.Fraction(1, 48000)
MAX_LAG_S = (
    0.2  # if the loop stalled longer than this, resume pacing from now instead of bursting to catch up
)


class Playback:
    """One line queued on the track. `started` resolves True when its first packet goes out; `finished`
    resolves True
    once its last packet has been handed to the transport, or False when it was cleared before that."""

    def __init__(self, packets: Sequence[bytes], tag: str) -> None:
        loop = asyncio.get_running_loop()
        self.packets = tuple(packets)
        self.tag = tag  # the response id, for output_audio_buffer.* events
        self.sent = 0
        self.started: asyncio.Future[bool] = loop.create_future()  # False: cleared before it began
        self.finished: asyncio.Future[bool] = loop.create_future()

    @property
    def sent_ms(self) -> int:
        return self.sent * 20

    @property
    def duration_ms(self) -> int:
        return len(self.packets) * 20

    def _finish(self, completed: bool) -> None:
        if not self.started.done():
            self.started.set_result(completed)
        if not self.finished.done():
            self.finished.set_result(completed)


class PlaybackQueue:
    """The lines a mouth has to say, in order: what the WebRTC senders (mouth.py's paced one, this track) and the
    WebSocket delta sender share."""

    def __init__(self) -> None:
        self._queue: deque[Playback] = deque()

    @property
    def busy(self) -> bool:
        """True while a line is queued or playing."""
        return bool(self._queue)

    def clear(self) -> list[Playback]:
        """Drop everything queued or playing; returns the dropped playbacks (their `sent_ms` says what was
        heard)."""
        dropped = list(self._queue)
        self._queue.clear()
        for p in dropped:
            p._finish(False)
        return dropped

    def play(self, packets: Sequence[bytes], tag: str) -> Playback:
        """Queue a line; it plays after those queued before it."""
        playback = Playback(packets, tag)
        if not playback.packets:
            playback._finish(True)
        else:
            self._queue.append(playback)
        return playback

    def next_packet(self, silence: bytes) -> tuple[bytes, Playback | None]:
        """The packet to send now: the playing line's next one (its `started` resolves at the first), else
        `silence`; and the line whose last packet this is (taken off the queue; the sender finishes it once that
        packet has left)."""
        if not self._queue:
            return silence, None
        head = self._queue[0]
        payload = head.packets[head.sent]
        if head.sent == 0 and not head.started.done():
            head.started.set_result(True)
        head.sent += 1
        if head.sent < len(head.packets):
            return payload, None
        self._queue.popleft()
        return payload, head

    def drop(self, tag: str) -> list[Playback]:
        """Drop the queued or playing lines of one response (a cancelled response stops speaking)."""
        dropped = [p for p in self._queue if p.tag == tag]
        for p in dropped:
            self._queue.remove(p)
            p._finish(False)
        return dropped


class SpeechTrack(MediaStreamTrack, PlaybackQueue):
    kind = "audio"

    def __init__(self, silence_packet: bytes) -> None:
        MediaStreamTrack.__init__(self)
        PlaybackQueue.__init__(self)
        self._silence = silence_packet
        self._pts = 0
        self._next_time: float | None = None
        self._last: Playback | None = None  # the playback whose final packet recv() returned last time
        self.packets_sent = 0

    @property
    def current(self) -> Playback | None:
        return self._queue[0] if self._queue else None

    def stop(self) -> None:
        self.clear()
        if self._last is not None:
            self._last._finish(True)
            self._last = None
        super().stop()

    async def recv(self) -> av.Packet:  # type: ignore[type-arg]
        if self.readyState != "live":
            raise MediaStreamError
        # The sender calls recv() again only after it has sent the previous packet: so the line
        # whose last packet
        # we returned last time has now really left (this is when output_audio_buffer.stopped is true).
        if self._last is not None:
            self._last._finish(True)
            self._last = None
        now = time.monotonic()
        if self._next_time is None or now - self._next_time > MAX_LAG_S:
            self._next_time = now
        else:
            await asyncio.sleep(max(0.0, self._next_time - now))
            if self.readyState != "live":
                raise MediaStreamError
        self._next_time += FRAME_S
        payload, self._last = self.next_packet(self._silence)
        packet = av.Packet(payload)
        packet.pts = self._pts
        packet.time_base = TIME_BASE
        self._pts += FRAME_SAMPLES
        self.packets_sent += 1
        return packet

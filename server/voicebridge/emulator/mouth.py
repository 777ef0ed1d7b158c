"""The emulated model's mouth on a WebRTC session: its speech sent by the process's pacer, no aiortc send loop.

Each session's audio goes out through an ``OutboundAudio`` (media/passthrough.py: SRTP protect and ``sendto`` on the
leg's socket in one call, the RTCP sender counters computed when aiortc builds a report) from the process's
``Pacer`` (media/pacer.py: one timer per occupied millisecond of the 20 ms frame, shared by every session), not
from aiortc's per-session send loop pulling a ``SpeechTrack`` (one coroutine, one sleep, RTP packetising and
counter writes per session per packet). What goes out is what the track sent: every 20 ms the next packet of
the line playing, else the silence packet; sequence numbers and timestamps one step (1, 960) a packet across lines
and silence; the marker bit set on every packet, as aiortc's sender sets it on the last (only) packet of each
frame; the sender's SSRC, payload type and MID extension. Playback accounting is the track's too (``started`` at
the first packet, ``sent`` per packet, ``finished`` once the last one has been handed to the socket, False when
cleared before), and nothing is taken off the queue before the peer connection is connected.

session.py falls back to the ``SpeechTrack`` when aiortc's internals changed (``AiortcIncompatible``), with
``VOICEBRIDGE_SHORT_PATH=0``, and in the bench's baseline (``Session.paced_send``).
"""

from __future__ import annotations

import time

from aiortc import RTCRtpTransceiver

from voicebridge.media import pacer as pacing
from voicebridge.media.passthrough import OutboundAudio, RtpAudio, check_aiortc_compatibility

from .track import FRAME_SAMPLES, PlaybackQueue

SOURCE = "emulator"  # OutboundAudio's source: one, so its sequence numbers and timestamps are ours, re-based once


class PacedMouth(PlaybackQueue):
    """A WebRTC session's speech, sent every 20 ms by the process's pacer (``send_next``) through ``out``."""

    def __init__(self, silence_packet: bytes) -> None:
        super().__init__()
        self._silence = silence_packet
        self.out = OutboundAudio()
        self.packets_sent = 0
        self._seq = 0
        self._ts = 0
        self._stopped = False
        self._pacer: pacing.Pacer | None = None

    def bind(self, transceiver: RTCRtpTransceiver) -> None:
        """Answerer side, after setRemoteDescription and before createAnswer: send on the offer's audio transceiver
        (in both directions, as ``addTrack`` made it), and start pacing. Raises AiortcIncompatible (nothing
        changed) when aiortc's internals are not what ``OutboundAudio`` hooks."""
        check_aiortc_compatibility(sender=transceiver.sender)  # before bind() changes the transceiver
        self.out.bind(transceiver, "sendrecv")
        self._pacer = pacing.shared()
        self._pacer.add(self)  # its phase: now, as a track's send loop starts when its session does

    def send_next(self) -> None:
        """This session's packet of the current frame (called from its pacer slot)."""
        out = self.out
        if not out.connected:  # not yet (DTLS, negotiation) or no longer: the queue waits, as a track's does
            return
        payload, ended = self.next_packet(self._silence)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + FRAME_SAMPLES) & 0xFFFFFFFF
        out.send(RtpAudio(payload, self._ts, self._seq, True, time.perf_counter()), SOURCE)
        self.packets_sent += 1
        if ended is not None:
            ended._finish(True)  # its last packet has left: output_audio_buffer.stopped may follow

    def stop(self) -> None:
        """Stop speaking for good: the queue is dropped, nothing more is sent (the peer connection stays up)."""
        self.clear()
        if self._stopped:
            return
        self._stopped = True
        if self._pacer is not None:
            self._pacer.remove(self)
        self.out.close()

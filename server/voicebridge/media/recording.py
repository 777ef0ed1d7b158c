"""Call recording without transcoding: each party's Opus packets, as received, muxed into WebM with PyAV.

Why WebM (Matroska): every block carries its own timestamp, so silences and gaps are kept as they happened
(Ogg infers timestamps from page granules), and a file cut off by a crash is still readable up to its last
cluster (clusters are closed at least every ``CLUSTER_MS``). Browsers play it as it is.

Timestamps: all parties share one timeline starting at the Recorder's ``t0`` (perf_counter). Within a party
the packet's RTP timestamp gives the spacing (free of network jitter); where RTP and arrival time disagree by
more than ``RESYNC_S`` (a new source, a sender that paused without advancing its clock) arrival time wins.

Nothing here touches the relay path except ``feed``, which only appends to a list; muxing happens in batches
on a timer (or at once when there is no event loop). ``export_wav`` (wav_export.py) decodes the files into a
stereo WAV: caller (and a human who took over) left, CS right, aligned in time.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

from .passthrough import RtpAudio, opus_samples
from .wav_export import export_wav

log = logging.getLogger(__name__)

RATE = 48000
TIME_BASE = fractions.Fraction(1, RATE)
CLUSTER_MS = 500
RESYNC_S = 0.2
# RFC 7845 identification header: version 1, 2 channels, pre-skip 0 (packets are mid-stream, nothing to
# skip), 48 kHz, gain 0, mapping family 0.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, RATE, 0, 0)


@dataclass
class _Track:
    container: Any
    stream: Any
    path: Path
    packets: int = 0
    prev_pts: int | None = None
    prev_ts: int = 0
    prev_dur: int = 960


class Recorder:
    """Feed it (party, packet) from AudioRelay.on_packet; it writes ``<directory>/<party>.webm`` per party."""

    def __init__(
        self, directory: Path | str, *, t0: float | None = None, flush_interval: float = 0.5
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter() if t0 is None else t0
        self.flush_interval = flush_interval
        self._tracks: dict[str, _Track] = {}
        self._pending: list[tuple[str, RtpAudio]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.errors = 0

    @property
    def paths(self) -> dict[str, Path]:
        """party -> recording file, for every party heard so far."""
        return {party: t.path for party, t in self._tracks.items()}

    def feed(self, party: str, pkt: RtpAudio) -> None:
        """Queue one packet (cheap: the muxing happens later, in a batch). Never raises."""
        if self._closed:
            return
        self._pending.append((party, pkt))
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Mux everything queued and push it to disk."""
        self._timer = None
        batch, self._pending = self._pending, []
        for party, pkt in batch:
            try:
                self._write(party, pkt)
            except Exception:
                self.errors += 1
                if self.errors <= 10:
                    log.exception("recording %s: could not write a packet", party)

    def close(self) -> dict[str, Path]:
        """Write what is queued and finalise every file (idempotent); returns party -> path."""
        if self._timer is not None:
            self._timer.cancel()
        if not self._closed:
            self.flush()
            self._closed = True
            for party, track in self._tracks.items():
                try:
                    track.container.close()
                except Exception:
                    log.exception("recording %s: could not finalise %s", party, track.path)
        return self.paths

    def export_wav(self, out: Path | str) -> Path:
        """Close the recording and export it as a stereo WAV (caller/human left, CS right)."""
        return export_wav(self.close(), out)

    def _open(self, party: str) -> _Track:
        if not party.isidentifier():
            raise ValueError(f"recording: party name {party!r} is not a plain word")
        path = self.directory / f"{party}.webm"
        container = av.open(
            str(path),
            "w",
            format="webm",
            options={"flush_packets": "1", "cluster_time_limit": str(CLUSTER_MS)},
        )
        stream = container.add_stream("libopus", rate=RATE)
        stream.codec_context.layout = "stereo"
        stream.codec_context.extradata = OPUS_HEAD
        track = self._tracks[party] = _Track(container, stream, path)
        return track

    def _write(self, party: str, pkt: RtpAudio) -> None:
        track = self._tracks.get(party) or self._open(party)
        arrival = round((pkt.received_at - self.t0) * RATE)
        duration = opus_samples(pkt.payload)
        if track.prev_pts is None:
            pts = max(arrival, 0)
        else:
            step = (pkt.timestamp - track.prev_ts) & 0xFFFFFFFF
            by_rtp = track.prev_pts + step
            pts = by_rtp if step < 0x80000000 and abs(by_rtp - arrival) <= RESYNC_S * RATE else arrival
            pts = max(pts, track.prev_pts + track.prev_dur)  # never overlap or go back
        packet = av.Packet(pkt.payload)
        packet.stream = track.stream
        packet.pts = packet.dts = pts
        packet.duration = duration
        packet.time_base = TIME_BASE
        track.container.mux(packet)
        track.prev_pts, track.prev_ts, track.prev_dur = pts, pkt.timestamp, duration
        track.packets += 1

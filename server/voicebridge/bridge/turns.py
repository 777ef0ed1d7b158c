"""The call's media observers: per-turn latency (``TurnLatency``) and the recording (``CallRecording``).

Both only watch: they subscribe to the relay's packet hook (``PacketHooks.on_packet``, called after a packet
has been forwarded) and to the Call's "event" emissions, and add nothing to the relay path.

Per-turn latency, as seen at the bridge. A turn is the first speech packet of one party after the other
party spoke (and after at least ``QUIET_S`` of its own silence). Its latency is the time from the arrival of
the previous party's last speech packet to the arrival of this party's first one. The bridge's own share is
separated out:

* ``relay_ms``: the relay's forwarding time of those two packets (arrival -> handed to the other leg);
* ``tools_ms``: tool execution on the replying leg inside the turn (``function_call_arguments.done`` ->
  its ``function_call_output`` sent);
* ``gating_ms``: the rest of the time the bridge held the replying leg's next response: outputs sent ->
  ``response.create`` sent (ResponseGate waits for the leg to be idle).

``other_ms`` = total - bridge: the agents' and the API's part (end-of-speech detection, generation).

A party that starts while the other is still talking (a barge-in: the other party's stretch of speech goes on past
the first frame of the new speech) did not reply after a gap: that is an overlap, and an interruption when the other
yields, which the talk-over analysis (lab/timing.py) reports. It is not a turn, or its gap of a few milliseconds would
pull down every turn-gap figure (the p50 of `max_turn_gap_ms`, the batch report's percentiles).
Speech vs silence is told by packet size: Opus codes silence in a few bytes (the emulator's are 3 bytes,
DTX/comfort noise is similar), speech in tens of bytes.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicebridge.lab.timing import analyze
from voicebridge.media.passthrough import RtpAudio
from voicebridge.media.recording import Recorder
from voicebridge.media.relay import PacketHooks
from voicebridge.media.wav_export import POOL, ExportPool, export_wav_off_process
from voicebridge.results import CallTiming, P50Max, TurnLatencySummary, TurnRecord

log = logging.getLogger(__name__)

SILENCE_MAX_BYTES = 10  # an Opus packet this small is silence / comfort noise, not speech
QUIET_S = 0.25  # a party must have been quiet this long before its speech starts a new turn
FRAME_S = 0.02  # the audio one speech packet holds: a stretch of speech ends one frame after its last packet
SIDE = {"caller": "caller", "human": "caller", "cs": "cs"}  # a human who took over speaks for the caller


class TurnLatency:
    """Observer: ``call.on("event", obs.on_event)`` and ``relay.on_packet(obs.on_packet)``; ``summary()``."""

    def __init__(self, now: Callable[[], float], perf: Callable[[], float] = time.perf_counter) -> None:
        self._now = now  # the call's clock (seconds since the call started), the clock of its events
        # The clock of RtpAudio.received_at; a parameter so tests control the relay time they assert on.
        self._perf = perf
        self._last: dict[str, tuple[float, float] | None] = {"caller": None, "cs": None}  # (t, relay_ms)
        self._spoke_after: dict[str, bool] = {"caller": False, "cs": False}  # other side spoke since
        self._calls: dict[tuple[str, str], float] = {}  # (leg, call_id) -> arguments done at
        self._hold_start: dict[str, float | None] = {"caller": None, "cs": None}
        self._outputs_done: dict[str, float | None] = {"caller": None, "cs": None}
        self._tools: dict[str, list[tuple[float, float]]] = {"caller": [], "cs": []}
        self._gating: dict[str, list[tuple[float, float]]] = {"caller": [], "cs": []}
        self._turns: list[TurnRecord] = []  # every candidate turn; `turns` leaves out the talk-overs
        # Per party, its stretches of speech [first packet, last packet + FRAME_S] (a pause < QUIET_S stays
        # inside one): the timeline of the talk-over analysis (lab/timing.py).
        self._speech: dict[str, list[list[float]]] = {"caller": [], "cs": []}

    # -- inputs ----------------------------------------------------------------------------------------
    def on_packet(self, party: str, pkt: RtpAudio) -> None:
        if len(pkt.payload) <= SILENCE_MAX_BYTES:
            return
        side = SIDE.get(party)
        if side is None:
            return
        relay_s = self._perf() - pkt.received_at  # the hook runs after the packet was forwarded
        t = self._now() - relay_s
        other = "cs" if side == "caller" else "caller"
        mine, theirs = self._last[side], self._last[other]
        if theirs is not None and self._spoke_after[side] and (mine is None or t - mine[0] >= QUIET_S):
            self._add_turn(other, side, theirs, (t, relay_s * 1000.0))
        stretches = self._speech[side]
        if stretches and t - (stretches[-1][1] - FRAME_S) < QUIET_S:
            stretches[-1][1] = max(stretches[-1][1], t + FRAME_S)
        else:
            stretches.append([t, t + FRAME_S])
        self._last[side] = (t, relay_s * 1000.0)
        self._spoke_after[side] = False
        self._spoke_after[other] = True

    def on_event(self, record: dict[str, Any]) -> None:
        """A Call "event" record: {t, leg, direction, event}."""
        event = record.get("event") or {}
        kind, leg, t = event.get("type"), record.get("leg"), float(record.get("t", 0.0))
        if leg not in self._hold_start:
            return
        if record.get("direction") == "in" and kind == "response.function_call_arguments.done":
            self._calls[(leg, str(event.get("call_id", "")))] = t
            if self._hold_start[leg] is None:
                self._hold_start[leg] = t
        elif record.get("direction") == "out" and kind == "conversation.item.create":
            item = event.get("item") or {}
            if item.get("type") == "function_call_output":
                start = self._calls.pop((leg, str(item.get("call_id", ""))), None)
                if start is not None:
                    self._tools[leg].append((start, t))
                    self._outputs_done[leg] = t
        elif record.get("direction") == "out" and kind == "response.create":
            held = self._outputs_done[leg] or self._hold_start[leg]
            if held is not None:
                self._gating[leg].append((held, t))
            self._hold_start[leg] = self._outputs_done[leg] = None

    # -- results ---------------------------------------------------------------------------------------
    def _add_turn(self, frm: str, to: str, end: tuple[float, float], start: tuple[float, float]) -> None:
        window = (end[0], start[0])
        tools = _covered(self._tools[to], window)
        gating = _covered(self._gating[to], window)
        relay = end[1] + start[1]
        total = (start[0] - end[0]) * 1000.0
        bridge = tools + gating + relay
        self._turns.append(
            TurnRecord(
                from_=frm,
                to=to,
                speech_end=round(end[0], 4),
                reply_start=round(start[0], 4),
                total_ms=round(total, 2),
                bridge_ms=round(bridge, 3),
                relay_ms=round(relay, 3),
                tools_ms=round(tools, 2),
                gating_ms=round(gating, 2),
                other_ms=round(total - bridge, 2),
            )
        )

    @property
    def turns(self) -> list[TurnRecord]:
        """The replies: candidate turns whose first speech came after the other party had stopped.

        Decided when asked, not when the reply's first packet arrives: only the packets after it tell whether the
        other party was still talking (its stretch of speech, which absorbs pauses shorter than QUIET_S, runs on
        past the reply's first frame)."""
        speech = self._speech
        return [turn for turn in self._turns if not _talked_over(turn, speech[turn.from_])]

    def speech(self) -> dict[str, list[tuple[float, float]]]:
        """Per party, its stretches of speech so far, seconds on the call's clock."""
        return {party: [(a, b) for a, b in stretches] for party, stretches in self._speech.items()}

    def timing(self) -> CallTiming:
        """The timing and talk-over analysis of the call so far (lab/timing.py)."""
        return analyze(self.speech(), self.turns)

    def summary(self) -> TurnLatencySummary:
        turns = self.turns

        def stats(values: list[float]) -> P50Max | None:
            if not values:
                return None
            return P50Max(p50=round(statistics.median(values), 3), max=round(max(values), 3))

        return TurnLatencySummary(
            turns=turns,
            count=len(turns),
            total_ms=stats([t.total_ms for t in turns]),
            bridge_ms=stats([t.bridge_ms for t in turns]),
            relay_ms=stats([t.relay_ms for t in turns]),
        )


def _talked_over(turn: TurnRecord, stretches: list[list[float]]) -> bool:
    """Whether the party the turn came from kept talking past the reply's first frame (the reply was a barge-in).

    Its speech_end (an arrival time) lies in one of its stretches; the reply talked over it when that stretch ends
    more than a frame after the reply started. Times in a TurnRecord are rounded to 0.1 ms, hence the tolerance."""
    tolerance = 1e-4
    for start, end in stretches:
        if start - tolerance <= turn.speech_end <= end + tolerance:
            return end > turn.reply_start + FRAME_S + tolerance
    return False


def _covered(intervals: list[tuple[float, float]], window: tuple[float, float]) -> float:
    """Milliseconds of `window` covered by the union of `intervals`."""
    lo, hi = window
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_a is not None and cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_a is not None and cur_b is not None:
        total += cur_b - cur_a
    return total * 1000.0


def format_turns(latency: TurnLatencySummary) -> list[str]:
    """Lines for `voicebridge call`'s summary output."""
    return [
        f"  turn {turn.from_:>6} -> {turn.to:<6} at {turn.reply_start:6.2f}: {turn.total_ms:7.1f} ms "
        f"(bridge {turn.bridge_ms:.1f} ms: relay {turn.relay_ms:.2f}, tools {turn.tools_ms:.1f}, "
        f"gating {turn.gating_ms:.1f})"
        for turn in latency.turns
    ]


class CallRecording:
    """Records every party of a call off the relay tap: <folder>/<party>.webm, then recording.wav at the end.

    ``t0`` places the files on the call's own timeline (perf_counter at the call's time 0), so positions in
    recording.wav are the times in transcript.json. The end comes in two steps: ``close`` (the tap let go, the
    WebM files finalised; cheap, once the relay has stopped) and ``export`` (recording.wav, decoded in the export
    pool's worker processes, media/wav_export.py, so it costs the bridge's event loop nothing).
    """

    def __init__(self, relay: PacketHooks, folder: Path, t0: float) -> None:
        self.folder = Path(folder)
        self.recorder = Recorder(self.folder, t0=t0)
        self._remove: Callable[[], None] | None = relay.on_packet(self.recorder.feed)
        self.files: dict[str, str] = {}
        self.error: str | None = None

    def close(self) -> None:
        """Stop recording and finalise the WebM files (idempotent); never raises."""
        if self._remove is not None:
            self._remove()
            self._remove = None
        try:
            self.files = {party: path.name for party, path in sorted(self.recorder.close().items())}
        except Exception as e:  # a broken recording must not break the end of the call
            self.error = f"{type(e).__name__}: {e}"
            log.exception("recording in %s could not be finished", self.folder)

    async def export(self, pool: ExportPool = POOL) -> dict[str, str]:
        """recording.wav from the closed files, in the export pool; never raises (the error is kept, the WebM
        files stay listed and on disk)."""
        self.close()
        if self.recorder.paths and self.error is None:
            try:
                wav = await export_wav_off_process(self.recorder.paths, self.folder / "recording.wav", pool)
                self.files["stereo_wav"] = wav.name
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                log.exception("recording in %s: recording.wav not written", self.folder)
        return self.files


# The files every call folder holds (bridge/artifacts.py); the recording's are added once it is finished.
BASE_FILES = {
    "events": "events.jsonl",
    "transcript": "transcript.json",
    "transcript_txt": "transcript.txt",
    "debug": "debug.json",
    "timeline": "timeline.svg",
    "summary": "summary.json",
}


def artifact_files(recording: CallRecording | None) -> dict[str, str]:
    """summary.json "artifacts": name -> file in the call's folder (recording_<party>, recording_wav)."""
    files = dict(BASE_FILES)
    if recording is not None:
        for name, file in recording.files.items():
            files["recording_wav" if name == "stereo_wav" else f"recording_{name}"] = file
    return files

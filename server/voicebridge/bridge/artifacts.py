"""Per-call artifacts: events.jsonl (written as events come, flushed), transcript.json/.txt, debug.json (the
peer connections: SDP, state timeline, stats) and summary.json (written last: once it is there, the rest is).

events.jsonl is the ground truth for debugging: one line per event of either leg, `{t, leg, direction,
event}`, flushed at once so a crash or a killed process still leaves everything up to the last event on
disk.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from voicebridge.lab.timeline_figure import render_timeline
from voicebridge.results import CallSummary, EventRecord, TranscriptLine

log = logging.getLogger(__name__)


@dataclass
class TranscriptEntry:
    """`kind`: "said" (an agent's output transcript) or "heard" (the other leg's transcription of it)."""

    speaker: str
    text: str
    start: float
    end: float
    kind: Literal["said", "heard"] = "said"
    leg: str = ""
    item_id: str = ""
    # For a turn: seconds from the other agent's audio stopping to this turn's audio starting (the response
    # gap a listener hears); None for the first turn and for "heard" entries.
    gap_s: float | None = None
    # For a turn cut off by a barge-in: the ms of its audio that played (conversation.item.truncated).
    played_ms: float | None = None

    def line(self) -> TranscriptLine:
        """This entry as it stands now, as a record (transcript.json, summary.json)."""
        return TranscriptLine(
            gap_s=round(self.gap_s, 3) if self.gap_s is not None else None,
            speaker=self.speaker,
            text=self.text,
            start=round(self.start, 3),
            end=round(self.end, 3),
            kind=self.kind,
            leg=self.leg,
            item_id=self.item_id,
            played_ms=self.played_ms,
        )


class Artifacts:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._events: IO[str] | None = open(self.folder / "events.jsonl", "a", encoding="utf-8")
        self.events_written = 0

    def write_event(self, record: EventRecord) -> None:
        if self._events is None:
            log.debug("event after artifacts closed: %s", record["event"].get("type"))
            return
        self._events.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        self._events.flush()
        self.events_written += 1

    def write_transcript(self, entries: list[TranscriptEntry]) -> None:
        ordered = sorted(entries, key=lambda e: (e.start, e.end))
        _write_json(self.folder / "transcript.json", [e.line().model_dump(mode="json") for e in ordered])
        lines = []
        for e in ordered:
            tag = e.speaker if e.kind == "said" else f"{e.leg} heard {e.speaker}"
            lines.append(f"[{e.start:7.2f} - {e.end:7.2f}] {tag}: {e.text}")
        _write_text(self.folder / "transcript.txt", "\n".join(lines) + ("\n" if lines else ""))

    def write_debug(self, debug: dict[str, Any]) -> None:
        _write_json(self.folder / "debug.json", debug)

    def write_timeline(self, summary: CallSummary) -> None:
        """timeline.svg: the call's timeline figure (voicebridge/lab/timeline_figure.py), before summary.json."""
        _write_text(self.folder / "timeline.svg", render_timeline(summary))

    def write_summary(self, summary: CallSummary) -> None:
        _write_json(self.folder / "summary.json", summary.model_dump(mode="json"))

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


def _write_text(path: Path, text: str) -> None:
    # Write then rename, so a reader never sees half a file.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_events(folder: Path) -> list[dict[str, Any]]:
    """events.jsonl as a list (for tests and tools)."""
    with open(Path(folder) / "events.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

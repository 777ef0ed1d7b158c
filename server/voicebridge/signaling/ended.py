"""What the server keeps of a call once it has ended, and how it reads the rest back from the call's folder.

A live call holds its peer connections (DTLS, SRTP, Opus state), transcript, tool calls, debug timelines and
the event backlog of its watchers: about 2.4 MiB of RSS for a two-line call, all of it still held after the end
while the console lists the call. Once a call has ended and its artifacts are written, the registry
(calls.py) swaps it for an `EndedCall`: the few fields a list row shows and the folder, a few hundred bytes.
The rest is read back from the folder when someone asks for it:

    summary.json     GET /api/calls/{id} (turns, heard, tool calls, legs, relay, per-turn latency)
    debug.json       GET /api/calls/{id}/sdp, /debug, /stats (each leg's SDP, every peer connection's record)
    messages.jsonl   the events WebSocket's backlog (`{"seq", "kind", "data"}` per line, as sent live), so a
                     watcher arriving after the end, or resuming with `?since=N`, gets the same messages

A call that wrote no summary.json (a call object without artifacts, as tests use) keeps its summary and its
backlog in memory instead: there is nothing to read them back from.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
DEBUG_FILE = "debug.json"
MESSAGES_FILE = "messages.jsonl"
EVENTS_FILE = "events.jsonl"


@dataclass(frozen=True, slots=True)
class EndedCall:
    """An ended call as the registry keeps it. Speaks the part of the call interface the routes use (id, state,
    end_reason, summary), so they treat it like any call; there is nothing left to start or hang up."""

    id: str
    scenario: str
    title: str
    end_reason: str | None
    ended_by: str | None
    error: str | None
    started_at: float | None
    duration_s: float | None
    turns: int
    tool_calls: int
    folder: Path | None
    kept_summary: dict[str, Any] | None = None  # only when there is no summary.json to read back

    state = "ended"

    @classmethod
    def of(cls, summary: dict[str, Any], folder: Path | None, scenario: str = "", title: str = "") -> EndedCall:
        """From the call's summary; `folder` is kept only when it holds summary.json (else the summary is)."""
        on_disk = folder is not None and (folder / SUMMARY_FILE).is_file()
        return cls(
            id=str(summary.get("call_id") or ""),
            scenario=str(summary.get("scenario") or scenario),
            title=str(summary.get("title") or title),
            end_reason=_str_or_none(summary.get("end_reason")),
            ended_by=_str_or_none(summary.get("ended_by")),
            error=_str_or_none(summary.get("error")),
            started_at=_float_or_none(summary.get("started_at")),
            duration_s=_float_or_none(summary.get("duration_s")),
            turns=len(summary.get("turns") or []),
            tool_calls=len(summary.get("tool_calls") or []),
            folder=folder if on_disk else None,
            kept_summary=None if on_disk else summary,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> EndedCall | None:
        """An ended call from its folder alone (one the registry no longer lists), or None without summary.json."""
        try:
            summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(summary, dict) or summary.get("call_id") != folder.name:
            return None
        return cls.of(summary, folder)

    # -- the call interface (calls.CallLike) ------------------------------------------------------------------
    def on(self, event: str, f: Callable[..., Any]) -> None:
        """Nothing more happens to an ended call: no listener is ever called."""

    async def start(self) -> None:
        return None

    async def hangup(self, reason: Any = None, by: str = "") -> None:
        return None  # already ended

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        """summary.json, read now (blocking: the routes call it in a thread)."""
        if self.kept_summary is not None:
            return self.kept_summary
        data = self._read_json(SUMMARY_FILE)
        if isinstance(data, dict):
            return data
        # The folder was removed or damaged since: what is still known, and why the rest is missing.
        return {
            "call_id": self.id,
            "scenario": self.scenario,
            "title": self.title,
            "state": "ended",
            "end_reason": self.end_reason,
            "ended_by": self.ended_by,
            "error": self.error,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "turns": [],
            "tool_calls": [],
            "artifacts_error": f"{SUMMARY_FILE} of this call can no longer be read",
        }

    # -- the rest, from disk --------------------------------------------------------------------------------
    def saved_debug(self) -> dict[str, Any]:
        """debug.json (Call.saved_debug): each leg's SDP and every peer connection's record; {} when missing."""
        data = self._read_json(DEBUG_FILE)
        return data if isinstance(data, dict) else {}

    def messages(self) -> list[dict[str, Any]]:
        """The event stream as watchers saw it (messages.jsonl). A folder without one (a call made by
        `voicebridge call` or a batch) gives its events.jsonl as `event` messages, then `ended`."""
        if self.folder is None:
            return []
        saved = read_messages(self.folder / MESSAGES_FILE)
        if saved is not None:
            return saved
        events = read_messages(self.folder / EVENTS_FILE) or []
        out = [{"seq": i, "kind": "event", "data": e} for i, e in enumerate(events, 1)]
        out.append({"seq": len(out) + 1, "kind": "ended", "data": self.summary()})
        return out

    def _read_json(self, name: str) -> Any:
        if self.folder is None:
            return None
        try:
            return json.loads((self.folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("call %s: cannot read %s: %s", self.id, name, e)
            return None


def read_messages(path: Path) -> list[dict[str, Any]] | None:
    """A JSON-lines file as a list of objects (a damaged line is skipped), or None when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError:
        return None
    out: list[dict[str, Any]] = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def write_messages(folder: Path, messages: list[dict[str, Any]], *, append: bool = False) -> None:
    """messages.jsonl, written to a temporary name then renamed (a reader never sees half of it); `append`
    adds to it in place (the few messages published while it was being written)."""
    path = folder / MESSAGES_FILE
    text = "".join(json.dumps(m, separators=(",", ":"), default=str) + "\n" for m in messages)
    if append:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _float_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

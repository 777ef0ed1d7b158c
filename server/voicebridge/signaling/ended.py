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

from pydantic import ValidationError

from voicebridge.results import CallSummary, EndReason, TurnLatencySummary

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
    end_reason: EndReason | None
    ended_by: str | None
    error: str | None
    started_at: float | None
    duration_s: float | None
    turns: int
    tool_calls: int
    folder: Path | None
    kept_summary: CallSummary | None = None  # only when there is no summary.json to read back

    state = "ended"
    relay = None  # nothing is relayed any more

    @classmethod
    def of(cls, summary: CallSummary, folder: Path | None, scenario: str = "", title: str = "") -> EndedCall:
        """From the call's summary; `folder` is kept only when it holds summary.json (else the summary is)."""
        on_disk = folder is not None and (folder / SUMMARY_FILE).is_file()
        return cls(
            id=summary.call_id,
            scenario=summary.scenario or scenario,
            title=summary.title or title,
            end_reason=summary.end_reason,
            ended_by=summary.ended_by,
            error=summary.error,
            started_at=summary.started_at,
            duration_s=summary.duration_s,
            turns=len(summary.turns),
            tool_calls=len(summary.tool_calls),
            folder=folder if on_disk else None,
            kept_summary=None if on_disk else summary,
        )

    @classmethod
    def unknown(
        cls, call_id: str, end_reason: EndReason | None, error: str | None, scenario: str = "", title: str = ""
    ) -> EndedCall:
        """A call that could not give its summary at its end: what the registry knew of it."""
        return cls(call_id, scenario, title, end_reason, None, error, None, None, 0, 0, None)

    @classmethod
    def from_folder(cls, folder: Path) -> EndedCall | None:
        """An ended call from its folder alone (one the registry no longer lists), or None without a readable
        summary.json of that call."""
        try:
            summary = CallSummary.model_validate_json((folder / SUMMARY_FILE).read_bytes())
        except (OSError, ValidationError):
            return None
        if summary.call_id != folder.name:
            return None
        return cls.of(summary, folder)

    # -- the call interface (calls.CallLike) ------------------------------------------------------------------
    def on(self, event: str, f: Callable[..., Any]) -> None:
        """Nothing more happens to an ended call: no listener is ever called."""

    def remove_listener(self, event: str, f: Callable[..., Any]) -> None:
        """No listener was ever added."""

    async def start(self) -> None:
        return None

    async def hangup(self, reason: Any = None, by: str = "") -> None:
        return None  # already ended

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        return None

    def summary(self) -> CallSummary:
        """summary.json, read now (blocking: the routes call it in a thread)."""
        return self.read_summary()[0]

    def read_summary(self) -> tuple[CallSummary, str | None]:
        """summary.json, read now, and None; or, when the folder was removed or damaged since, what is still
        known of the call and why the rest is missing."""
        if self.kept_summary is not None:
            return self.kept_summary, None
        if self.folder is not None:
            try:
                return CallSummary.model_validate_json((self.folder / SUMMARY_FILE).read_bytes()), None
            except (OSError, ValidationError) as e:
                log.warning("call %s: cannot read %s: %s", self.id, SUMMARY_FILE, e)
        known = CallSummary(
            call_id=self.id, scenario=self.scenario, title=self.title, state="ended",
            end_reason=self.end_reason,
            ended_by=self.ended_by, error=self.error, started_at=self.started_at or 0.0,
            duration_s=self.duration_s or 0.0, turns=[], heard={}, tool_calls=[], legs=[], relay=None,
            turn_latency=TurnLatencySummary(turns=[], count=0, total_ms=None, bridge_ms=None, relay_ms=None),
            artifacts={}, events=0, out_dir=str(self.folder or ""),
        )
        return known, f"{SUMMARY_FILE} of this call can no longer be read"

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
        out.append({"seq": len(out) + 1, "kind": "ended", "data": self.summary().model_dump(mode="json")})
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

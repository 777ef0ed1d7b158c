"""A CallSummary for tests that need one without a call: every field filled with a plain value, any of them
given as a keyword (records or their JSON, as CallSummary.model_validate takes them)."""

from __future__ import annotations

from typing import Any

from voicebridge.results import CallSummary

NO_TURN_LATENCY = {"turns": [], "count": 0, "total_ms": None, "bridge_ms": None, "relay_ms": None}


def make_summary(**fields: Any) -> CallSummary:
    base: dict[str, Any] = {
        "call_id": "call_1",
        "scenario": "late_order",
        "title": "A late order",
        "state": "ended",
        "end_reason": "caller_hangup",
        "ended_by": "caller",
        "error": None,
        "started_at": 1_700_000_000.0,
        "duration_s": 3.5,
        "turns": [],
        "heard": {"caller": [], "cs": []},
        "tool_calls": [],
        "legs": [],
        "relay": None,
        "turn_latency": NO_TURN_LATENCY,
        "artifacts": {},
        "events": 0,
        "out_dir": "",
    }
    return CallSummary.model_validate({**base, **fields})


def line(speaker: str, text: str, start: float, end: float, kind: str = "said", **fields: Any) -> dict[str, Any]:
    """A transcript line as JSON (a "said" line on the speaker's own leg unless told otherwise)."""
    return {
        "gap_s": None, "speaker": speaker, "text": text, "start": start, "end": end, "kind": kind,
        "leg": speaker, "item_id": "", "played_ms": None, **fields,
    }


def tool_call(leg: str, name: str, ok: bool = True, duration_ms: float = 1.0, **fields: Any) -> dict[str, Any]:
    """A tool call record as JSON."""
    return {
        "leg": leg, "call_id": f"fc_{name}", "name": name, "arguments": {}, "output": "{}", "ok": ok,
        "error": None if ok else "failed", "duration_ms": duration_ms, "sent": True, "t": 1.0, **fields,
    }

"""A batch's report as data (report.json): headline numbers, then one row per call.

Headline: success rate, end reasons, errors, call duration and set-up percentiles, tool calls and their errors
per tool, per-turn latency percentiles (the summaries' `turn_latency` when they have it, else the gap between
one agent's turn ending and the other's starting). Per call: outcome, transcript, tool calls and links to its
artifacts (paths relative to the report's folder, so the folder can be moved or served as it is).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from voicebridge.observability.metrics import turn_latencies

from .runner import BatchResult, succeeded

REPORT_VERSION = 1
MAX_ERRORS_LISTED = 20
# Artifacts a call folder may hold, in the order the report lists them; recordings come from the summary's
# "artifacts" when the call has them, and from *.webm / *.wav in the folder either way.
_KNOWN_FILES = ("transcript.txt", "transcript.json", "summary.json", "events.jsonl")
_AUDIO_SUFFIXES = (".webm", ".wav", ".ogg")


def percentiles(values: list[float], digits: int = 4) -> dict[str, Any]:
    """count, mean, p50/p90/p99 (nearest rank) and max; just count 0 for no values."""
    v = sorted(float(x) for x in values if isinstance(x, int | float) and math.isfinite(x))
    n = len(v)
    if n == 0:
        return {"count": 0}

    def pct(p: float) -> float:
        return round(v[max(0, min(n - 1, math.ceil(p * n) - 1))], digits)

    return {
        "count": n,
        "mean": round(sum(v) / n, digits),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": round(v[-1], digits),
    }


def _numbers(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float)]


def _links(summary: dict[str, Any], report_dir: Path) -> dict[str, str]:
    """File name -> path relative to the report, for each artifact of the call that exists."""
    folder = Path(str(summary.get("out_dir") or ""))
    found: dict[str, Path] = {}
    if folder.is_dir():
        for name in _KNOWN_FILES:
            if (folder / name).is_file():
                found[name] = folder / name
        for p in sorted(folder.iterdir()):
            if p.suffix in _AUDIO_SUFFIXES and p.is_file():
                found[p.name] = p
    arts = summary.get("artifacts")
    values: list[Any] = []
    if isinstance(arts, dict):
        values = list(arts.values())
    elif isinstance(arts, list):
        values = list(arts)
    for value in values:
        path = value.get("path") if isinstance(value, dict) else value
        if isinstance(path, str) and path:
            p = Path(path) if Path(path).is_absolute() else folder / path
            if p.is_file() and p not in found.values():
                found[p.name] = p
    return {name: os.path.relpath(p, report_dir) for name, p in found.items()}


def _call_row(summary: dict[str, Any], report_dir: Path) -> dict[str, Any]:
    tools = summary.get("tool_calls") or []
    return {
        "call_id": summary.get("call_id"),
        "ok": succeeded(summary),
        "end_reason": summary.get("end_reason"),
        "ended_by": summary.get("ended_by"),
        "error": summary.get("error"),
        "duration_s": summary.get("duration_s"),
        "setup_s": summary.get("setup_s"),
        "turns": [
            {k: t.get(k) for k in ("speaker", "text", "start", "end")} for t in summary.get("turns") or []
        ],
        "turn_latency": [
            {**r, "latency_s": round(r["latency_s"], 4)} for r in turn_latencies(summary)
        ],
        "tool_calls": [
            {
                "leg": c.get("leg"),
                "name": c.get("name"),
                "arguments": c.get("arguments"),
                "ok": c.get("ok"),
                "error": c.get("error"),
                "duration_ms": c.get("duration_ms"),
            }
            for c in tools
        ],
        "links": _links(summary, report_dir),
    }


def _tools(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    by_tool: dict[str, dict[str, Any]] = {}
    durations: dict[str, list[float]] = {}
    for s in summaries:
        for c in s.get("tool_calls") or []:
            name = f"{c.get('leg', '?')}.{c.get('name', '?')}"
            row = by_tool.setdefault(name, {"count": 0, "errors": 0, "error_messages": []})
            row["count"] += 1
            if isinstance(c.get("duration_ms"), int | float):
                durations.setdefault(name, []).append(float(c["duration_ms"]))
            if not c.get("ok"):
                row["errors"] += 1
                msg = str(c.get("error") or c.get("output") or "")[:300]
                if msg not in row["error_messages"] and len(row["error_messages"]) < 5:
                    row["error_messages"].append(msg)
    for name, row in by_tool.items():
        row["duration_ms"] = percentiles(durations.get(name, []), 2)
    return {
        "total": sum(r["count"] for r in by_tool.values()),
        "errors": sum(r["errors"] for r in by_tool.values()),
        "by_tool": dict(sorted(by_tool.items())),
    }


def _turn_latency(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for s in summaries for r in turn_latencies(s)]
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["responder"], []).append(r["latency_s"])
    bridge_ms = [r["bridge_ms"] for r in rows if "bridge_ms" in r]
    return {
        **percentiles([r["latency_s"] for r in rows]),
        # "bridge": measured on the audio by the bridge; "transcript": gaps between transcribed turns
        "source": "+".join(sorted({r["source"] for r in rows})) or None,
        "by_responder": {k: percentiles(v) for k, v in sorted(by.items())},
        "bridge_share_ms": percentiles(bridge_ms, 3),
    }


def build_report(result: BatchResult, report_dir: Path | None = None) -> dict[str, Any]:
    report_dir = Path(report_dir or result.out_dir)
    sums = result.summaries
    ok = [s for s in sums if succeeded(s)]
    reasons = Counter(str(s.get("end_reason")) for s in sums)
    settings = result.settings
    errors = [
        {"call_id": s.get("call_id"), "end_reason": s.get("end_reason"), "error": s.get("error")}
        for s in sums
        if not succeeded(s)
    ]
    return {
        "version": REPORT_VERSION,
        "batch_id": result.batch_id,
        "scenario": result.scenario.name,
        "title": result.scenario.title,
        "backend": "openai" if settings.uses_openai else "emulator",
        "base_url": settings.base_url,
        "model": settings.model,
        "started_at": result.started_at,
        "wall_s": result.wall_s,
        "concurrency": result.concurrency,
        "interrupted": result.interrupted,
        "total": len(sums),
        "succeeded": len(ok),
        "failed": len(sums) - len(ok),
        "success_rate": round(len(ok) / len(sums), 4) if sums else 0.0,
        "end_reasons": dict(reasons.most_common()),
        "errors": errors[:MAX_ERRORS_LISTED],
        "duration_s": percentiles(_numbers(s.get("duration_s") for s in sums), 3),
        "setup_s": percentiles(_numbers(s.get("setup_s") for s in sums)),
        "tool_calls": _tools(sums),
        "turn_latency_s": _turn_latency(sums),
        "calls": [_call_row(s, report_dir) for s in sums],
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The report without its per-call rows (for --json and the console)."""
    return {k: v for k, v in report.items() if k != "calls"}


def write_json(report: dict[str, Any], path: Path) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

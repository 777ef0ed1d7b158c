"""A batch's report as data (report.json): headline numbers, then one row per call.

Headline: success rate, end reasons, errors, creations refused (429/503) and retried, call duration and set-up
percentiles, tool calls and their errors per tool, per-turn latency percentiles (the summaries' `turn_latency`
when they have it, else the gap between one agent's turn ending and the other's starting). Per call: outcome,
transcript, tool calls and links to its artifacts (paths relative to the report's folder, so the folder can be
moved or served as it is).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from voicebridge.lab.report import run_timing
from voicebridge.lab.timing import percentile
from voicebridge.observability.metrics import turn_latencies
from voicebridge.results import (
    BatchCall,
    BatchReport,
    BatchTiming,
    CallError,
    CallRow,
    CallSummary,
    Percentiles,
    SpokenTurn,
    ToolCallBrief,
    ToolCallStats,
    ToolStats,
    TurnGapFigures,
    TurnLatencyStats,
)

from .runner import BatchResult

REPORT_VERSION = 1
MAX_ERRORS_LISTED = 20
# Artifacts a call folder may hold, in the order the report lists them; recordings come from the summary's
# "artifacts" when the call has them, and from *.webm / *.wav in the folder either way.
_KNOWN_FILES = ("transcript.txt", "transcript.json", "summary.json", "events.jsonl")
_AUDIO_SUFFIXES = (".webm", ".wav", ".ogg")


def percentiles(values: Iterable[float | None], digits: int = 4) -> Percentiles:
    """count, mean, p50/p90/p99 (nearest rank) and max of the finite values; just count 0 for none."""
    v = sorted(x for x in values if x is not None and math.isfinite(x))
    n = len(v)
    if n == 0:
        return Percentiles(count=0)

    def pct(p: float) -> float:
        return round(v[max(0, min(n - 1, math.ceil(p * n) - 1))], digits)

    return Percentiles(
        count=n, mean=round(sum(v) / n, digits), p50=pct(0.50), p90=pct(0.90), p99=pct(0.99),
        max=round(v[-1], digits),
    )


def artifact_links(summary: CallSummary, report_dir: Path) -> dict[str, str]:
    """File name -> path relative to the report, for each artifact of the call that exists."""
    folder = Path(summary.out_dir)
    found: dict[str, Path] = {}
    if summary.out_dir and folder.is_dir():
        for name in _KNOWN_FILES:
            if (folder / name).is_file():
                found[name] = folder / name
        for p in sorted(folder.iterdir()):
            if p.suffix in _AUDIO_SUFFIXES and p.is_file():
                found[p.name] = p
        for file in summary.artifacts.values():
            p = folder / file
            if p.is_file() and p not in found.values():
                found[p.name] = p
    return {name: os.path.relpath(p, report_dir) for name, p in found.items()}


def _call_row(call: BatchCall, report_dir: Path) -> CallRow:
    summary, setup_s = call.summary, call.setup_s
    return CallRow(
        refusals=call.refusals,
        call_id=summary.call_id,
        ok=summary.succeeded,
        end_reason=summary.end_reason,
        ended_by=summary.ended_by,
        error=summary.error,
        duration_s=summary.duration_s,
        setup_s=setup_s,
        turns=[SpokenTurn(speaker=t.speaker, text=t.text, start=t.start, end=t.end) for t in summary.turns],
        turn_latency=[
            r.model_copy(update={"latency_s": round(r.latency_s, 4)}) for r in turn_latencies(summary)
        ],
        tool_calls=[
            ToolCallBrief(
                leg=c.leg, name=c.name, arguments=c.arguments, ok=c.ok, error=c.error, duration_ms=c.duration_ms
            )
            for c in summary.tool_calls
        ],
        links=artifact_links(summary, report_dir),
        worker=call.worker,
        attempt=call.attempt,
        lost_worker=call.lost_worker,
        timing=run_timing(summary),
    )


def _tools(summaries: list[CallSummary]) -> ToolCallStats:
    counts: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    messages: dict[str, list[str]] = {}
    durations: dict[str, list[float]] = {}
    for s in summaries:
        for c in s.tool_calls:
            name = f"{c.leg}.{c.name}"
            counts[name] += 1
            durations.setdefault(name, []).append(c.duration_ms)
            listed = messages.setdefault(name, [])
            if not c.ok:
                errors[name] += 1
                msg = (c.error or c.output)[:300]
                if msg not in listed and len(listed) < 5:
                    listed.append(msg)
    by_tool = {
        name: ToolStats(
            count=counts[name], errors=errors[name], error_messages=messages[name],
            duration_ms=percentiles(durations[name], 2),
        )
        for name in sorted(counts)
    }
    return ToolCallStats(total=counts.total(), errors=errors.total(), by_tool=by_tool)


def _turn_latency(summaries: list[CallSummary]) -> TurnLatencyStats:
    rows = [r for s in summaries for r in turn_latencies(s)]
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r.responder, []).append(r.latency_s)
    return TurnLatencyStats(
        **percentiles(r.latency_s for r in rows).model_dump(),
        source="+".join(sorted({r.source for r in rows})) or None,
        by_responder={k: percentiles(v) for k, v in sorted(by.items())},
        bridge_share_ms=percentiles((r.bridge_ms for r in rows), 3),
    )


def _timing(summaries: list[CallSummary]) -> BatchTiming:
    timings = [s.timing for s in summaries if s.timing is not None]
    gaps = [t.gap_ms for tm in timings for t in tm.turns]
    return BatchTiming(
        calls=len(timings),
        overlap_s=percentiles((t.overlap_s for t in timings), 3),
        overlap_ratio=percentiles(t.overlap_ratio for t in timings),
        interruptions=sum(len(t.interruptions) for t in timings),
        calls_with_interruptions=sum(1 for t in timings if t.interruptions),
        time_to_yield_ms=percentiles((c.time_to_yield_ms for t in timings for c in t.interruptions), 1),
        turn_gap_ms=TurnGapFigures(
            p50=percentile(gaps, 50) if gaps else None, p95=percentile(gaps, 95) if gaps else None
        ),
        max_silence_s=percentiles((t.max_silence_s for t in timings), 3),
    )


def _failed_criteria(summary: CallSummary) -> str | None:
    """Why a call that ended well still failed: its criteria that did not pass."""
    failed = [v.name for v in summary.criteria if not v.passed and not v.skipped]
    return f"criteria failed: {', '.join(failed)}" if failed else None


def peak_live(calls: list[BatchCall]) -> int:
    """The most calls live at once: each from its start plus its set-up time (it went live) to its end."""
    edges: list[tuple[float, int]] = []
    for c in calls:
        if c.setup_s is None:
            continue  # never went live
        s = c.summary
        edges += [(s.started_at + c.setup_s, 1), (s.started_at + max(s.duration_s, c.setup_s), -1)]
    live = peak = 0
    for _, step in sorted(edges):  # at a tie an end comes first (-1 < 1): back to back is not at once
        live += step
        peak = max(peak, live)
    return peak


def build_report(result: BatchResult, report_dir: Path | None = None) -> BatchReport:
    report_dir = Path(report_dir or result.out_dir)
    sums = result.summaries
    ok = [s for s in sums if s.succeeded]
    reasons = Counter(str(s.end_reason) for s in sums)
    settings = result.settings
    errors = [
        CallError(call_id=s.call_id, end_reason=s.end_reason, error=s.error or _failed_criteria(s))
        for s in sums
        if not s.succeeded
    ]
    return BatchReport(
        version=REPORT_VERSION,
        batch_id=result.batch_id,
        scenario=result.scenario.name,
        title=result.scenario.title,
        backend="openai" if settings.uses_openai else "emulator",
        base_url=settings.base_url,
        model=settings.model,
        started_at=result.started_at,
        wall_s=result.wall_s,
        concurrency=result.concurrency,
        interrupted=result.interrupted,
        total=len(sums),
        succeeded=len(ok),
        failed=len(sums) - len(ok),
        success_rate=round(len(ok) / len(sums), 4) if sums else 0.0,
        end_reasons=dict(reasons.most_common()),
        errors=errors[:MAX_ERRORS_LISTED],
        duration_s=percentiles((s.duration_s for s in sums), 3),
        setup_s=percentiles(c.setup_s for c in result.calls),
        tool_calls=_tools(sums),
        turn_latency_s=_turn_latency(sums),
        timing=_timing(sums),
        refusals=sum(c.refusals for c in result.calls),
        retried=sum(1 for c in result.calls if c.refusals),
        gave_up=sum(1 for c in result.calls if c.gave_up),
        peak_live=peak_live(result.calls),
        workers=dict(sorted(Counter(c.worker for c in result.calls if c.worker is not None).items())),
        calls=[_call_row(c, report_dir) for c in result.calls],
    )


def write_json(report: BatchReport, path: Path) -> Path:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

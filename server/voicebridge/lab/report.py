"""`voicebridge test`'s verdict as data: one run per (scenario, impairment, repeat), the counts and the pass rate
(report.json, and `--json`'s object on stdout's last line). Built from the typed call results; `voicebridge
compare` reads two of them back with `LabReport.model_validate_json`.

A run's outcome, one rule for the whole lab:
- `error`: the call did not run to an end it can be judged by (end_reason error, leg_failed, shutdown,
  worker_lost, or none): the test could not say anything about the agent;
- `passed`: the call succeeded (CallSummary.succeeded: it ended by hang-up and every criterion that ran passed;
  the rule of `voicebridge call` and `batch`);
- `failed`: anything else (a criterion failed, or the call ended by max_duration / idle_timeout ...).
pass_rate = passed / total, errors included in the total: an error is no pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import JsonValue

from voicebridge.results import CallSummary, ImpairStats, Record, RunTiming, TurnGapFigures

REPORT_VERSION = 1
# The call could not be judged: nothing about the agent is known.
ERROR_END_REASONS = frozenset({"error", "leg_failed", "shutdown", "worker_lost"})
NO_IMPAIRMENT = "good"  # the label of a run without impairment (the `good` profile impairs nothing)

Outcome = Literal["passed", "failed", "error"]


class CriterionResult(Record):
    """One criterion's verdict in a run (CriterionVerdict, as the report shows it)."""

    name: str
    kind: str
    passed: bool
    skipped: bool
    """Did not run (a judge offline): neither passed nor failed; never a failure in JUnit."""
    detail: str
    evidence: JsonValue


class LabRun(Record):
    """One call of the matrix (report.json `runs`)."""

    scenario: str
    impairment: str
    """The --impair profile or spec the run was under (`good`: none)."""
    repeat: int
    """1 to --repeat."""
    call_id: str
    passed: bool
    outcome: Outcome
    end_reason: str | None
    error: str | None
    duration_s: float
    tool_calls: int
    tool_errors: int
    """Tool calls that were not ok (unknown_order expects one)."""
    criteria: list[CriterionResult]
    impairment_applied: dict[str, ImpairStats]
    """What the relay applied per direction (CallSummary.impairment); {} unimpaired."""
    timing: RunTiming | None
    """None when the call has no timing analysis (two WebSocket legs, or it never relayed)."""
    folder: str
    """The call's folder, relative to the report's."""
    links: dict[str, str]
    """Artifact file name -> path relative to the report's folder (recordings, transcript, summary.json)."""
    worker: str | None = None
    """The bridge worker that ran the call (`voicebridge test --redis`); None when the test ran it itself."""
    attempt: int = 1
    """2 when the call ran again after its first worker was lost."""
    refusals: int = 0
    """Times its sessions were refused at creation (a server at capacity: 429/503) before it ran; each was retried
    after the Retry-After, so a refusal alone never fails a run."""
    gave_up: bool = False
    """Still refused after --max-attempts: the run is an error (`end_reason` error), not a verdict on the agent."""

    @property
    def name(self) -> str:
        return run_name(self.scenario, self.impairment, self.repeat)

    @property
    def failed_criteria(self) -> list[CriterionResult]:
        return [c for c in self.criteria if not c.passed and not c.skipped]

    @property
    def why(self) -> str:
        """One line: why the run did not pass ("" when it did)."""
        if self.outcome == "passed":
            return ""
        if self.outcome == "error":
            return f"call ended {self.end_reason}: {self.error or 'no reason given'}"
        failed = self.failed_criteria
        if failed:
            return "criteria failed: " + ", ".join(c.name for c in failed)
        return f"call ended {self.end_reason}" + (f": {self.error}" if self.error else "")


class LabReport(Record):
    """`voicebridge test`'s report (report.json; `--json` prints it whole as stdout's last line)."""

    version: int
    test_id: str
    backend: Literal["openai", "emulator"]
    model: str
    started_at: float
    """Unix seconds."""
    wall_s: float
    concurrency: int
    repeat: int
    scenarios: list[str]
    impairments: list[str]
    min_pass_rate: float
    interrupted: bool
    """Stopped early (Ctrl-C): the report covers the calls that ran."""
    total: int
    passed: int
    failed: int
    errors: int
    pass_rate: float
    """passed / total (0.0 for no runs), 4 decimals."""
    ok: bool
    """pass_rate >= min_pass_rate, and not interrupted: the exit status 0."""
    runs: list[LabRun]
    refusals: int = 0
    """Refusals at creation over every run (servers at capacity); the refused calls were retried."""
    retried: int = 0
    """Runs refused at least once."""
    gave_up: int = 0
    """Runs still refused after --max-attempts (errors)."""


def run_name(scenario: str, impairment: str, repeat: int) -> str:
    """scenario[impairment]#repeat: a run's name in the progress lines, the table and JUnit."""
    return f"{scenario}[{impairment}]#{repeat}"


def outcome(summary: CallSummary) -> Outcome:
    if summary.end_reason is None or summary.end_reason in ERROR_END_REASONS:
        return "error"
    return "passed" if summary.succeeded else "failed"


def run_timing(summary: CallSummary) -> RunTiming | None:
    t = summary.timing
    if t is None:
        return None
    gaps = t.turn_gap_ms
    return RunTiming(
        overlap_s=t.overlap_s,
        overlap_ratio=t.overlap_ratio,
        interruptions=len(t.interruptions),
        time_to_yield_ms=t.time_to_yield_ms,
        turn_gap_ms=TurnGapFigures(p50=gaps.p50 if gaps else None, p95=gaps.p95 if gaps else None),
        max_silence_s=t.max_silence_s,
    )


def lab_run(
    summary: CallSummary, impairment: str, repeat: int, folder: str, links: dict[str, str],
    worker: str | None = None, attempt: int = 1, refusals: int = 0, gave_up: bool = False,
) -> LabRun:
    """One run from its call's typed result; `folder` and `links` relative to the report's folder."""
    result = outcome(summary)
    return LabRun(
        scenario=summary.scenario,
        impairment=impairment,
        repeat=repeat,
        call_id=summary.call_id,
        passed=result == "passed",
        outcome=result,
        end_reason=summary.end_reason,
        error=summary.error,
        duration_s=summary.duration_s,
        tool_calls=len(summary.tool_calls),
        tool_errors=sum(not c.ok for c in summary.tool_calls),
        criteria=[
            CriterionResult(
                name=v.name, kind=v.kind, passed=v.passed, skipped=v.skipped, detail=v.detail, evidence=v.evidence
            )
            for v in summary.criteria
        ],
        impairment_applied=dict(summary.impairment or {}),
        timing=run_timing(summary),
        folder=folder,
        links=links,
        worker=worker,
        attempt=attempt,
        refusals=refusals,
        gave_up=gave_up,
    )


def tally(runs: Iterable[LabRun]) -> tuple[int, int, int, int, float]:
    """(total, passed, failed, errors, pass_rate) of some runs."""
    rows = list(runs)
    passed = sum(r.outcome == "passed" for r in rows)
    failed = sum(r.outcome == "failed" for r in rows)
    errors = len(rows) - passed - failed
    return len(rows), passed, failed, errors, round(passed / len(rows), 4) if rows else 0.0


def refusal_counts(runs: Iterable[LabRun]) -> dict[str, int]:
    """LabReport's `refusals` (over every run), `retried` (runs refused at least once), `gave_up`."""
    rows = list(runs)
    return {
        "refusals": sum(r.refusals for r in rows),
        "retried": sum(1 for r in rows if r.refusals),
        "gave_up": sum(1 for r in rows if r.gave_up),
    }


def verdict(pass_rate: float, min_pass_rate: float, interrupted: bool) -> bool:
    # Rounded to 4 decimals like pass_rate itself: 2/3 meets --min-pass-rate 0.6667.
    return not interrupted and pass_rate >= round(min_pass_rate, 4)

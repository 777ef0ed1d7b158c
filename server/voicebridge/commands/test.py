"""`voicebridge test [SCENARIO ...] [--impair P ...] [--repeat N] [--concurrency C] [--out DIR] [--junit FILE]
[--min-pass-rate R] [--json] [--redis URL]`: every scenario under every impairment N times, each call judged by its
scenario's pass criteria; the matrix runs on the batch runner (batch/cli.py run_calls), with its progress bar, or
with --redis on the cluster's workers (each cell a job carrying its scenario, impairment, seed and repeat;
cluster/batches.py lab_job), the report saying which worker ran each call.

Writes into DIR: report.json (lab/report.py LabReport), report.html, batch.log.jsonl and calls/<call_id>/; with
--junit, JUnit XML (lab/junit.py). Exit status: 0 when the pass rate meets --min-pass-rate, 1 when it does not
(or the run was interrupted), 2 for bad arguments or a bad scenario (reported before any call is placed), or a
Redis that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from voicebridge import eventloop
from voicebridge.batch.cli import run_calls
from voicebridge.batch.lab_html import render_lab
from voicebridge.batch.progress import ProgressBar
from voicebridge.batch.report import artifact_links
from voicebridge.batch.runner import BatchResult, call_id, new_batch_id
from voicebridge.lab.criteria import check_scenario
from voicebridge.lab.junit import junit_xml
from voicebridge.lab.report import (
    NO_IMPAIRMENT,
    REPORT_VERSION,
    LabReport,
    LabRun,
    lab_run,
    refusal_counts,
    run_name,
    tally,
    verdict,
)
from voicebridge.scenarios.model import Scenario, ScenarioError, builtin_names, load_scenario

from .call import with_impairment

EXIT_BAD_SCENARIO = 2


@dataclass(frozen=True)
class Job:
    """One call of the matrix: the scenario as it will run (impairment and seed applied) and its labels."""

    scenario: Scenario
    impairment: str
    repeat: int


def default_scenarios() -> list[str]:
    """The built-in scenarios that have pass criteria."""
    return [name for name in builtin_names() if load_scenario(name).expect]


def load_all(names: list[str]) -> list[Scenario]:
    """Every scenario loaded and its criteria checked before any call; ScenarioError names each bad one."""
    scenarios, problems = [], []
    for name in names:
        try:
            scenario = load_scenario(name)
            check_scenario(scenario)
            scenarios.append(scenario)
        except ScenarioError as e:
            problems.append(str(e))
    if problems:
        raise ScenarioError("\n  ".join(problems))
    seen: dict[str, str] = {}
    for name, s in zip(names, scenarios, strict=True):
        if s.name in seen:  # the report's rows are keyed by name
            raise ScenarioError(f"{name}: scenario name {s.name!r} is also that of {seen[s.name]}")
        seen[s.name] = name
    return scenarios


def matrix(scenarios: list[Scenario], impairments: list[str], repeat: int, seed: int | None) -> list[Job]:
    """Repeat by repeat, so that the first calls already cover every scenario x impairment. Repeat r is impaired
    with seed + r - 1: same command, same packets lost; repeats are not copies of one another."""
    jobs = []
    for r in range(1, repeat + 1):
        for scenario in scenarios:
            for impair in list[str | None](impairments) or [None]:
                base = scenario.impair_seed if seed is None else seed
                run = with_impairment(scenario, impair, base + r - 1)
                jobs.append(Job(run, impair if impair is not None else scenario.impair or NO_IMPAIRMENT, r))
    return jobs


def build_report(
    result: BatchResult, jobs: list[Job], test_id: str, args: argparse.Namespace, names: list[str],
    impairments: list[str],
) -> LabReport:
    out_dir = result.out_dir
    by_id = {call_id(test_id, i): job for i, job in enumerate(jobs)}
    runs: list[LabRun] = []
    for c in result.calls:
        job = by_id[c.summary.call_id]
        folder = os.path.relpath(c.summary.out_dir or out_dir / "calls" / c.summary.call_id, out_dir)
        links = artifact_links(c.summary, out_dir)
        runs.append(
            lab_run(
                c.summary, job.impairment, job.repeat, folder, links, c.worker, c.attempt, c.refusals, c.gave_up
            )
        )
    total, passed, failed, errors, pass_rate = tally(runs)
    settings = result.settings
    return LabReport(
        version=REPORT_VERSION, test_id=test_id, backend="openai" if settings.uses_openai else "emulator",
        model=settings.model, started_at=result.started_at, wall_s=result.wall_s, concurrency=result.concurrency,
        repeat=args.repeat, scenarios=names, impairments=impairments, min_pass_rate=args.min_pass_rate,
        interrupted=result.interrupted, total=total, passed=passed, failed=failed, errors=errors,
        pass_rate=pass_rate, ok=verdict(pass_rate, args.min_pass_rate, result.interrupted), runs=runs,
        **refusal_counts(runs),
    )


def write_text(path: Path, text: str) -> None:
    """Whole or not at all: a CI job never reads half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def print_table(report: LabReport, out_dir: Path, stream: TextIO) -> None:
    print(
        f"\ntest {report.test_id} ({report.backend}): {report.passed}/{report.total} passed "
        f"({report.pass_rate * 100:.1f}%, needed {report.min_pass_rate * 100:.1f}%), {report.failed} failed, "
        f"{report.errors} errors in {report.wall_s:.1f} s",
        file=stream,
    )
    if report.refusals:
        print(
            f"  refused at creation (server at capacity): {report.refusals} times, {report.retried} runs retried, "
            f"{report.gave_up} gave up",
            file=stream,
        )
    cells: dict[tuple[str, str], list[LabRun]] = {}
    for r in report.runs:
        cells.setdefault((r.scenario, r.impairment), []).append(r)
    width = max((len(f"{s}[{i}]") for s, i in cells), default=10)
    for (scenario, impairment), runs in cells.items():
        _, passed, _, _, rate = tally(runs)
        print(f"  {f'{scenario}[{impairment}]':<{width}}  {passed}/{len(runs)} passed ({rate * 100:.0f}%)",
              file=stream)
        for r in runs:
            if r.outcome == "error":
                print(f"    #{r.repeat} {r.call_id} ERROR {r.why}", file=stream)
            for c in r.failed_criteria:
                print(f"    #{r.repeat} {r.call_id} FAIL {c.name} [{c.kind}]: {c.detail}", file=stream)
            if r.outcome == "failed" and not r.failed_criteria:
                print(f"    #{r.repeat} {r.call_id} FAIL {r.why}", file=stream)
    print(f"report: {out_dir / 'report.html'}", file=stream, flush=True)


async def _main(args: argparse.Namespace) -> int:
    names = list(args.scenarios) or default_scenarios()
    scenarios = load_all(names)
    impairments = [i.strip() for i in args.impair]
    jobs = matrix(scenarios, impairments, args.repeat, args.impair_seed)  # a bad --impair: ScenarioError
    test_id = new_batch_id().replace("batch_", "test_", 1)
    out_dir = Path(args.out) if args.out is not None else Path("lab-runs") / test_id
    runs = {call_id(test_id, i): run_name(j.scenario.name, j.impairment, j.repeat) for i, j in enumerate(jobs)}
    bar = ProgressBar(sys.stderr, len(jobs), name=lambda s: f"{runs.get(s.call_id, '?')} {s.call_id}")
    redis_url: str = getattr(args, "redis", "")
    try:
        if redis_url:
            from voicebridge.batch.cli import run_cluster_calls
            from voicebridge.cluster.batches import lab_job

            queued = [lab_job(j.scenario, test_id, i, j.repeat) for i, j in enumerate(jobs)]  # all checked first
            result = await run_cluster_calls(
                jobs[0].scenario, len(jobs), args.concurrency, out_dir, redis_url=redis_url, batch_id=test_id,
                progress=bar, make_job=queued.__getitem__,
            )
        else:
            result = await run_calls(
                [j.scenario for j in jobs], args.concurrency, out_dir, emulator_url=args.emulator_url,
                batch_id=test_id, progress=bar, emulator_workers=getattr(args, "emulator_workers", None),
            )
    finally:
        bar.close()
    report = build_report(result, jobs, test_id, args, [s.name for s in scenarios], impairments)
    write_text(out_dir / "report.json", json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    write_text(out_dir / "report.html", render_lab(report))
    if args.junit is not None:
        write_text(args.junit, junit_xml(report))
    print_table(report, out_dir, sys.stderr)
    if args.json:
        print(json.dumps(report.model_dump(mode="json")), flush=True)
    return 0 if report.ok else 1


def main(args: argparse.Namespace) -> int:
    if getattr(args, "redis", ""):
        from voicebridge.extras import require

        require("cluster", "voicebridge test --redis")
    try:
        return eventloop.run(_main(args))
    except ScenarioError as e:
        print(f"voicebridge test: bad scenario: {e}", file=sys.stderr)
        return EXIT_BAD_SCENARIO
    except OSError as e:
        print(f"voicebridge test: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # ClusterUnavailable (the cluster module is imported only with --redis)
        if type(e).__name__ != "ClusterUnavailable":
            raise
        print(f"voicebridge test: {e}", file=sys.stderr)
        return EXIT_BAD_SCENARIO

"""`voicebridge batch --scenario X --calls N --concurrency C [--out DIR] [--json] [--emulator-url URL | --redis URL]`

Runs N agent-to-agent calls, C at a time, against the embedded emulator (or OpenAI when OPENAI_API_KEY is set),
or with `--redis` on the cluster's bridge workers (cluster/batches.py: each call runs on a worker, the report is
written here and says which worker ran each call),
with a progress bar on stderr, and writes into DIR: report.html (self-contained), report.json, batch.log.jsonl
(structured logs, each line with its call_id) and calls/<call_id>/ (each call's artifacts). Exit status: 0 when
every call ended by hang-up, 1 when any did not, 2 for bad arguments or a bad scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from typing_extensions import TypedDict, Unpack

from voicebridge import eventloop
from voicebridge.backend import realtime_backend
from voicebridge.extras import require
from voicebridge.lab.criteria import check_scenario
from voicebridge.lab.timeline_figure import render_timeline
from voicebridge.observability.logs import json_handler
from voicebridge.observability.metrics import Metrics
from voicebridge.results import BatchReport
from voicebridge.scenarios.model import Scenario, ScenarioError, load_scenario

from .args import EMULATOR_WORKERS
from .html import render
from .progress import ProgressBar
from .report import build_report, write_json
from .runner import (
    BatchResult,
    BatchRunner,
    CallFactory,
    Progress,
    RetryPolicy,
    default_call_factory,
    new_batch_id,
)

if TYPE_CHECKING:
    from voicebridge.cluster.jobs import Job


def write_report(result: BatchResult) -> BatchReport:
    """report.json and report.html into the batch folder; returns the report."""
    report = build_report(result, result.out_dir)
    write_json(report, result.out_dir / "report.json")
    tmp = result.out_dir / "report.html.tmp"
    # A figure for each call that relayed audio (one that never started has nothing to draw).
    figures = {c.summary.call_id: render_timeline(c.summary) for c in result.calls if c.summary.timing is not None}
    tmp.write_text(render(report, figures), encoding="utf-8")
    tmp.replace(result.out_dir / "report.html")
    return report


class RunOptions(TypedDict, total=False):
    """How `run_calls` runs its calls (`run_batch` passes them on)."""

    emulator_url: str  # an emulator already running; "" for the usual choice (backend.py)
    emulator_workers: str | None  # --emulator-workers (backend.py); None: VOICEBRIDGE_EMULATOR_WORKERS or default
    batch_id: str | None
    progress: Progress | None
    metrics: Metrics | None
    call_factory: CallFactory
    retry: RetryPolicy | None


async def run_batch(
    scenario: Scenario, calls: int, concurrency: int, out_dir: Path, **options: Unpack[RunOptions]
) -> tuple[BatchResult, BatchReport]:
    """The whole batch: backend up, calls run, report written, backend down. Ctrl-C (SIGINT) stops starting
    calls and hangs up the live ones; the report covers what ran."""
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    result = await run_calls([scenario] * calls, concurrency, out_dir, **options)
    return result, write_report(result)


async def run_calls(
    scenarios: Sequence[Scenario], concurrency: int, out_dir: Path, **options: Unpack[RunOptions]
) -> BatchResult:
    """One call of each scenario (`batch`: N times the same one; `test`: its matrix), `concurrency` at a time,
    with the backend up for them, structured logs in `out_dir/batch.log.jsonl` and Ctrl-C (SIGINT) hanging up
    the live calls; the result covers what ran (call i is `runner.call_id(i)`)."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before any call: nothing to block)
    distinct = list({s.path or s.name: s for s in scenarios}.values())
    async with realtime_backend(
        distinct, options.get("emulator_url", ""), emulator_workers_flag=options.get("emulator_workers"),
        emulator_workers_default=EMULATOR_WORKERS, emulator_log=out_dir / "emulator.log",
    ) as backend:
        settings = backend.settings
        runner = BatchRunner(
            scenarios[0], settings, out_dir, concurrency=concurrency, batch_id=options.get("batch_id"),
            metrics=options.get("metrics"), progress=options.get("progress"),
            call_factory=options.get("call_factory", default_call_factory), retry=options.get("retry"),
        )
        with batch_log(out_dir, [settings.api_key]), stopped_by_ctrl_c(runner.stop):
            return await runner.run_each(scenarios)


async def run_cluster_batch(
    scenario: Scenario,
    calls: int,
    concurrency: int,
    out_dir: Path,
    *,
    redis_url: str,
    batch_id: str | None = None,
    progress: Progress | None = None,
) -> tuple[BatchResult, BatchReport]:
    """The whole batch on the cluster's workers (`--redis`): jobs queued, results read, report written here."""
    result = await run_cluster_calls(
        scenario, calls, concurrency, out_dir, redis_url=redis_url, batch_id=batch_id, progress=progress
    )
    return result, write_report(result)


async def run_cluster_calls(
    scenario: Scenario,
    calls: int,
    concurrency: int,
    out_dir: Path,
    *,
    redis_url: str,
    batch_id: str | None = None,
    progress: Progress | None = None,
    make_job: Callable[[int], Job] | None = None,
) -> BatchResult:
    """`calls` calls on the cluster's workers, each `make_job(i)`'s (`voicebridge test`'s matrix) or else one of
    `scenario`; the result covers what ran, each call with its worker. Ctrl-C (SIGINT) queues no more."""
    from voicebridge.cluster.batches import ClusterBatch, cluster_settings, connect
    from voicebridge.cluster.jobs import JobQueue

    client = await connect(redis_url)  # ClusterUnavailable before any folder is made
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before any call: nothing to block)
    settings = cluster_settings(redis_url)
    batch = ClusterBatch(
        JobQueue(client), scenario, settings, out_dir, concurrency=concurrency, batch_id=batch_id or new_batch_id(),
        progress=progress, make_job=make_job,
    )
    try:
        with batch_log(out_dir, [settings.api_key]), stopped_by_ctrl_c(batch.stop):
            return await batch.run(calls)
    finally:
        await client.aclose()


@contextlib.contextmanager
def batch_log(out_dir: Path, secrets: list[str]) -> Iterator[None]:
    """The batch's structured log lines (INFO and up, redacted of `secrets`) into out_dir/batch.log.jsonl."""
    log_file = open(out_dir / "batch.log.jsonl", "a", encoding="utf-8")
    handler = json_handler(log_file, secrets)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
        log_file.close()


@contextlib.contextmanager
def stopped_by_ctrl_c(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C (SIGINT) calls `stop` (no new calls; the report covers what ran) instead of killing the batch."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop)
    try:
        yield
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


def print_headline(report: BatchReport, out_dir: Path, stream: TextIO) -> None:
    print(
        f"\nbatch {report.batch_id} ({report.scenario}, {report.backend}): "
        f"{report.succeeded}/{report.total} ok ({report.success_rate * 100:.1f}%) in {report.wall_s:.1f} s",
        file=stream,
    )
    print(f"  end reasons: {json.dumps(report.end_reasons)}", file=stream)
    if report.refusals:
        print(
            f"  refused at creation (server at capacity): {report.refusals} times, {report.retried} calls "
            f"retried, {report.gave_up} gave up",
            file=stream,
        )
    print(f"  peak live calls at once: {report.peak_live} (concurrency {report.concurrency})", file=stream)
    if report.workers:
        print(f"  calls per worker: {json.dumps(report.workers)}", file=stream)
    d, tl = report.duration_s, report.turn_latency_s
    if d.count:
        print(f"  call duration p50 {d.p50:.2f} s, p99 {d.p99:.2f} s", file=stream)
    if tl.count:
        print(f"  turn latency p50 {tl.p50:.3f} s, p90 {tl.p90:.3f} s, p99 {tl.p99:.3f} s", file=stream)
    print(f"  tool calls: {report.tool_calls.total} ({report.tool_calls.errors} errors)", file=stream)
    for e in report.errors[:5]:
        print(f"  failed: {e.call_id} {e.end_reason}: {e.error}", file=stream)
    print(f"report: {out_dir / 'report.html'}", file=stream, flush=True)


async def _main(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    check_scenario(scenario)  # bad criteria are scenario errors before any call is placed
    batch_id = new_batch_id()
    out_dir = Path(args.out) if args.out is not None else Path("batches") / batch_id
    bar = ProgressBar(sys.stderr, args.calls)
    try:
        if args.redis:
            result, report = await run_cluster_batch(
                scenario, args.calls, args.concurrency, out_dir, redis_url=args.redis, batch_id=batch_id,
                progress=bar,
            )
        else:
            result, report = await run_batch(
                scenario, args.calls, args.concurrency, out_dir, emulator_url=args.emulator_url,
                batch_id=batch_id, progress=bar, retry=RetryPolicy(attempts=args.max_attempts),
                emulator_workers=args.emulator_workers,
            )
    finally:
        bar.close()
    print_headline(report, out_dir, sys.stderr)
    if args.json:
        print(json.dumps({**report.headline(), "report_html": str(out_dir / "report.html"),
                          "report_json": str(out_dir / "report.json")}))
    return 0 if report.failed == 0 and not result.interrupted else 1


def main(args: argparse.Namespace) -> int:
    require("reports")  # before the calls, not after them
    if args.redis:
        require("cluster", "voicebridge batch --redis")
    try:
        return eventloop.run(_main(args))
    except ScenarioError as e:
        print(f"voicebridge batch: bad scenario: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"voicebridge batch: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # ClusterUnavailable (the cluster module is imported only with --redis)
        if type(e).__name__ != "ClusterUnavailable":
            raise
        print(f"voicebridge batch: {e}", file=sys.stderr)
        return 2

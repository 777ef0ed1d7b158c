"""`voicebridge soak [--sequential N] [--retained R] [--kept-whole K] [--concurrent C] [--json]`: many short calls
against the embedded emulator, then a check that nothing was left behind.

Phases: warm-up (a few calls, so caches, lazy imports and pools are allocated before the baseline), then N
calls one after another (the batch runner: nothing keeps them once ended), then R calls through the server's
own registry with its ended calls kept listed and K more kept whole (soak_registry.py: RSS per ended call,
judged against the first phase as baseline), then C calls at once. The bar: zero failed calls, and after the
calls, file descriptors, asyncio tasks, threads and live RTCPeerConnection objects back near the baseline,
and RSS within a bound of it (CPython rarely returns freed memory to the OS, so RSS is checked for growth,
not equality).
The emulator runs in a process of its own by default (`--emulator process`: the bridge is what is soaked, and
two interpreters share the CPU's cores instead of one GIL); its descriptors, threads and RSS are checked too.
With `embedded` both sides live in this process (what the short soak in `make test` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from voicebridge import eventloop
from voicebridge.backend import realtime_backend
from voicebridge.extras import require
from voicebridge.observability.logs import setup_logging_from_env
from voicebridge.observability.metrics import Metrics
from voicebridge.observability.resources import Resources
from voicebridge.results import BatchCall, CallError, CallSummary
from voicebridge.scenarios.model import Scenario, load_scenario

from .emulator_process import EmulatorProcess, ProcessResources, emulator_process
from .progress import ProgressBar
from .runner import BatchRunner
from .soak_registry import CallNote, RegistryFigures, judge, per_100_calls, registry_phases, rss_mb

log = logging.getLogger(__name__)

SOAK_SCENARIO = "quick_bye"
SETTLE_S = 15.0  # how long closing transports may take to give their sockets and tasks back


@dataclass(frozen=True)
class Limits:
    fds: int = 8
    tasks: int = 3
    threads: int = 2
    rss_mb: float = 96.0


@dataclass
class SoakResult:
    sequential: int
    concurrent: int
    calls: int = 0
    failed: int = 0
    failures: list[CallError] = field(default_factory=list)
    end_reasons: dict[str, int] = field(default_factory=dict)
    baseline: Resources | None = None
    after_sequential: Resources | None = None
    after: Resources | None = None
    emulator: str = "embedded"
    emulator_baseline: ProcessResources | None = None
    emulator_after: ProcessResources | None = None
    emulator_sessions_left: int = 0
    rss_trace_mb: list[float] = field(default_factory=list)  # this process, after each sequential call
    rss_slope_mb_per_call: float | None = None  # over the second half of the sequential calls
    retained: int = 0  # calls through the server's registry, ended calls kept listed
    kept_whole: int = 0  # calls whose ended Call objects are kept whole (the reference)
    retained_listed: int = 0
    retained_rss_trace_mb: list[float] = field(default_factory=list)
    whole_rss_trace_mb: list[float] = field(default_factory=list)
    rss_per_100_calls: RegistryFigures = field(default_factory=RegistryFigures)  # MiB, median slopes
    registry_s: float = 0.0
    load_average: list[list[float]] = field(default_factory=list)  # os.getloadavg() at the start and the end
    wall_s: float = 0.0
    sequential_s: float = 0.0
    concurrent_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [f.model_dump(mode="json") for f in self.failures]
        d["ok"] = self.ok
        return d


def _within(base: Resources, now: Resources, limits: Limits) -> bool:
    return (
        now.fds - base.fds <= limits.fds
        and now.tasks - base.tasks <= limits.tasks
        and now.threads - base.threads <= limits.threads
        and now.os_threads - base.os_threads <= limits.threads + _pool_allowance()
        and now.peer_connections <= base.peer_connections
    )


async def settle(base: Resources, limits: Limits, within_s: float = SETTLE_S) -> Resources:
    """Measure until the figures are back within limits of `base`, or `within_s` has passed (then the last
    measurement, for the report). Closing transports hand back sockets and end tasks a few loop turns after
    close() returns, and there is no event for "everything has let go": so this polls, bounded."""
    deadline = time.monotonic() + within_s
    while True:
        now = Resources.now()
        if _within(base, now, limits) or time.monotonic() >= deadline:
            return now
        await asyncio.sleep(0.2)


def _check(result: SoakResult, base: Resources, now: Resources, limits: Limits, when: str) -> None:
    def over(what: str, before: float, after: float, limit: float) -> None:
        if after - before > limit:
            result.problems.append(f"{when}: {what} {before} -> {after} (more than +{limit})")

    over("file descriptors", base.fds, now.fds, limits.fds)
    over("asyncio tasks", base.tasks, now.tasks, limits.tasks)
    over("threads", base.threads, now.threads, limits.threads)
    over("OS threads", base.os_threads, now.os_threads, limits.threads + _pool_allowance())
    over("RSS MB", base.rss_mb, now.rss_mb, limits.rss_mb)
    over("RTCPeerConnection objects", base.peer_connections, now.peer_connections, 0)


async def _settle_child(
    child: EmulatorProcess, base: ProcessResources, limits: Limits, within_s: float = SETTLE_S
) -> ProcessResources | None:
    """As settle(), for the emulator process (its sessions close a little after the bridge hangs up); like
    Resources.now() it measures after a full garbage collection (asked of the child by signal)."""
    deadline = time.monotonic() + within_s
    while True:
        now = await _child_measure(child)
        if now is None or _child_within(base, now, limits) or time.monotonic() >= deadline:
            return now


async def _child_measure(child: EmulatorProcess) -> ProcessResources | None:
    child.collect_garbage()
    await asyncio.sleep(0.2)  # the child collects between two bytecodes of its loop: give it that moment
    return child.resources()


def _pool_allowance() -> int:
    # A default executor may keep up to this many idle workers (asyncio's own bound); /proc cannot tell them
    # from other threads.
    return min(32, (os.cpu_count() or 1) + 4)


def _child_within(base: ProcessResources, now: ProcessResources, limits: Limits) -> bool:
    return now.fds - base.fds <= limits.fds and now.threads - base.threads <= limits.threads + _pool_allowance()


def _check_child(
    result: SoakResult, base: ProcessResources, now: ProcessResources | None, limits: Limits
) -> None:
    if now is None:
        result.problems.append("the emulator process is gone")
        return
    if now.fds - base.fds > limits.fds:
        result.problems.append(f"emulator process: file descriptors {base.fds} -> {now.fds}")
    if now.threads - base.threads > limits.threads + _pool_allowance():
        result.problems.append(f"emulator process: threads {base.threads} -> {now.threads}")
    if now.rss_mb - base.rss_mb > limits.rss_mb:
        result.problems.append(f"emulator process: RSS {base.rss_mb} -> {now.rss_mb} MB")


def _slope(values: list[float]) -> float | None:
    """Least-squares slope per step (MB per call), or None for fewer than 10 points."""
    n = len(values)
    if n < 10:
        return None
    mx, my = (n - 1) / 2.0, sum(values) / n
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(n))
    return round(num / den, 3)


async def soak(
    sequential: int,
    concurrent: int,
    *,
    scenario: Scenario | None = None,
    warmup: int = 2,
    limits: Limits | None = None,
    out_dir: Path | None = None,
    metrics: Metrics | None = None,
    progress: TextIO | None = None,
    emulator: str = "embedded",
    retained: int = 0,
    kept_whole: int = 0,
) -> SoakResult:
    """Run the soak; artifacts go to `out_dir` (a temporary folder, removed afterwards, when None).
    `emulator`: "embedded" (in this process) or "process" (a child process). `retained` and `kept_whole`: the
    registry phases' calls (soak_registry.py), after the sequential ones."""
    if emulator not in ("embedded", "process"):
        raise ValueError(f"emulator must be 'embedded' or 'process', got {emulator!r}")
    scenario = scenario or load_scenario(SOAK_SCENARIO)
    limits = limits or Limits()
    result = SoakResult(
        sequential=sequential, concurrent=concurrent, emulator=emulator, retained=retained, kept_whole=kept_whole
    )
    result.load_average.append([round(x, 2) for x in os.getloadavg()])
    tmp = None if out_dir is not None else Path(tempfile.mkdtemp(prefix="voicebridge-soak-"))
    folder = out_dir if out_dir is not None else tmp
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    notes: list[CallNote] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            child: EmulatorProcess | None = None
            if emulator == "process":
                child = await stack.enter_async_context(emulator_process([scenario], folder / "emulator.log"))
            backend = await stack.enter_async_context(
                realtime_backend(
                    [scenario], child.url if child else "", force_emulator=True, emulator_workers_flag="0"
                )
            )
            settings, embedded = backend.settings, backend.emulator

            async def phase(name: str, calls: int, concurrency: int) -> None:
                bar = ProgressBar(progress, calls, f"{name} calls") if progress is not None else None

                def report(done: int, total: int, summary: CallSummary) -> None:
                    if bar is not None:
                        bar(done, total, summary)

                def keep(call: BatchCall) -> bool:
                    notes.append(CallNote.of(call.summary))
                    if name == "sequential":
                        # As Resources.now(): after the cyclic GC (an ended call's objects form cycles that a
                        # big heap collects only now and then) and malloc_trim, so the trend is memory in use.
                        result.rss_trace_mb.append(rss_mb())
                    return False  # the note is all the soak keeps of a call

                runner = BatchRunner(
                    scenario, settings, folder / name, concurrency=concurrency, batch_id=f"soak_{name}",
                    metrics=metrics, progress=report, keep=keep,
                )
                try:
                    if calls:
                        await runner.run(calls)
                finally:
                    if bar is not None:
                        bar.close()

            if warmup:
                await phase("warmup", warmup, 1)
                notes.clear()  # warm-up calls prepare the baseline; they are not judged
            result.baseline = base = await settle(Resources.now(), limits, 5.0)
            result.emulator_baseline = await _child_measure(child) if child else None
            ts = time.monotonic()
            await phase("sequential", sequential, 1)
            result.sequential_s = round(time.monotonic() - ts, 2)
            result.after_sequential = await settle(base, limits)
            _check(result, base, result.after_sequential, limits, "after the sequential calls")
            registry: Any = None  # the server's app: its registry keeps the retained calls to the end of the soak
            if retained or kept_whole:
                ts = time.monotonic()
                bars: dict[str, ProgressBar] = {}

                def registry_progress(name: str, done: int, total: int, summary: CallSummary) -> None:
                    if progress is not None:
                        bar = bars.setdefault(name, ProgressBar(progress, total, f"{name} calls"))
                        bar(done, total, summary)
                        if done == total:
                            bar.close()

                run = await registry_phases(
                    scenario, settings, folder / "registry", retained, kept_whole, registry_progress
                )
                registry = run.app
                result.registry_s = round(time.monotonic() - ts, 2)
                notes.extend(run.notes)
                result.retained_listed = run.listed
                result.retained_rss_trace_mb = run.retained_trace_mb
                result.whole_rss_trace_mb = run.whole_trace_mb
                result.problems += run.problems
                figures = result.rss_per_100_calls
                figures.baseline = per_100_calls(result.rss_trace_mb)
                figures.retained = per_100_calls(run.retained_trace_mb)
                figures.kept_whole = per_100_calls(run.whole_trace_mb, second_half=False)
                problem = judge(figures, retained, kept_whole)
                if problem is not None:
                    result.problems.append(problem)
            ts = time.monotonic()
            await phase("concurrent", concurrent, concurrent)
            result.concurrent_s = round(time.monotonic() - ts, 2)
            result.after = await settle(base, limits)
            _check(result, base, result.after, limits, "after the concurrent calls")
            if child is not None and result.emulator_baseline is not None:
                result.emulator_after = await _settle_child(child, result.emulator_baseline, limits)
                _check_child(result, result.emulator_baseline, result.emulator_after, limits)
            result.emulator_sessions_left = len(embedded.sessions) if embedded is not None else 0
            if result.emulator_sessions_left:
                result.problems.append(f"{result.emulator_sessions_left} emulator session(s) still open")
            del registry  # the retained calls were measured with everything else above: now they may go
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    result.calls = len(notes)
    bad = [n for n in notes if not n.succeeded]
    result.failed = len(bad)
    result.failures = [CallError(call_id=n.call_id, end_reason=n.end_reason, error=n.error) for n in bad[:20]]
    for n in notes:
        reason = str(n.end_reason)
        result.end_reasons[reason] = result.end_reasons.get(reason, 0) + 1
    if bad:
        result.problems.insert(0, f"{len(bad)} of {len(notes)} calls failed")
    expected = sequential + retained + kept_whole + concurrent
    if result.calls != expected:
        result.problems.append(f"{result.calls} calls ran, expected {expected}")
    result.rss_slope_mb_per_call = _slope(result.rss_trace_mb[len(result.rss_trace_mb) // 2 :])
    result.wall_s = round(time.monotonic() - t0, 2)
    result.load_average.append([round(x, 2) for x in os.getloadavg()])
    return result


def print_result(r: SoakResult, out: TextIO) -> None:
    def row(name: str, res: Resources | None) -> str:
        if res is None:
            return f"  {name:<18} -"
        return (
            f"  {name:<18} fds {res.fds:>4}  tasks {res.tasks:>4}  threads {res.threads:>3} "
            f"(+{res.pool_threads} pool, {res.os_threads} OS)  RSS {res.rss_mb:>7.1f} MB  "
            f"peer connections {res.peer_connections}"
        )

    print(
        f"\nsoak: {r.calls} calls ({r.sequential} sequential in {r.sequential_s:.1f} s, {r.concurrent} concurrent in "
        f"{r.concurrent_s:.1f} s), {r.failed} failed, {r.wall_s:.1f} s in all",
        file=out,
    )
    print(f"  end reasons: {json.dumps(r.end_reasons)}", file=out)
    print(row("baseline", r.baseline), file=out)
    print(row("after sequential", r.after_sequential), file=out)
    print(row("after concurrent", r.after), file=out)
    if r.emulator_baseline is not None:
        e0, e1 = r.emulator_baseline, r.emulator_after
        after = f"fds {e1.fds}, threads {e1.threads}, RSS {e1.rss_mb:.1f} MB" if e1 else "gone"
        print(
            f"  emulator process   fds {e0.fds}, threads {e0.threads}, RSS {e0.rss_mb:.1f} MB -> {after}", file=out
        )
    if r.rss_slope_mb_per_call is not None:
        print(f"  RSS slope over the second half of the sequential calls: {r.rss_slope_mb_per_call} MB/call", file=out)
    if r.retained or r.kept_whole:
        print_registry(r, out)
    if r.load_average:
        start, end = r.load_average[0], r.load_average[-1]
        print(f"  load average (1, 5, 15 min): {start} at the start, {end} at the end", file=out)
    for f in r.failures[:10]:
        print(f"  failed: {f.call_id} {f.end_reason}: {f.error}", file=out)
    print("soak: OK" if r.ok else "soak: FAILED\n  " + "\n  ".join(r.problems), file=out, flush=True)


def print_registry(r: SoakResult, out: TextIO) -> None:
    f = r.rss_per_100_calls

    def line(name: str, value: float | None, calls: int) -> str:
        if value is None:
            return f"    {name:<46} -"
        return f"    {name:<46} {value:>8.2f} MiB/100 calls  ({value * 1024 / 100:>7.1f} KiB per call, {calls} calls)"

    print(
        f"  registry: {r.retained} calls with ended calls retained ({r.retained_listed} listed, details served from "
        f"disk), {r.kept_whole} kept whole, in {r.registry_s:.1f} s",
        file=out,
    )
    print("  RSS per ended call (median slope over windows; second half of each phase but kept whole):", file=out)
    print(line("baseline: sequential calls, nothing keeps them", f.baseline, r.sequential), file=out)
    print(line("retained by the server's registry (listed)", f.retained, r.retained), file=out)
    print(line("kept whole (as the registry did before)", f.kept_whole, r.kept_whole), file=out)
    if f.judged:
        print(f"    retained - baseline = {f.excess} MiB/100 calls; bound {f.bound} (5 % of kept whole)", file=out)
    else:
        print("    not judged: the bound needs at least 50 retained and 5 kept-whole calls for its slopes", file=out)


async def _main(args: argparse.Namespace) -> int:
    result = await soak(
        args.sequential, args.concurrent, progress=sys.stderr, emulator=args.emulator,
        retained=args.retained, kept_whole=args.kept_whole,
    )
    print_result(result, sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), default=str))
    return 0 if result.ok else 1


def main(args: argparse.Namespace) -> int:
    require("emulator")  # a soak always runs against the emulator
    setup_logging_from_env(logging.WARNING)
    return eventloop.run(_main(args))

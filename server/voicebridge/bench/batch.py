"""`voicebridge bench --batch`: issue 17's batch targets measured on real batches, in one run.

Each batch is `voicebridge batch --scenario late_order --calls N --concurrency C --json`, run as a process of its own
exactly as a user runs it (its bridge, its calls, its reports, its child emulator `voicebridge emulator --workers
auto`), one after another: a baseline of 4 calls 2 at once, 50 at 50, the baseline again (the two bracket the
50-call batch, so a change of the machine's load shows as their drift), 100 at 100 (past the emulator's capacity:
refused, retried), and with --all-admitted the at-once batch again with no emulator budget
(VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE=0: what truly concurrent calls cost when --batch-calls is past the budget;
the default budget of the child's workers admits 50 calls at once on two cores).
While a batch runs, its process tree is read from /proc every SAMPLE_S: the batch process's CPU and the emulator's
(its process and everything under it), taken over the calls' window of the batch's report; the machine's from
/proc/stat. Each batch's report.json is kept (out/batch-runs/NAME/), its call artifacts are removed.
What the targets are and how they are judged: batch_report.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import batch_report
from .batch_report import ALL_ADMITTED, AT_ONCE, BASELINE, OVERLOAD
from .proc_cpu import machine_cpu_s, proc_table

SCENARIO = "late_order"
SAMPLE_S = 0.5  # /proc read this often: a process that ends loses at most this much of its CPU from the count
PROGRESS_S = 15.0  # a progress line at least this often while a batch runs
BASELINE_CALLS, BASELINE_CONCURRENCY = 4, 2
ALL_ADMITTED_BUDGET = "0"  # sessions per core: 0 is no budget, every call admitted at once
TIMEOUT_S = 900.0  # one batch; a batch of 100 calls takes 2-4 minutes on the 2-core machine
STOP_S = 60.0  # a batch stopped (timeout, Ctrl-C) hangs up its calls and writes its report within this
_CLI = "import sys; from voicebridge.cli import main; sys.exit(main(sys.argv[1:]))"


def _say(text: str) -> None:
    print(f"[bench batch {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Batch:
    name: str
    role: str
    calls: int
    concurrency: int
    env: dict[str, str] = field(default_factory=dict)


def plan(calls: int = 50, all_admitted: bool = False) -> list[Batch]:
    """The batches, in the order they run (`calls`: the at-once batch's; the overload batch has twice as many)."""
    base = Batch(f"{BASELINE_CALLS} at {BASELINE_CONCURRENCY}", BASELINE, BASELINE_CALLS, BASELINE_CONCURRENCY)
    batches = [
        base,
        Batch(f"{calls} at {calls}", AT_ONCE, calls, calls),
        Batch(f"{BASELINE_CALLS} at {BASELINE_CONCURRENCY}, again", BASELINE, BASELINE_CALLS, BASELINE_CONCURRENCY),
        Batch(f"{2 * calls} at {2 * calls}", OVERLOAD, 2 * calls, 2 * calls),
    ]
    if all_admitted:
        batches.append(
            Batch(
                f"{calls} at {calls}, all admitted", ALL_ADMITTED, calls, calls,
                {"VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE": ALL_ADMITTED_BUDGET},
            )
        )
    return batches


# ---- CPU of a process tree -------------------------------------------------------------------------------------


class TreeCpu:
    """The CPU of a batch process and of its emulator (the child whose argv says `emulator`, and all under it),
    cumulative, each process counted at the last value seen (so the ones that ended still count)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.group: dict[int, str] = {root: "batch"}
        self.last: dict[int, float] = {}
        self.samples: list[tuple[float, float, float, float]] = []  # (epoch s, batch CPU s, emulator CPU s, machine)

    def sample(self) -> None:
        table = proc_table(argv=True)
        changed = True
        while changed:  # parents before children, whatever order /proc listed them in
            changed = False
            for pid, (parent, _, argv) in table.items():
                if pid in self.group or parent not in self.group:
                    continue
                self.group[pid] = "emulator" if self.group[parent] == "emulator" or "emulator" in argv else "batch"
                changed = True
        for pid in self.group:
            if pid in table:
                self.last[pid] = table[pid][1]
        totals = {"batch": 0.0, "emulator": 0.0}
        for pid, cpu in self.last.items():
            totals[self.group[pid]] += cpu
        self.samples.append((time.time(), totals["batch"], totals["emulator"], machine_cpu_s()[0]))

    def over(self, start: float, end: float) -> dict[str, float] | None:
        """Cores busy between two epoch times (the batch's calls): the batch, the emulator, the machine."""
        if len(self.samples) < 2 or end <= start:
            return None
        a, b = _at(self.samples, start), _at(self.samples, end)
        span = end - start
        ours = (b[1] - a[1]) + (b[2] - a[2])
        return {
            "batch_cores": round((b[1] - a[1]) / span, 2),
            "emulator_cores": round((b[2] - a[2]) / span, 2),
            "machine_busy_cores": round((b[3] - a[3]) / span, 2),
            # What the rest of the machine took meanwhile (other work, this bench): beside the turn gap, it tells
            # a batch slowed by its own load from one slowed by a busy machine.
            "other_cores": round(max(0.0, (b[3] - a[3]) - ours) / span, 2),
            "batch_cpu_s": round(b[1] - a[1], 1),
            "emulator_cpu_s": round(b[2] - a[2], 1),
        }


def _at(samples: list[tuple[float, float, float, float]], t: float) -> tuple[float, float, float, float]:
    """The cumulative figures at time t, interpolated between the samples around it."""
    if t <= samples[0][0]:
        return samples[0]
    for before, after in itertools.pairwise(samples):
        if before[0] <= t <= after[0]:
            w = (t - before[0]) / (after[0] - before[0]) if after[0] > before[0] else 0.0
            b, e, m = (x + (y - x) * w for x, y in zip(before[1:], after[1:], strict=True))
            return t, b, e, m
    return samples[-1]


# ---- running the batches ---------------------------------------------------------------------------------------


def run_batch(batch: Batch, folder: Path) -> dict[str, Any]:
    """One `voicebridge batch` process, its progress said, its CPU read; its report reduced (batch_report.run_row)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    args = [
        sys.executable, "-c", _CLI, "batch", "--scenario", SCENARIO, "--calls", str(batch.calls),
        "--concurrency", str(batch.concurrency), "--out", str(folder), "--json",
    ]
    env = {**os.environ, **batch.env}
    row: dict[str, Any] = {
        "name": batch.name, "role": batch.role, "calls": batch.calls, "concurrency": batch.concurrency,
        "env": batch.env, "load_before": round(os.getloadavg()[0], 2),
    }
    t0 = time.perf_counter()
    err_path = folder / "stderr.txt"
    with open(err_path, "wb") as err, open(folder / "stdout.txt", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        tree = TreeCpu(proc.pid)
        said = time.perf_counter()
        try:
            while proc.poll() is None:
                tree.sample()
                if time.perf_counter() - said >= PROGRESS_S:
                    said = time.perf_counter()
                    _say(f"{batch.name}: {_progress(err_path, batch.calls)}, {said - t0:.0f} s")
                if time.perf_counter() - t0 > TIMEOUT_S:
                    _say(f"{batch.name}: no end after {TIMEOUT_S:.0f} s; stopping it")
                    break
                time.sleep(SAMPLE_S)
        finally:  # the timeout, or Ctrl-C here (the batch got its SIGINT too) or an error
            _stop(proc)
    row["exit_status"] = proc.returncode
    row["process_s"] = round(time.perf_counter() - t0, 1)
    row["load_after"] = round(os.getloadavg()[0], 2)
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        row["report_ok"] = False
        tail = err_path.read_text(errors="replace").strip().splitlines()[-5:]
        _say(f"{batch.name}: no report ({e}); exit {proc.returncode}; its stderr ends: {' | '.join(tail)}")
        return row
    row.update(batch_report.run_row(report, keep_turns=batch.role == BASELINE))
    row["report_ok"] = True
    started = float(report.get("started_at") or 0.0)
    row["cpu"] = tree.over(started, started + float(report.get("wall_s") or 0.0))
    for bulky in ("calls", "report.html"):  # hundreds of MB of audio over a run; report.json says what they held
        path = folder / bulky
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
    return row


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a batch that is still running as Ctrl-C does (it hangs up its live calls, writes its report and
    stops its emulator), and kill it if that takes more than STOP_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _progress(err_path: Path, total: int) -> str:
    """What the batch's progress lines (one per finished call on a non-terminal) say so far."""
    try:
        lines = err_path.read_text(errors="replace").splitlines()
    except OSError:
        return "starting"
    done = [ln for ln in lines if ln.startswith("[") and "/" in ln.split("]", 1)[0]]
    if not done:
        return "no call finished yet"
    ok = sum(" ok " in ln for ln in done)
    return f"{len(done)}/{total} calls finished ({ok} ok)"


def _said(row: dict[str, Any], base: dict[str, Any] | None) -> str:
    if not row.get("report_ok"):
        return f"{row['name']}: no report (exit {row.get('exit_status')})"
    lat, cpu = row["turn_latency_s"], row.get("cpu") or {}
    vs = batch_report.ratios(row, base)
    return (
        f"{row['name']}: {row['succeeded']}/{row['calls']} ok, {row['failed_mid_call']} failed mid-call, peak "
        f"{row['peak_live']} live, {row['refusals']} refusals ({row['retried']} retried), {row['wall_s']} s; turn "
        f"gap p50 {lat.get('p50')} p90 {lat.get('p90')} s (vs 2 at once {vs['p50_pct']} / {vs['p90_pct']} %); "
        f"CPU batch {cpu.get('batch_cores')} emulator {cpu.get('emulator_cores')} cores; load "
        f"{row['load_before']} -> {row['load_after']}"
    )


def measure(args: argparse.Namespace) -> dict[str, Any]:
    batches = plan(args.batch_calls, args.all_admitted)
    _say("batches, one after another: " + "; ".join(f"{b.name} ({b.calls} @ {b.concurrency})" for b in batches))
    runs_dir = Path(args.out) / "batch-runs"
    started = time.perf_counter()
    result: dict[str, Any] = {
        "scenario": SCENARIO,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": round(os.getloadavg()[0], 2),
        "runs": [],
    }
    for i, batch in enumerate(batches, 1):
        _say(f"batch {i}/{len(batches)}: {batch.name}" + (f" ({batch.env})" if batch.env else ""))
        folder = runs_dir / f"{i}-{batch.role}"
        row = run_batch(batch, folder)
        result["runs"].append(row)
        _say(_said(row, batch_report.baseline(result["runs"])))
    result["load_after"] = round(os.getloadavg()[0], 2)
    result["duration_s"] = round(time.perf_counter() - started)
    result["baseline"] = batch_report.baseline(result["runs"])
    result["targets"] = batch_report.targets(result["runs"])
    return result


def main(args: argparse.Namespace) -> int:
    from voicebridge.extras import require

    require("emulator")  # before minutes of batches, not after
    require("reports")
    from .report import doc_ready, publish

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = getattr(args, "doc", None)
    if not doc_ready(doc, "batch", "voicebridge bench --batch"):
        return 2
    try:
        result = measure(args)
    except KeyboardInterrupt:  # the running batch has hung up its calls and written its report (_stop)
        print(f"voicebridge bench --batch: interrupted; the batches' reports so far: {out / 'batch-runs'}",
              file=sys.stderr)
        return 130
    publish(out, doc, "batch", "batch-bench", result, batch_report.markdown(result), _say, args.json)
    if args.json:
        print(json.dumps(result))
    return 0

"""`voicebridge bench`: the media path under load, pass-through against aiortc's transcoding path.

First, in a process of its own, the floor (bench/floor.py): what receive + SRTP unprotect + protect + send of
one packet costs on this machine; the bridge's CPU per forwarded packet is reported as a ratio to it. Then the
event-loop floor (bench/loop_floor.py): what an event loop woken per datagram costs at the bench's packet
pattern, only counting and doing the floor's work, on each event loop, at the CPU-target levels.
For each concurrency level and relay kind a fresh bridge process (bench/bridge.py) sets up the calls, each
leg a real WebRTC connection on 127.0.0.1 to a load process (bench/load.py) whose emulated agents talk
continuously (cached Opus, 20 ms pace). Progress goes to stderr; the table, bench.json and bench.png are
written to --out; with --json stdout's last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from voicebridge import eventloop
from voicebridge.extras import require

from .bridge import Job, bridge_main
from .floor import Floor, measure_floor
from .loop_floor import WORKS, LoopFloor, available_loops, measure_loop_floor
from .report import (
    comparisons_table,
    doc_ready,
    figures,
    floor_line,
    judge_by_loop_floor,
    loop_floor_table,
    lossy,
    markdown,
    plot,
    splice_doc,
    summarise,
    table,
    targets,
    targets_table,
)

FULL_LEVELS = [1, 10, 25, 50, 100]
EXTRA_LEVELS = [150, 200, 250]  # full run: go on while there is no loss
QUICK_LEVELS = [1, 5]
REFERENCE_CALLS = 25  # the targets are stated at 25 concurrent calls
CPU_TARGET_CALLS = (25, 100)  # issue 16: CPU per packet <= 2x the floor at these levels (uvloop compared at both)
BASELINE_GIVE_UP_LOSS_PCT = 5.0  # once the baseline loses this much, higher levels only measure overload


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_job(job: Job) -> dict[str, Any]:
    """Run one job in a fresh bridge process; always reaps it."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=bridge_main, args=(child, job))
    proc.start()
    limit = 60 + job.calls * 2 + (job.seconds + job.warmup) * (3 if job.listeners else 2)
    try:
        if not parent.poll(limit):
            raise RuntimeError(f"bench: the bridge process gave no result within {limit:.0f} s ({job})")
        status, payload = parent.recv()
    except EOFError:
        raise RuntimeError(f"bench: the bridge process died (exit code {proc.exitcode}) running {job}") from None
    finally:
        proc.join(15)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if status != "ok":
        raise RuntimeError(f"bench: {job.relay} at {job.calls} calls failed: {payload}")
    result: dict[str, Any] = payload
    return result


def run_floor() -> Floor:
    """The floor (bench/floor.py) in a fresh process of its own, like each bridge job."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(measure_floor)


def run_loop_floors(calls_levels: list[int], floor_us: float, quick: bool) -> list[dict[str, Any]]:
    """The event-loop floor (bench/loop_floor.py) at each level given, on each installed loop, only counting and
    forwarding, each in fresh processes; a measurement that fails is reported and skipped."""
    seconds, warmup = (1.5, 0.5) if quick else (4.0, 1.0)
    from .load import noise_packets

    payloads = noise_packets()
    out: list[dict[str, Any]] = []
    for calls in calls_levels:
        for loop in available_loops():
            for work in WORKS:
                try:
                    m: LoopFloor = measure_loop_floor(calls, loop, work, payloads, seconds, warmup)
                except RuntimeError as e:
                    _say(str(e))
                    continue
                row: dict[str, Any] = dict(m)
                row["floor_ratio"] = round(m["us_per_packet"] / floor_us, 2) if floor_us else None
                _say(
                    f"event-loop floor: {calls} calls on {loop}, receiver {work}ing: {m['us_per_packet']} us "
                    f"of CPU per packet = {row['floor_ratio']}x floor ({m['packets']} of {m['expected']} packets)"
                )
                out.append(row)
    return out


def _levels(args: argparse.Namespace) -> tuple[list[int], bool]:
    if args.calls:
        return sorted(set(args.calls)), False
    if args.quick:
        return QUICK_LEVELS, False
    return FULL_LEVELS, True


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(args.quick)
    seconds, warmup, listeners = (2.5, 0.5, 5) if quick else (10.0, 2.0, 20)
    levels, extend = _levels(args)
    compare = (not args.calls or getattr(args, "compare", False)) and (args.relay or "passthrough") == "passthrough"
    relays = [args.relay] if args.relay else ["passthrough", "transcode"]
    load_before, steal_before, psi_before = os.getloadavg(), _steal_s(), _cpu_pressure()
    measured: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {}
    failures: list[str] = []
    ref = max((c for c in levels if c <= REFERENCE_CALLS), default=levels[0])
    floor = run_floor()
    _say(f"floor: {floor['us_per_packet']} us of CPU per forwarded packet (receive, unprotect, protect, send)")
    loop_levels = [c for c in levels if c in CPU_TARGET_CALLS] or [ref]
    loop_floors = run_loop_floors(loop_levels, floor["us_per_packet"], quick)
    plan = comparison_plan(args, levels, ref, seconds, warmup) if compare else {}
    comparisons: list[dict[str, Any]] = []
    default_reruns: list[dict[str, Any]] = []
    for relay in relays:
        queue = list(levels)
        extra = list(EXTRA_LEVELS) if extend and relay == "passthrough" else []
        while queue:
            calls = queue.pop(0)
            job = Job(relay, calls, seconds, warmup, listeners if calls == levels[0] else 0, loop=args.loop)
            _say(f"{relay}: {calls} concurrent call(s), {seconds:.0f} s window")
            try:
                raw = run_job(job)
            except RuntimeError as e:
                failures.append(str(e))
                _say(str(e))
                break
            lv = figures(raw, floor["us_per_packet"])
            measured.append(lv)
            if calls == ref:
                samples[f"{relay}, {calls} calls"] = raw["window"]["bridge_samples"]
            lat = lv["added_latency_ms"]
            _say(
                f"{relay} x{calls}: added p50 {lat.get('p50')} ms p99 {lat.get('p99')} ms, "
                f"CPU {lv['cpu_pct_per_call']} %/call, {lv['cpu_us_per_packet']} us/packet = "
                f"{lv['floor_ratio']}x floor, {lv['mem_mib_per_call']} MiB/call, "
                f"loss {lv['loss_pct']} %, set-up p50 {lv['setup_ms_p50']} ms"
            )
            if relay == "passthrough" and calls in plan:  # the comparisons at this level, interleaved with it
                base_job = dataclasses.replace(job, listeners=0)  # the level's own job, without listeners
                rows, again = run_interleaved(plan.pop(calls), lv, base_job, floor["us_per_packet"])
                comparisons += rows
                default_reruns += again
            if relay == "transcode" and lv["loss_pct"] > BASELINE_GIVE_UP_LOSS_PCT and queue:
                failures.append(f"transcode baseline overloaded at {calls} calls; skipped {queue}")
                _say(failures[-1])
                break
            if not queue and extra and not lossy(lv):
                queue.append(extra.pop(0))
    main_relay = relays[0]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
            # Other work on the machine while we measured: load average before/after, CPU stolen by the host.
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "steal_s": round(_steal_s() - steal_before, 1),
            "cpu_pressure_before": psi_before,
            "cpu_pressure_after": _cpu_pressure(),
        },
        "quick": quick,
        "window_s": seconds,
        "loop": args.loop,  # the bridge process's event loop (the load processes run on uvloop when installed)
    }
    result["floor"] = floor
    result["floor_us_per_packet"] = floor["us_per_packet"]
    # Every pass-through level (and comparison) measured at a level of the event-loop floor: its CPU per packet
    # against the forwarding receiver's on the same loop ("loop_floor_ratio").
    judge_by_loop_floor([*measured, *comparisons], loop_floors)
    result["loop_floor"] = loop_floors
    result.update(summarise(measured, main_relay, ref))
    fan = {lv["relay"]: lv["fanout"] for lv in measured if "fanout" in lv}
    result["fanout"] = fan
    # Where a WebSocket leg (PCM16) meets a WebRTC leg (Opus), the bridge must transcode: its codec cost per call,
    # beside the pass-through figures (issue 8). Measured in this process on voiced synthetic audio.
    from voicebridge.media.pcm import transcode_cost

    result["ws_transcoding"] = transcode_cost(500)
    result["levels"] = measured
    result["comparisons"] = comparisons
    result["comparison_defaults"] = default_reruns  # the default's extra runs beside the comparisons
    result["targets"] = targets(result)
    result["failures"] = failures
    result["_samples"] = samples
    return result


def comparison_plan(
    args: argparse.Namespace, levels: list[int], ref: int, seconds: float, warmup: float
) -> dict[int, list[tuple[str, Job]]]:
    """The same pass-through job with one thing changed, per level: at the headline level aiortc's own packet path
    instead of the short paths, the bridge's RTCP at aiortc's pace and the load on SCHED_NORMAL (free to preempt
    the bridge, bench/load.py), and the other event loop (uvloop against asyncio's) at each CPU-target level."""
    other_loop = "asyncio" if args.loop == "uvloop" else "uvloop"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        other_loop = ""
    plan: dict[int, list[tuple[str, Job]]] = {}

    def job(calls: int, **change: Any) -> Job:
        return Job("passthrough", calls, seconds, warmup, loop=change.pop("loop", args.loop), **change)

    if ref in levels:
        plan[ref] = [
            ("aiortc's packet path", job(ref, short_path=False)),
            ("aiortc's RTCP pace", job(ref, rtcp_paced=False)),
            ("load preempting the bridge", job(ref, load_sched="normal")),
        ]
    if other_loop:
        for calls in sorted(set(levels) & {ref, *CPU_TARGET_CALLS}):
            plan.setdefault(calls, []).append((f"{other_loop} loop", job(calls, loop=other_loop)))
    return plan


def run_interleaved(
    variants: list[tuple[str, Job]], base: dict[str, Any], base_job: Job, floor_us: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each variant next to a run of the default at the same level, in the order A B1 B2 A B3 B4 A... (base: the
    level's own run, the first A): each variant is judged against the default run beside it, so a load that
    changes during the bench (other work on the machine) biases no comparison one way. Returns the variants'
    figures (with `against`) and the extra default runs."""
    out: list[dict[str, Any]] = []
    reruns: list[dict[str, Any]] = []
    last_a = base
    for i, (variant, job) in enumerate(variants):
        _say(f"comparison: {variant}, {job.calls} concurrent call(s)")
        try:
            lv = figures(run_job(job), floor_us)
        except RuntimeError as e:
            _say(str(e))
            continue
        if i % 2 == 1:  # B A: a default run right after this variant, also the A before the next one
            _say(f"comparison: the default again, {base_job.calls} concurrent call(s)")
            try:
                last_a = figures(run_job(base_job), floor_us)
                last_a["variant"] = "default (again)"
                reruns.append(last_a)
            except RuntimeError as e:
                _say(str(e))
        lv["variant"] = variant
        lv["against"] = {
            k: last_a.get(k)
            for k in ("cpu_us_per_packet", "floor_ratio", "added_latency_ms", "loss_pct", "load_cpu_us_per_packet")
        }
        lv["against"]["run"] = "level" if last_a is base else "again"
        _say(
            f"{variant} x{job.calls}: {lv['cpu_us_per_packet']} us/packet = {lv['floor_ratio']}x floor "
            f"(default beside it: {last_a['floor_ratio']}x), loss {lv['loss_pct']} %"
        )
        out.append(lv)
    return out, reruns


def _cpu_pressure() -> float | None:
    """Share of the last minute (%) in which some runnable task waited for a CPU (Linux PSI), if known."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            some = f.readline().split()
        return float(some[2].split("=")[1])
    except (OSError, ValueError, IndexError):
        return None


def _steal_s() -> float:
    """CPU time the hypervisor gave to others (all CPUs, seconds since boot), 0 if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def main(args: argparse.Namespace) -> int:
    require("bench")  # before minutes of measuring, not after
    if args.loop is None:  # the bridge's own default (voicebridge/eventloop.py: VOICEBRIDGE_LOOP, uvloop)
        args.loop = eventloop.effective()
    elif args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("voicebridge bench: --loop uvloop needs the uvloop package (pip install uvloop)", file=sys.stderr)
            return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"voicebridge bench: cannot create --out {out}: {e}", file=sys.stderr)
        return 2
    doc = getattr(args, "doc", None)
    if not doc_ready(doc, "bench", "voicebridge bench"):
        return 2
    started = time.perf_counter()
    try:
        result = run_bench(args)
    except KeyboardInterrupt:
        return 130
    samples = result.pop("_samples")
    text = floor_line(result["floor"]) + "\n\n" + table(result["levels"])
    if result["loop_floor"]:
        text += "\n\n" + loop_floor_table(result)
    if result["comparisons"]:
        text += "\n\n" + comparisons_table(result["comparisons"])
    text += "\n\n" + targets_table(result["targets"])
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
    ws = result["ws_transcoding"]
    print(
        f"WebSocket<->WebRTC transcoding per call: {ws['core_percent_per_call']} % of a core, added latency p50 "
        f"{ws['encode_latency_ms']['p50'] + ws['decode_latency_ms']['p50']:.3f} ms (encode + decode)",
        file=sys.stderr if args.json else sys.stdout,
        flush=True,
    )
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "bench.md").write_text(markdown(result) + "\n", encoding="utf-8")
    try:
        plot(result["levels"], samples, out / "bench.png")
    except Exception as e:  # the numbers matter more than the picture
        print(f"voicebridge bench: could not draw bench.png: {e}", file=sys.stderr)
    if doc is not None:
        # The doc has its own title: the run's report without the first heading line.
        body = markdown(result).split("\n", 1)[1].strip()
        splice_doc(doc, "bench", f"Run of {result['date']}.\n\n{body}")
        for name in ("bench.json", "bench.png"):
            if (out / name).exists() and (out / name).resolve() != (doc.parent / name).resolve():
                shutil.copyfile(out / name, doc.parent / name)
        _say(f"report written into {doc}")
    _say(f"done in {time.perf_counter() - started:.0f} s: {out / 'bench.json'}, {out / 'bench.png'}")
    if args.json:
        print(json.dumps(result))
    return 0 if result["levels"] else 1

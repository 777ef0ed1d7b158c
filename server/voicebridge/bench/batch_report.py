"""`voicebridge bench --batch`, what it makes of its runs: each batch's report.json reduced to a row, issue 17's
batch targets judged against the 2-at-once baseline of the same run, and the markdown that goes into docs/bench.md.
Pure functions over dicts (no process, no clock), so that the verdicts and the rendering are tested on their own.

The targets (issue 17, this 2-core machine, bridge and emulator on it together):
- `batch --calls 50 --concurrency 50`: every call succeeds, turn gap p50 within 10 % and p90 within 25 % of a batch
  of 2 at once measured in the same run;
- `batch --calls 100 --concurrency 100`: no call fails mid-call; calls beyond capacity are refused, retried and
  finally succeed.
The turn gap is the batch report's `turn_latency_s` (the bridge's measure on the audio packets: one agent's last
speech packet -> the other's first reply packet, over every turn of every call). The baseline's percentiles are
over the turns of both baseline batches pooled (run before and after the 50-call batch, so a change of the machine's
load shows as their drift): 4 calls of late_order make only 12 timed turns, and their p90 falls among the CS agent's
slower turns (its tools), so one batch's p90 alone moves by a third to a half from run to run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from voicebridge.lab.timing import percentile

BASELINE = "baseline"  # 2 at once: the reference for the turn gap
AT_ONCE = "at_once"  # the issue's 50 at concurrency 50, the emulator's default capacity
OVERLOAD = "overload"  # 100 at concurrency 100: past capacity, refused and retried
ALL_ADMITTED = "all_admitted"  # 50 at concurrency 50 with an emulator budget that admits all at once (context)
P50_WITHIN = 0.10
P90_WITHIN = 0.25
BUSY_OTHERS_CORES = 0.5  # other processes took this much of the machine during a batch: its timing is not ours alone


def run_row(report: Mapping[str, Any], keep_turns: bool = False) -> dict[str, Any]:
    """The figures of one batch's report.json that the bench keeps (`keep_turns`: every turn's gap too, for a
    baseline, whose turns are pooled). A call that failed after it went live (its `setup_s` set) failed
    mid-call; one that never went live failed at set-up (refused on every try, or its peer connection never
    came up)."""
    calls = report.get("calls") or []
    failed = [c for c in calls if not c.get("ok")]
    latency = report.get("turn_latency_s") or {}
    timing = report.get("timing") or {}
    row: dict[str, Any] = {
        "calls": report.get("total", 0),
        "concurrency": report.get("concurrency"),
        "interrupted": bool(report.get("interrupted")),  # stopped by Ctrl-C: its live calls hung up, failed
        "succeeded": report.get("succeeded", 0),
        "failed": report.get("failed", 0),
        "failed_mid_call": sum(1 for c in failed if c.get("setup_s") is not None),
        "failed_setup": sum(1 for c in failed if c.get("setup_s") is None),
        "peak_live": report.get("peak_live", 0),
        "refusals": report.get("refusals", 0),
        "retried": report.get("retried", 0),
        "gave_up": report.get("gave_up", 0),
        "wall_s": report.get("wall_s"),
        "turn_latency_s": {
            "count": latency.get("count", 0), "p50": latency.get("p50"), "p90": latency.get("p90"),
        },
        "turn_gap_ms": timing.get("turn_gap_ms"),
        "end_reasons": report.get("end_reasons", {}),
        "errors": [
            {k: e.get(k) for k in ("call_id", "end_reason", "error")} for e in (report.get("errors") or [])[:3]
        ],
    }
    if keep_turns:  # the same turns as turn_latency_s (batch/report.py), call by call
        row["turn_gaps_s"] = [t["latency_s"] for c in calls for t in c.get("turn_latency") or []]
    return row


def baseline(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The p50 / p90 (s) of the baseline runs that timed turns, over their turns pooled (nearest rank, the batch
    report's rule; the mean of their percentiles for rows without their turns), and their drift (last vs first,
    %)."""
    timed = [r for r in runs if r["role"] == BASELINE and r.get("turn_latency_s", {}).get("p50") is not None]
    if not timed:
        return None
    p50s = [r["turn_latency_s"]["p50"] for r in timed]
    p90s = [r["turn_latency_s"]["p90"] for r in timed]
    pooled = [gap for r in timed for gap in r.get("turn_gaps_s") or []]
    whole = all(r.get("turn_gaps_s") for r in timed)
    return {
        "runs": len(timed),
        "turns": len(pooled) if whole else None,
        "p50": percentile(pooled, 50) if whole else sum(p50s) / len(p50s),
        "p90": percentile(pooled, 90) if whole else sum(p90s) / len(p90s),
        "drift_p50_pct": _pct(p50s[-1], p50s[0]),
        "drift_p90_pct": _pct(p90s[-1], p90s[0]),
    }


def _pct(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return round((value / reference - 1.0) * 100.0, 1) + 0.0  # + 0.0: no "-0.0 %"


def ratios(run: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The run's turn gap p50 / p90 against the baseline's, as % more (negative: less)."""
    latency = run.get("turn_latency_s") or {}
    if base is None:
        return {"p50_pct": None, "p90_pct": None}
    return {"p50_pct": _pct(latency.get("p50"), base["p50"]), "p90_pct": _pct(latency.get("p90"), base["p90"])}


def _find(runs: Sequence[Mapping[str, Any]], role: str) -> Mapping[str, Any] | None:
    return next((r for r in runs if r["role"] == role and r.get("report_ok")), None)


def _verdict(target: str, run: str, measured: str, met: bool | None, miss: str = "") -> dict[str, Any]:
    verdict = "not measured" if met is None else "met" if met else f"missed{': ' + miss if miss else ''}"
    return {"target": target, "run": run, "measured": measured, "met": met, "verdict": verdict}


def _within(name: str, pct: float | None, limit: float, run: Mapping[str, Any], base: Mapping[str, Any]) -> dict[
    str, Any
]:
    value = run["turn_latency_s"].get(name)
    target = f"turn gap {name} within {limit * 100:g} % of 2 at once"
    if pct is None or value is None:
        return _verdict(target, run["name"], "no turns timed", None)
    measured = f"{pct:+.1f} % ({value:.3f} s vs {base[name]:.3f} s)"
    met = pct <= limit * 100
    return _verdict(target, run["name"], measured, met, f"by {pct - limit * 100:.1f} points")


def targets(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Issue 17's batch targets, each with what was measured and met / missed (by how much) / not measured."""
    base = baseline(runs)
    rows: list[dict[str, Any]] = []
    at_once = _find(runs, AT_ONCE)
    if at_once is None:
        rows.append(_verdict("every call succeeds", "50 at 50", "the batch did not run", None))
    else:
        n, ok = at_once["calls"], at_once["succeeded"]
        rows.append(
            _verdict("every call succeeds", at_once["name"], f"{ok}/{n} succeeded", ok == n, f"{n - ok} failed")
        )
        if base is None:
            rows.append(_verdict("turn gap within 10 % / 25 % of 2 at once", at_once["name"], "no baseline", None))
        else:
            r = ratios(at_once, base)
            rows.append(_within("p50", r["p50_pct"], P50_WITHIN, at_once, base))
            rows.append(_within("p90", r["p90_pct"], P90_WITHIN, at_once, base))
    over = _find(runs, OVERLOAD)
    if over is None:
        rows.append(_verdict("no call fails mid-call", "100 at 100", "the batch did not run", None))
        return rows
    mid, setup = over["failed_mid_call"], over["failed_setup"]
    rows.append(
        _verdict(
            "no call fails mid-call", over["name"], f"{mid} failed mid-call ({setup} at set-up)", mid == 0,
            f"{mid} calls lost",
        )
    )
    n, ok = over["calls"], over["succeeded"]
    refused = (
        f"{over['refusals']} refusals ({over['retried']} calls retried, {over['gave_up']} gave up), "
        f"{ok}/{n} succeeded, peak {over['peak_live']} live, wall {over['wall_s']:.0f} s"
    )
    if not over["refusals"]:
        refused += " (capacity never reached: nothing refused)"
    rows.append(
        _verdict(
            "calls beyond capacity refused, retried, finally succeed", over["name"], refused,
            ok == n and over["gave_up"] == 0, f"{n - ok} did not succeed",
        )
    )
    return rows


def _num(value: Any, fmt: str = "g", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def _pooled(base: Mapping[str, Any]) -> str:
    if base.get("turns") is None:
        return f"the mean of {base['runs']} baseline batches' percentiles"
    return f"the {base['turns']} turns of {base['runs']} baseline batches"


def markdown(result: Mapping[str, Any]) -> str:
    """The report: the targets with their verdicts, then a row per batch, in the order they ran."""
    base = result.get("baseline")
    lines = [
        f"Batches of the `{result['scenario']}` scenario through `voicebridge batch` (each its own process, the "
        f"emulator its default child `voicebridge emulator --workers auto`), one after another; load average "
        f"{result['load_before']} before, {result['load_after']} after; {result['duration_s']} s in all.",
        "",
        "| target (issue 17) | batch | measured | |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['run']} | {t['measured']} | {t['verdict']} |")
    others = [(r.get("cpu") or {}).get("other_cores") for r in result["runs"]]
    busy = [o for o in others if o is not None]
    if busy and max(busy) >= BUSY_OTHERS_CORES:
        lines += [
            "",
            f"**Not a quiet machine**: other processes took {min(busy):.2f}-{max(busy):.2f} of its "
            f"{result.get('cores', '?')} cores during these batches, so their timing is not this code's alone; "
            "judge the targets on a run with nothing else running.",
        ]
    lines += [
        "",
        "Each batch (turn gap: the bridge's, one agent's last speech packet -> the other's first reply packet, "
        "over every turn; wall: the batch's calls, first start to last end (process: the `voicebridge batch` "
        "process's whole life, its start-up and reports included); vs 2 at once: against the baseline batches' turns "
        "pooled; CPU: cores busy over the batch's calls, its own process (bridge and calls) and the emulator's "
        "processes; machine busy: all its cores, and what other processes took of them meanwhile):",
        "",
        "| batch | calls @ concurrency | succeeded | failed mid-call / at set-up | peak live | refusals (calls "
        "retried; gave up) | wall (process) | turn gap p50 / p90 | vs 2 at once p50 / p90 | CPU batch / emulator | "
        "machine busy | load before / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        if not r.get("report_ok"):
            lines.append(
                f"| {r['name']} | {r['calls']} @ {r['concurrency']} | no report (exit {r.get('exit_status')}) "
                "| | | | | | | | | |"
            )
            continue
        lat, cpu, vs = r["turn_latency_s"], r.get("cpu") or {}, ratios(r, base)
        lines.append(
            f"| {r['name']} | {r['calls']} @ {r['concurrency']} | {r['succeeded']}/{r['calls']}"
            f"{' (interrupted)' if r.get('interrupted') else ''} | "
            f"{r['failed_mid_call']} / {r['failed_setup']} | {r['peak_live']} | "
            f"{r['refusals']} ({r['retried']}; {r['gave_up']}) | {_num(r['wall_s'], '.1f', ' s')} "
            f"({_num(r.get('process_s'), '.0f', ' s')}) | "
            f"{_num(lat.get('p50'), '.3f')} / {_num(lat.get('p90'), '.3f')} s | "
            f"{_num(vs['p50_pct'], '+.1f', ' %')} / {_num(vs['p90_pct'], '+.1f', ' %')} | "
            f"{_num(cpu.get('batch_cores'), '.2f')} / {_num(cpu.get('emulator_cores'), '.2f')} cores | "
            f"{_num(cpu.get('machine_busy_cores'), '.2f')} cores (others {_num(cpu.get('other_cores'), '.2f')}) | "
            f"{r['load_before']} / {r['load_after']} |"
        )
    if base is not None:
        lines += [
            "",
            f"2 at once ({_pooled(base)}): p50 {base['p50']:.3f} s, p90 "
            f"{base['p90']:.3f} s; the last baseline against the first: p50 {_num(base['drift_p50_pct'], '+.1f')} %, "
            f"p90 {_num(base['drift_p90_pct'], '+.1f')} % (the machine's drift over the run, and the noise of a "
            "few turns' percentiles).",
        ]
    failures = [(r["name"], e) for r in result["runs"] if r.get("report_ok") for e in r["errors"]]
    if failures:
        lines += ["", "Failed calls (the first of each batch):", ""]
        lines += [f"- {name}: {e['call_id']} {e['end_reason']}: {e['error']}" for name, e in failures]
    return "\n".join(lines)

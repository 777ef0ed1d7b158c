"""Turn raw bench jobs into figures, a table, bench.json and bench.png."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicebridge.media.passthrough import latency_summary

PACKETS_PER_CALL_S = 100  # into the bridge: two agents, 50 packets/s each
LOSS_THRESHOLD_PCT = 0.1
COUNT_LOSS_THRESHOLD_PCT = 1.0  # below this a level counts as "without loss" (boundary effects of the window)
KEYS = ("added_latency_ms", "cpu_pct_per_call", "mem_mib_per_call", "loss_pct", "setup_ms_p50")
EXTRA_KEYS = (
    "e2e_latency_ms",
    "cpu_pct_per_call_full_rate",
    "cpu_us_per_packet",
    "floor_ratio",
    "loop_floor_ratio",
    "presend_latency_ms",
)


def _lat(samples: list[float]) -> dict[str, float | int]:
    s = latency_summary(samples)
    return {k: s[k] for k in ("p50", "p99", "max", "count") if k in s}


def win_cpu_s(win: dict[str, Any]) -> float:
    return float(win["cpu_pct"]) / 100.0 * float(win["wall_s"])


def figures(job: dict[str, Any], floor_us: float | None = None) -> dict[str, Any]:
    """One measured level of one relay, in the JSON's units; floor_us: the floor measured in the same run."""
    calls = int(job["calls"])
    forwarded = job["window"]["bridge_out"]
    cpu_us = 1e6 * win_cpu_s(job["window"]) / forwarded if forwarded else None
    phases = [p if isinstance(p, list | tuple) else (0.0, 0.0, p) for p in job["setup_s"]]
    total = [p[2] for p in phases]
    win = job["window"]
    sent = sum(x["sent"] for x in win["loads"])
    received = sum(x["received"] for x in win["loads"])
    matched = [s for x in win["loads"] for s in x["matched"]]
    logged = sum(x.get("logged", 0) for x in win["loads"])
    missing = sum(x.get("missing", 0) for x in win["loads"])
    if job["relay"] == "passthrough" and logged:
        # Payloads pass through unchanged: count exactly which packets sent in the window never arrived.
        loss, method = 100.0 * missing / logged, "payload"
    else:  # re-encoded: packets received in the (shifted) window against packets sent
        loss, method = (max(0.0, 100.0 * (1 - received / sent)) if sent else 100.0), "count"
    out: dict[str, Any] = {
        "calls": calls,
        "relay": job["relay"],
        "added_latency_ms": _lat(win["bridge_samples"]),
        "e2e_latency_ms": _lat(matched) if matched else None,
        "presend_latency_ms": _lat(win["presend_samples"]) if win["presend_samples"] else None,
        "gc_pauses": win["gc_pauses"],
        "cpu_pct": round(win["cpu_pct"], 2),
        "cpu_pct_per_call": round(win["cpu_pct"] / calls, 3),
        "cpu_user_pct_per_call": round(win["cpu_user_pct"] / calls, 3),
        "cpu_sys_pct_per_call": round(win["cpu_sys_pct"] / calls, 3),
        "mem_mib_per_call": round((job["rss_mib_after"] - job["rss_mib_before"]) / calls, 3),
        "loss_pct": round(loss, 3),
        "loss_method": method,
        "setup_ms_p50": round(1000 * statistics.median(total), 1),
        "setup_ms_max": round(1000 * max(total), 1),
        # Where set-up time goes (p50 of each phase): our offers, the far end's answers, ICE + DTLS.
        "setup_phases_ms_p50": {
            "offers": round(1000 * statistics.median(p[0] for p in phases), 1),
            "answers": round(1000 * statistics.median(p[1] - p[0] for p in phases), 1),
            "ice_dtls": round(1000 * statistics.median(p[2] - p[1] for p in phases), 1),
        },
        "packets_sent": sent,
        "packets_received": received,
        "bridge_packets_in": win["bridge_in"],
        "bridge_packets_out": win["bridge_out"],
        "bridge_dropped": win["bridge_dropped"],
        "bridge_legs_down": win.get("legs_down"),  # legs not connected at the window's end
        # Bridge CPU per forwarded packet: robust when the machine cannot deliver the full packet rate.
        "cpu_us_per_packet": round(cpu_us, 1) if cpu_us else None,
        # ... judged against the floor (bench/floor.py) of the same run, since machines differ (issue 16).
        "floor_ratio": round(cpu_us / floor_us, 2) if cpu_us and floor_us else None,
        "udp_rcvbuf_errors": win["udp_rcvbuf_errors"],
        # What a call costs when all its packets flow: at an overloaded level fewer packets got through, so
        # CPU per call there understates the cost; CPU per packet does not.
        "cpu_pct_per_call_full_rate": round(cpu_us * PACKETS_PER_CALL_S / 1e4, 3) if cpu_us else None,
        "load_processes": job["load_processes"],
        "load_cpu_pct": [round(x["cpu_pct"], 1) for x in win["loads"]],
        # The load beside the bridge (issue 16): all load processes together, % of a core, and per packet it
        # handled (sent + received), comparable with the bridge's CPU per forwarded packet.
        "load_cpu_pct_total": round(sum(x["cpu_pct"] for x in win["loads"]), 1),
        "load_cpu_us_per_packet": (
            round(1e4 * sum(x["cpu_pct"] for x in win["loads"]) * win["wall_s"] / (sent + received), 1)
            if sent + received
            else None
        ),
        "loop": job.get("loop", "asyncio"),
        "short_path": job.get("short_path", True),
        # The load's scheduling policy as in force in its processes (bench/load.py far_end_scheduling).
        "load_sched": sorted({x.get("sched", "normal") for x in win["loads"]}),
        "bridge_context_switches": win.get("context_switches"),
        "bridge_loop_lag_ms": win["loop_lag_ms"],
        "load_loop_lag_ms": [x["loop_lag_ms"] for x in win["loads"]],
        "load_late_ticks": sum(x["late_ticks"] for x in win["loads"]),
        "seconds": round(win["wall_s"], 2),
    }
    fan = job.get("fanout")
    if fan:
        n = int(fan["listeners"])
        got = sum(x["listener_received"] for x in fan["loads"])
        expected = n * 2 * fan["wall_s"] / 0.020  # two parties, 50 packets/s each, per listener
        out["fanout"] = {
            "listeners": n,
            "cpu_pct": round(fan["cpu_pct"], 2),
            "cpu_pct_per_listener": round((fan["cpu_pct"] - win["cpu_pct"]) / n, 3),
            "listener_delivery_pct": round(min(100.0, 100.0 * got / expected), 2) if expected else 0.0,
            "added_latency_ms": _lat(fan["bridge_samples"]),
        }
    return out


def headline(levels: list[dict[str, Any]], relay: str, calls: int) -> dict[str, Any] | None:
    for lv in levels:
        if lv["relay"] == relay and lv["calls"] == calls:
            return {k: lv.get(k) for k in ("calls", *KEYS, *EXTRA_KEYS)}
    return None


def lossy(lv: dict[str, Any]) -> bool:
    """Lost packets beyond measuring noise (a count over a shifted window is exact to ~0.5 %, payloads exactly), or
    a leg down at the window's end: an agent whose leg is down sends nothing, so its packets are in no loss count
    (at 200 calls on a busy machine 374 of 400 legs were down with "0 %" lost)."""
    limit = COUNT_LOSS_THRESHOLD_PCT if lv.get("loss_method") == "count" else LOSS_THRESHOLD_PCT
    return bool(lv["loss_pct"] > limit or (lv.get("bridge_legs_down") or 0) > 0)


def max_without_loss(levels: list[dict[str, Any]], relay: str) -> int:
    best = 0
    for lv in sorted((x for x in levels if x["relay"] == relay), key=lambda x: x["calls"]):
        if lossy(lv):
            break
        best = lv["calls"]
    return best


def summarise(measured: list[dict[str, Any]], main_relay: str, ref: int) -> dict[str, Any]:
    """The JSON's headline: figures at `ref` calls, the baseline, ratios, capacity estimate, max lossless."""
    top = headline(measured, main_relay, ref) or {"calls": ref, **{k: None for k in KEYS}}
    out: dict[str, Any] = dict(top)
    if main_relay != "transcode":
        # The baseline at the headline level if it ran there without loss; else at the highest level it did
        # ("calls" says which). Ratios are taken at the highest level both ran without loss.
        base_calls = min(ref, max_without_loss(measured, "transcode"))
        out["baseline"] = headline(measured, "transcode", base_calls) if base_calls else None
        if base_calls != ref:  # what the baseline did at the headline level, if it ran there (overloaded)
            out["baseline_at_headline"] = headline(measured, "transcode", ref)
        common = max(
            (
                c
                for c in sorted({lv["calls"] for lv in measured})
                if c <= max_without_loss(measured, main_relay) and c <= base_calls
            ),
            default=0,
        )
        p, t = headline(measured, main_relay, common), headline(measured, "transcode", common)
        if p and t:
            out["ratios"] = {
                "calls": common,
                "added_latency_p50": _div(t["added_latency_ms"].get("p50"), p["added_latency_ms"].get("p50")),
                "added_latency_p99": _div(t["added_latency_ms"].get("p99"), p["added_latency_ms"].get("p99")),
                "cpu_pct_per_call": _div(t["cpu_pct_per_call"], p["cpu_pct_per_call"]),
                "mem_mib_per_call": _div(t["mem_mib_per_call"], p["mem_mib_per_call"]),
            }
    else:
        out["baseline"] = None
    # Calls one core could carry by CPU alone, from the busiest level measured without loss.
    mine = [lv for lv in measured if lv["relay"] == main_relay and lv["calls"] > 1]
    clean = [lv for lv in mine if not lossy(lv)]
    if clean:
        busiest = max(clean, key=lambda lv: lv["calls"])
        out["calls_per_core_estimate"] = {
            "calls": int(100 / busiest["cpu_pct_per_call"]) if busiest["cpu_pct_per_call"] else None,
            "from_level": busiest["calls"],
        }
    out["max_calls_without_loss"] = max_without_loss(measured, main_relay)
    return out


def _div(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return round(a / b, 2)


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a <= 0:
        return "-"
    return f"{b / a:.1f}x"


def table(levels: list[dict[str, Any]]) -> str:
    head = (
        "| calls | relay | added p50 ms | p99 ms | max ms | e2e p50 ms | CPU %/call | MiB/call | loss % "
        "| set-up p50 ms | CPU us/packet | x floor | x event-loop floor | load CPU us/packet |"
    )
    rows = [head, "|" + "---|" * 14]
    by = {(lv["calls"], lv["relay"]): lv for lv in levels}
    for calls in sorted({lv["calls"] for lv in levels}):
        p, t = by.get((calls, "passthrough")), by.get((calls, "transcode"))
        for lv in (p, t):
            if lv is None:
                continue
            lat, e2e = lv["added_latency_ms"], lv["e2e_latency_ms"]
            rows.append(
                f"| {calls} | {lv['relay']} | {lat.get('p50', '-')} | {lat.get('p99', '-')} | {lat.get('max', '-')} "
                f"| {e2e['p50'] if e2e else '-'} | {lv['cpu_pct_per_call']} | {lv['mem_mib_per_call']} "
                f"| {lv['loss_pct']} | {lv['setup_ms_p50']} | {lv.get('cpu_us_per_packet') or '-'} "
                f"| {lv.get('floor_ratio') or '-'} | {lv.get('loop_floor_ratio') or '-'} "
                f"| {lv.get('load_cpu_us_per_packet') or '-'} |"
            )
        if p and t:
            pl, tl = p["added_latency_ms"], t["added_latency_ms"]
            rows.append(
                f"| {calls} | transcode / passthrough | {_ratio(pl.get('p50'), tl.get('p50'))} "
                f"| {_ratio(pl.get('p99'), tl.get('p99'))} | {_ratio(pl.get('max'), tl.get('max'))} | - "
                f"| {_ratio(p['cpu_pct_per_call'], t['cpu_pct_per_call'])} "
                f"| {_ratio(p['mem_mib_per_call'], t['mem_mib_per_call'])} | - "
                f"| {_ratio(p['setup_ms_p50'], t['setup_ms_p50'])} "
                f"| {_ratio(p.get('cpu_us_per_packet'), t.get('cpu_us_per_packet'))} | - | - | - |"
            )
    fans = [lv for lv in levels if "fanout" in lv]
    if fans:
        rows += ["", "| fan-out (1 call) | listeners | CPU % of a core per listener | delivered % |"]
        rows.append("|---|---|---|---|")
        for lv in fans:
            f = lv["fanout"]
            rows.append(
                f"| {lv['relay']} | {f['listeners']} | {f['cpu_pct_per_listener']} | {f['listener_delivery_pct']} |"
            )
    return "\n".join(rows)


def plot(levels: list[dict[str, Any]], samples: dict[str, list[float]], path: Path) -> Path:
    """Latency distribution (reference level) and CPU / latency against concurrent calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for name, vals in samples.items():
        if vals:
            ms = sorted(v * 1000 for v in vals)
            ax.plot(ms, [i / len(ms) for i in range(len(ms))], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("added latency per packet, ms (log)")
    ax.set_ylabel("fraction of packets")
    ax.set_title("latency distribution (CDF)")
    ax.legend(fontsize=8)
    for relay, marker in (("passthrough", "o"), ("transcode", "s")):
        lv = sorted((x for x in levels if x["relay"] == relay), key=lambda x: x["calls"])
        if not lv:
            continue
        calls = [x["calls"] for x in lv]
        axes[1].plot(calls, [x["cpu_pct_per_call"] for x in lv], marker=marker, label=relay)
        for x in lv:  # a level with loss is overloaded: its CPU per call is what it managed, not what it needs
            if lossy(x):
                axes[1].annotate(f"{x['loss_pct']:.0f}% loss", (x["calls"], x["cpu_pct_per_call"]), fontsize=7)
        axes[2].plot(calls, [x["added_latency_ms"].get("p50", 0) for x in lv], marker=marker, label=f"{relay} p50")
        axes[2].plot(
            calls, [x["added_latency_ms"].get("p99", 0) for x in lv], marker=marker, ls="--", label=f"{relay} p99"
        )
    axes[1].set_xlabel("concurrent calls")
    axes[1].set_ylabel("bridge CPU, % of a core per call")
    axes[1].set_title("CPU per call")
    axes[1].legend(fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("concurrent calls")
    axes[2].set_ylabel("added latency, ms (log)")
    axes[2].set_title("latency vs concurrent calls")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _p50(r: dict[str, Any]) -> Any:
    return (r["added_latency_ms"] or {}).get("p50")


def _p99(r: dict[str, Any]) -> Any:
    return (r["added_latency_ms"] or {}).get("p99")


TARGETS: tuple[tuple[str, Callable[[dict[str, Any]], Any], float], ...] = (  # issue 6, at the headline level
    ("added latency p50 <= 0.5 ms", _p50, 0.5),
    ("added latency p99 <= 2 ms", _p99, 2.0),
    ("bridge CPU <= 2 % of a core per call (at the full packet rate)", lambda r: r["cpu_pct_per_call_full_rate"], 2.0),
    ("set-up p50 <= 100 ms", lambda r: r["setup_ms_p50"], 100.0),
    ("memory <= 10 MiB per call", lambda r: r["mem_mib_per_call"], 10.0),
)


# Issue 16's targets on this machine: (name, level (calls) or None for the run, value getter, limit, at most?)
TARGETS_16: tuple[tuple[str, int | None, Callable[[dict[str, Any]], Any], float, bool], ...] = (
    ("bridge CPU per forwarded packet <= 2x the floor", 25, lambda lv: lv.get("floor_ratio"), 2.0, True),
    ("bridge CPU per forwarded packet <= 2x the floor", 100, lambda lv: lv.get("floor_ratio"), 2.0, True),
    ("added latency p50 <= 0.05 ms", 25, _p50, 0.05, True),
    ("added latency p50 <= 0.05 ms", 100, _p50, 0.05, True),
    ("added latency p99 <= 0.3 ms", 25, _p99, 0.3, True),
    ("added latency p99 <= 0.3 ms", 100, _p99, 0.3, True),
    ("calls without loss >= 200", None, lambda r: r.get("max_calls_without_loss"), 200, False),
    ("set-up p50 <= 40 ms", 25, lambda lv: lv.get("setup_ms_p50"), 40.0, True),
)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's targets, each met or missed (and by how much), from a run's pass-through levels."""
    by_calls = {lv["calls"]: lv for lv in result.get("levels", []) if lv["relay"] == "passthrough"}
    out: list[dict[str, Any]] = []
    for name, calls, get, limit, at_most in TARGETS_16:
        source = result if calls is None else by_calls.get(calls)
        value = get(source) if source is not None else None
        row: dict[str, Any] = {"target": name, "calls": calls, "value": value, "limit": limit}
        if calls is not None and source is not None and "floor" in name and source.get("loop_floor_ratio"):
            # Context: the least an event loop woken per datagram spends forwarding, on the bridge's loop.
            row["loop_floor_ratio"] = source["loop_floor_ratio"]
            row["loop_floor_x_floor"] = round(value * 1.0 / source["loop_floor_ratio"], 2) if value else None
        if value is None:
            row["met"], row["by"] = None, "not measured in this run"
        elif at_most:
            row["met"] = value <= limit
            row["by"] = "" if row["met"] else f"{value / limit:.1f}x the limit" if limit else ""
        else:
            row["met"] = value >= limit
            row["by"] = "" if row["met"] else f"{value} of {limit:g}"
        out.append(row)
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target (issue 16) | at | measured | met | context |", "|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["met"] is None else "met" if r["met"] else f"**missed** ({r['by']})"
        at = f"{r['calls']} calls" if r["calls"] else "the run"
        value = "-" if r["value"] is None else r["value"]
        context = "-"
        if r.get("loop_floor_ratio"):
            context = (
                f"{r['loop_floor_ratio']}x the event-loop floor (a receiver on the same loop only forwarding: "
                f"{r['loop_floor_x_floor']}x the floor)"
            )
        lines.append(f"| {r['target']} | {at} | {value} | {met} | {context} |")
    return "\n".join(lines)


def judge_by_loop_floor(levels: list[dict[str, Any]], loop_floors: list[dict[str, Any]]) -> None:
    """Give each pass-through level measured where the event-loop floor was (same calls, same loop) its CPU per
    packet against the forwarding receiver's: `loop_floor_ratio` (and that receiver's `loop_floor_us`)."""
    forward = {(m["calls"], m["loop"]): m["us_per_packet"] for m in loop_floors if m["work"] == "forward"}
    for lv in levels:
        us = forward.get((lv["calls"], lv.get("loop", "asyncio")))
        if lv["relay"] == "passthrough" and us and lv.get("cpu_us_per_packet"):
            lv["loop_floor_us"] = us
            lv["loop_floor_ratio"] = round(lv["cpu_us_per_packet"] / us, 2)


def loop_floor_table(result: dict[str, Any]) -> str:
    """The event-loop floor of the run beside the floor and the bridge on the same loop at the same level."""
    floors = result.get("loop_floor") or []
    bridge = {
        (lv["calls"], lv.get("loop", "asyncio")): lv
        for lv in [*result.get("levels", []), *result.get("comparisons", [])]
        if lv["relay"] == "passthrough" and str(lv.get("variant", " loop")).endswith(" loop")
    }  # the levels, and the comparisons on the other loop (not those with another change)
    by = {(m["calls"], m["loop"], m["work"]): m for m in floors}
    lines = [
        "| event-loop floor (same run) | calls | receiver only counting: CPU us/packet (x floor) "
        "| receiver forwarding (the floor's work): CPU us/packet (x floor) | bridge: CPU us/packet (x floor) "
        "| bridge x event-loop floor |",
        "|---|---|---|---|---|---|",
    ]

    def cell(m: dict[str, Any] | None) -> str:
        return "-" if m is None else f"{m['us_per_packet']} ({m.get('floor_ratio')}x)"

    for calls, loop in sorted({(m["calls"], m["loop"]) for m in floors}):
        b = bridge.get((calls, loop))
        b_cell = f"{b['cpu_us_per_packet']} ({b.get('floor_ratio')}x)" if b else "-"
        lines.append(
            f"| {loop} | {calls} | {cell(by.get((calls, loop, 'count')))} | {cell(by.get((calls, loop, 'forward')))} "
            f"| {b_cell} | {(b or {}).get('loop_floor_ratio') or '-'} |"
        )
    verdict = loop_floor_verdict(floors)
    return "\n".join(lines) + (f"\n\n{verdict}" if verdict else "")


def loop_floor_verdict(floors: list[dict[str, Any]]) -> str:
    """Whether 2x the floor is within reach of an event loop woken per datagram, from the run's event-loop floor."""
    forward = [m for m in floors if m["work"] == "forward" and m.get("floor_ratio")]
    if not forward:
        return ""
    best = min(forward, key=lambda m: m["floor_ratio"])
    if best["floor_ratio"] <= 2.0:
        return (
            f"An event loop woken per datagram can forward within 2x the floor here: {best['floor_ratio']}x at "
            f"{best['calls']} calls on {best['loop']}."
        )
    return (
        f"Even the least an event loop woken per datagram can do (receive, unprotect, protect, send in the callback, "
        f"nothing else) costs {best['floor_ratio']}x the floor at best ({best['calls']} calls on {best['loop']}): "
        "at this packet pattern 2x the floor is out of reach of any Python event-loop forwarder on this machine."
    )


def comparisons_table(rows: list[dict[str, Any]]) -> str:
    """The same job with one change, beside the default figures of the same run (x floor: lower is better)."""
    lines = [
        "| change (same run) | calls | CPU us/packet | x floor | default x floor (run beside it) | x event-loop floor "
        "| added p50 / p99 ms | loss % | load CPU us/packet |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = r["added_latency_ms"]
        lines.append(
            f"| {r['variant']} | {r['calls']} | {r['cpu_us_per_packet']} | {r['floor_ratio']} "
            f"| {r['against']['floor_ratio']} | {r.get('loop_floor_ratio') or '-'} "
            f"| {lat.get('p50', '-')} / {lat.get('p99', '-')} | {r['loss_pct']} "
            f"| {r.get('load_cpu_us_per_packet') or '-'} |"
        )
    return "\n".join(lines)


def floor_line(floor: dict[str, Any] | None) -> str:
    """One sentence on the floor of the run (bench/floor.py), or on its absence (older bench.json)."""
    if not floor:
        return "Floor: not measured in this run."
    return (
        f"Floor (receive + SRTP unprotect + SRTP protect + send of one {floor['srtp_bytes_mean']:.0f}-byte "
        f"{floor['srtp_profile']} packet on 127.0.0.1, plain Python loop, this machine, this run): "
        f"{floor['us_per_packet']} us of CPU per packet (rounds: {floor['rounds_us_per_packet']})."
    )


def markdown(result: dict[str, Any]) -> str:
    """bench.md: machine, targets met or missed, the full table."""
    m = result["machine"]
    lines = [
        f"# voicebridge bench, {result['date']}",
        "",
        f"Machine: {m['cpus']} CPUs, {m.get('mem_gib', '?')} GiB, {m['platform']}, Python {m['python']}. "
        f"Load average before/after: {m.get('loadavg_before')} / {m.get('loadavg_after')}; "
        f"CPU stolen by the host during the run: {m.get('steal_s')} s; CPU pressure (PSI some avg60) "
        f"before/after: {m.get('cpu_pressure_before')} / {m.get('cpu_pressure_after')} %.",
        f"Window {result['window_s']} s per level{' (--quick)' if result['quick'] else ''}; "
        f"bridge event loop: {result.get('loop', 'asyncio')}; "
        f"headline level: {result['calls']} concurrent calls.",
        floor_line(result.get("floor")),
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, get, limit in TARGETS:
        value = get(result) if result.get("added_latency_ms") is not None else None
        met = "-" if value is None else ("yes" if value <= limit else "**no**")
        lines.append(f"| {name} | {value} | {met} |")
    no_loss = result.get("max_calls_without_loss")
    met_50 = "yes" if (no_loss or 0) >= 50 else "**no**"
    lines.append(f"| 50 concurrent calls without loss | {no_loss} calls without loss | {met_50} |")
    est = result.get("calls_per_core_estimate")
    if est and est.get("calls"):
        measured = f"{est['calls']} (from {est['from_level']} calls)"
        lines.append(f"| (estimate) calls one core carries by CPU alone | {measured} | - |")
    ratios = result.get("ratios")
    if ratios:
        lines += [
            "",
            f"Against aiortc's decode/encode path (same workload, {ratios['calls']} concurrent calls): added latency "
            f"p50 {ratios['added_latency_p50']}x and p99 {ratios['added_latency_p99']}x higher, CPU per call "
            f"{ratios['cpu_pct_per_call']}x, memory per call {ratios['mem_mib_per_call']}x.",
        ]
    if (result.get("loss_pct") or 0) > LOSS_THRESHOLD_PCT:  # the headline is pass-through: exact loss
        lines.append(
            f"\nAt the headline level {result['loss_pct']} % of the packets did not arrive within 0.5 s: the "
            "machine could not run the bridge and the load at that rate, so latency there includes waiting for a CPU."
        )
    lines += ["", targets_table(result.get("targets") or targets(result))]
    lines += ["", table(result["levels"]), ""]
    if result.get("loop_floor"):
        lines += [loop_floor_table(result), ""]
    if result.get("comparisons"):
        lines += [comparisons_table(result["comparisons"]), ""]
    ws = result.get("ws_transcoding")
    if ws:
        lines += [
            "WebSocket leg meeting a WebRTC leg (PCM16 24 kHz <-> Opus 48 kHz, media/pcm.py), codec cost per call: "
            + ", ".join(f"{k} {v}" for k, v in ws.items() if isinstance(v, (int, float))),
            "",
        ]
    if result.get("failures"):
        lines += ["Notes: " + "; ".join(result["failures"]), ""]
    return "\n".join(lines)


def doc_markers(kind: str) -> tuple[str, str]:
    """The comments between which `voicebridge bench --doc` writes a run's report (kind: "bench", "emulator")."""
    start, end = (f"<!-- {kind}: generated by voicebridge bench, {edge} -->" for edge in ("start", "end"))
    return start, end


def check_doc(doc: Path, kind: str) -> tuple[str, int, int]:
    """(doc's text, where its section for kind starts and ends); ValueError naming what is missing."""
    start, end = doc_markers(kind)
    try:
        old = doc.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--doc {doc}: cannot read it ({e.strerror})") from None
    i, j = old.find(start), old.find(end)
    if i < 0 or j < i:
        raise ValueError(f"--doc {doc}: no '{start}' ... '{end}' section to write the report into")
    return old, i + len(start), j


def doc_ready(doc: Path | None, kind: str, command: str) -> bool:
    """Whether --doc (if given) has kind's section; if not, said on stderr as command's error. Checked before minutes
    of measuring, not after."""
    if doc is None:
        return True
    try:
        check_doc(doc, kind)
    except ValueError as e:
        print(f"{command}: {e}", file=sys.stderr)
        return False
    return True


def splice_doc(doc: Path, kind: str, text: str) -> None:
    """Replace what stands between doc's markers for kind with text (check_doc's errors)."""
    old, i, j = check_doc(doc, kind)
    doc.write_text(old[:i] + "\n" + text.strip() + "\n" + old[j:], encoding="utf-8")


def publish(
    out: Path, doc: Path | None, kind: str, stem: str, result: dict[str, Any], text: str, say: Callable[[str], None],
    to_stderr: bool,
) -> None:
    """A finished --emulator or --batch run: its table printed (on stderr when stdout is for --json), <stem>.json
    and <stem>.md in out, and with --doc the table spliced into kind's section of doc and the JSON beside it."""
    print(text, file=sys.stderr if to_stderr else sys.stdout, flush=True)
    body = json.dumps(result, indent=2) + "\n"
    (out / f"{stem}.json").write_text(body, encoding="utf-8")
    (out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    if doc is not None:
        splice_doc(doc, kind, f"Run of {result['date']}, {result['cores']} cores:\n\n{text}")
        if (out / f"{stem}.json").resolve() != (doc.parent / f"{stem}.json").resolve():
            (doc.parent / f"{stem}.json").write_text(body, encoding="utf-8")
        say(f"report written into {doc}")
    say(f"done in {result['duration_s']} s: {out / f'{stem}.json'}")


def rerender(path: Path) -> str:
    """Recompute the headline of a bench.json from its levels and rewrite bench.md next to it (for docs)."""

    result = json.loads(Path(path).read_text(encoding="utf-8"))
    main_relay = result["levels"][0]["relay"] if result["levels"] else "passthrough"
    result.update(summarise(result["levels"], main_relay, int(result["calls"])))
    result["targets"] = targets(result)
    Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    Path(path).with_name("bench.md").write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    print(rerender(Path(sys.argv[1])))

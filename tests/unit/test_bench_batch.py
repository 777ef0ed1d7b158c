"""voicebridge bench --batch: the plan of batches, what a batch's report.json is reduced to, issue 17's batch targets
judged from those rows, and the section written into docs/bench.md (from fabricated reports: the batch runner
itself is tested with real calls elsewhere, and no test here runs a call)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from voicebridge.bench.batch import TreeCpu, _at, plan
from voicebridge.bench.batch import main as batch_bench_main
from voicebridge.bench.batch_report import (
    ALL_ADMITTED,
    AT_ONCE,
    BASELINE,
    OVERLOAD,
    baseline,
    markdown,
    run_row,
    targets,
)
from voicebridge.bench.report import check_doc

pytestmark = pytest.mark.unit


def _report(
    calls: int, concurrency: int, p50: float, p90: float, *, failed_live: int = 0, failed_setup: int = 0,
    refusals: int = 0, retried: int = 0, gave_up: int = 0,
) -> dict[str, Any]:
    """A batch's report.json as `voicebridge batch` writes it, with only the fields the bench reads."""
    rows: list[dict[str, Any]] = [{"call_id": f"c{i}", "ok": True, "setup_s": 0.5} for i in range(calls)]
    for i in range(failed_live):
        rows[i].update(ok=False, end_reason="leg_failed", error="peer connection failed")
    for i in range(failed_live, failed_live + failed_setup):
        rows[i].update(ok=False, setup_s=None, end_reason="leg_failed", error="refused: at capacity")
    failed = failed_live + failed_setup
    return {
        "total": calls, "concurrency": concurrency, "succeeded": calls - failed, "failed": failed,
        "peak_live": min(calls, 24), "refusals": refusals, "retried": retried, "gave_up": gave_up, "wall_s": 71.2,
        "turn_latency_s": {"count": 6 * calls, "mean": p50, "p50": p50, "p90": p90, "p99": p90},
        "timing": {"turn_gap_ms": {"p50": p50 * 1000, "p95": p90 * 1000}},
        "end_reasons": {"caller_hangup": calls - failed},
        "errors": [
            {"call_id": r["call_id"], "end_reason": r["end_reason"], "error": r["error"]} for r in rows if not r["ok"]
        ],
        "calls": rows,
    }


def _run(name: str, role: str, report: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name, "role": role, "report_ok": True, "load_before": 0.5, "load_after": 1.5, "process_s": 80.4,
        "cpu": {"batch_cores": 0.4, "emulator_cores": 0.9, "machine_busy_cores": 1.5, "other_cores": 0.2},
        **run_row(report),
    }


def _runs(at_once_p50: float, at_once_p90: float, **overload: int) -> list[dict[str, Any]]:
    return [
        _run("4 at 2", BASELINE, _report(4, 2, 0.50, 1.00)),
        _run("50 at 50", AT_ONCE, _report(50, 50, at_once_p50, at_once_p90)),
        _run("4 at 2, again", BASELINE, _report(4, 2, 0.52, 1.04)),
        _run("100 at 100", OVERLOAD, _report(100, 100, 0.5, 1.1, **overload)),
    ]


def test_the_plan_brackets_the_50_with_baselines_and_admits_all_only_in_its_own_batch() -> None:
    batches = plan(50, all_admitted=True)
    assert [(b.role, b.calls, b.concurrency) for b in batches] == [
        (BASELINE, 4, 2), (AT_ONCE, 50, 50), (BASELINE, 4, 2), (OVERLOAD, 100, 100), (ALL_ADMITTED, 50, 50),
    ]
    assert [b.env for b in batches[:4]] == [{}] * 4
    assert batches[4].env == {"VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE": "0"}  # no budget
    assert [b.role for b in plan(5)][-1] == OVERLOAD  # by default: the child's own budget admits the 50


def test_a_failed_call_that_went_live_failed_mid_call_one_that_never_did_at_set_up() -> None:
    row = run_row(_report(100, 100, 0.5, 1.1, failed_live=2, failed_setup=3, refusals=9, retried=4, gave_up=3))
    assert (row["failed"], row["failed_mid_call"], row["failed_setup"]) == (5, 2, 3)
    assert (row["refusals"], row["retried"], row["gave_up"]) == (9, 4, 3)
    assert row["turn_latency_s"] == {"count": 600, "p50": 0.5, "p90": 1.1}
    assert row["errors"][0] == {"call_id": "c0", "end_reason": "leg_failed", "error": "peer connection failed"}
    assert row["interrupted"] is False


def test_the_baseline_pools_the_turns_of_its_batches_and_shows_their_drift() -> None:
    def with_turns(report: dict[str, Any], gaps: list[float]) -> dict[str, Any]:
        for i, gap in enumerate(gaps):
            report["calls"][i % len(report["calls"])].setdefault("turn_latency", []).append({"latency_s": gap})
        return report

    first = run_row(with_turns(_report(4, 2, 0.5, 1.0), [0.4, 0.5, 0.6, 1.0]), keep_turns=True)
    again = run_row(with_turns(_report(4, 2, 0.55, 2.0), [0.45, 0.55, 1.1, 2.0]), keep_turns=True)
    assert sorted(first["turn_gaps_s"]) == [0.4, 0.5, 0.6, 1.0]
    assert "turn_gaps_s" not in run_row(_report(4, 2, 0.5, 1.0))  # only a baseline keeps its turns
    base = baseline([{"role": BASELINE, **first}, {"role": BASELINE, **again}])
    assert base is not None
    # Nearest rank over the 8 turns: the 4th and the 8th.
    assert (base["turns"], base["p50"], base["p90"]) == (8, 0.55, 2.0)
    assert (base["drift_p50_pct"], base["drift_p90_pct"]) == (10.0, 100.0)


def test_every_target_met_when_the_50_keep_the_baselines_timing_and_the_refused_100_all_succeed() -> None:
    runs = _runs(0.54, 1.25, refusals=29, retried=17)
    base = baseline(runs)
    assert base is not None
    assert (base["p50"], base["p90"]) == pytest.approx((0.51, 1.02))
    assert base["drift_p50_pct"] == 4.0
    verdicts = targets(runs)
    assert [t["verdict"] for t in verdicts] == ["met"] * 5
    assert verdicts[1]["measured"] == "+5.9 % (0.540 s vs 0.510 s)"
    assert verdicts[4]["measured"].startswith("29 refusals (17 calls retried, 0 gave up), 100/100 succeeded")


def test_missed_targets_say_by_how_much_and_a_batch_that_did_not_run_is_not_measured() -> None:
    runs = _runs(0.714, 1.02, failed_live=2, refusals=5, retried=5, gave_up=1, failed_setup=1)
    verdicts = {t["target"]: t for t in targets(runs)}
    assert verdicts["turn gap p50 within 10 % of 2 at once"]["verdict"] == "missed: by 30.0 points"
    assert verdicts["turn gap p90 within 25 % of 2 at once"]["met"] is True
    assert verdicts["no call fails mid-call"]["verdict"] == "missed: 2 calls lost"
    assert verdicts["no call fails mid-call"]["measured"] == "2 failed mid-call (1 at set-up)"
    assert verdicts["calls beyond capacity refused, retried, finally succeed"]["verdict"] == "missed: 3 did not succeed"
    alone = [r for r in runs if r["role"] == AT_ONCE]  # no baseline, no overload batch
    assert [t["met"] for t in targets(alone)] == [True, None, None]
    assert targets([])[0]["verdict"] == "not measured"


def test_the_doc_section_has_the_verdicts_a_row_per_batch_and_the_baselines_drift() -> None:
    runs = _runs(0.54, 1.25)
    runs.append({"name": "50 at 50, all admitted", "role": ALL_ADMITTED, "calls": 50, "concurrency": 50,
                 "report_ok": False, "exit_status": 1, "load_before": 2.0, "load_after": 2.5})
    result = {
        "scenario": "late_order", "cores": 2, "load_before": 0.5, "load_after": 2.5, "duration_s": 290, "runs": runs,
        "baseline": baseline(runs), "targets": targets(runs),
    }
    text = markdown(result)
    assert "| turn gap p50 within 10 % of 2 at once | 50 at 50 | +5.9 % (0.540 s vs 0.510 s) | met |" in text
    assert "calls beyond capacity refused, retried, finally succeed | 100 at 100 | 0 refusals" in text
    assert "(capacity never reached: nothing refused) | met |" in text
    assert ("| 50 at 50 | 50 @ 50 | 50/50 | 0 / 0 | 24 | 0 (0; 0) | 71.2 s (80 s) | 0.540 / 1.250 s | "
            "+5.9 % / +22.5 % | 0.40 / 0.90 cores | 1.50 cores (others 0.20) | 0.5 / 1.5 |") in text
    assert "| 50 at 50, all admitted | 50 @ 50 | no report (exit 1) |" in text
    runs[0]["interrupted"] = True  # Ctrl-C: its live calls hung up
    assert "| 4 at 2 | 4 @ 2 | 4/4 (interrupted) | 0 / 0 |" in markdown(result)
    assert "2 at once (the mean of 2 baseline batches' percentiles): p50 0.510 s" in text  # rows without turns
    assert "the last baseline against the first: p50 +4.0 %, p90 +4.0 %" in text
    assert "Not a quiet machine" not in text  # others took 0.2 cores at most
    runs[1]["cpu"] = {**runs[1]["cpu"], "other_cores": 1.5}
    assert "**Not a quiet machine**: other processes took 0.20-1.50 of its 2 cores" in markdown(result)


def test_cpu_is_read_over_the_calls_window_and_what_others_took_is_the_rest_of_the_machines() -> None:
    samples = [(10.0, 1.0, 2.0, 3.0), (12.0, 3.0, 6.0, 7.0)]
    assert _at(samples, 11.0) == (11.0, 2.0, 4.0, 5.0)
    assert _at(samples, 5.0) == samples[0] and _at(samples, 20.0) == samples[1]
    tree = TreeCpu(root=1)
    tree.samples = [(10.0, 1.0, 2.0, 3.0), (12.0, 2.0, 3.0, 7.0)]
    assert tree.over(10.0, 12.0) == {
        "batch_cores": 0.5, "emulator_cores": 0.5, "machine_busy_cores": 2.0, "other_cores": 1.0,
        "batch_cpu_s": 1.0, "emulator_cpu_s": 1.0,
    }
    assert tree.over(12.0, 12.0) is None


def test_a_doc_without_the_batch_section_is_refused_before_any_batch_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plain.md").write_text("# no markers\n", encoding="utf-8")
    args = argparse.Namespace(out=tmp_path / "out", doc=tmp_path / "plain.md", json=False)
    assert batch_bench_main(args) == 2
    assert "no '<!-- batch: generated by voicebridge bench, start -->'" in capsys.readouterr().err
    check_doc(Path(__file__).parents[2] / "docs" / "bench.md", "batch")  # the section make bench writes

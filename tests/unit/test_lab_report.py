"""`voicebridge test`'s report: each run's outcome from its typed call result, the counts, and JUnit XML that a
standard parser reads with the counts of the report (xml.etree, the library most JUnit consumers build on)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.summaries import make_summary
from voicebridge.commands.test import matrix
from voicebridge.lab.junit import junit_xml
from voicebridge.lab.report import LabReport, LabRun, lab_run, refusal_counts, tally, verdict
from voicebridge.results import CallSummary
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.unit
REAL_SUMMARY = Path(__file__).resolve().parents[1] / "fixtures" / "results" / "summary.json"


def verdict_json(name: str, kind: str, passed: bool, skipped: bool = False, evidence: Any = None) -> dict[str, Any]:
    return {"name": name, "kind": kind, "passed": passed, "skipped": skipped, "detail": f"{name}: detail",
            "evidence": evidence}


def run(summary: CallSummary, repeat: int = 1, impairment: str = "good") -> LabRun:
    return lab_run(summary, impairment, repeat, f"calls/{summary.call_id}", {})


def report_of(runs: list[LabRun], min_pass_rate: float = 1.0) -> LabReport:
    total, passed, failed, errors, rate = tally(runs)
    return LabReport(
        version=1, test_id="test_x", backend="emulator", model="gpt-realtime", started_at=0.0, wall_s=12.5,
        concurrency=2, repeat=2, scenarios=sorted({r.scenario for r in runs}), impairments=["good"],
        min_pass_rate=min_pass_rate, interrupted=False, total=total, passed=passed, failed=failed, errors=errors,
        pass_rate=rate, ok=verdict(rate, min_pass_rate, False), runs=runs,
    )


@pytest.fixture
def runs() -> list[LabRun]:
    real = CallSummary.model_validate_json(REAL_SUMMARY.read_text())  # a real late_order call, all criteria pass
    wrong = make_summary(
        call_id="c2", scenario="quick_bye", passed=False,
        criteria=[verdict_json("hung up", "end_reason", True), verdict_json("says refund", "said", False),
                  verdict_json("refund call", "tool", False, evidence={"calls": 0}),
                  verdict_json("polite", "judge", False, skipped=True)],
    )
    timed_out = make_summary(call_id="c3", scenario="quick_bye", end_reason="idle_timeout")
    broken = make_summary(call_id="c4", scenario="quick_bye", end_reason="leg_failed", error="cs leg: ICE failed")
    return [run(real), run(wrong), run(timed_out, 2), run(broken, 3)]


def test_outcomes_and_counts(runs: list[LabRun]) -> None:
    assert [r.outcome for r in runs] == ["passed", "failed", "failed", "error"]
    assert [r.passed for r in runs] == [True, False, False, False]
    assert tally(runs) == (4, 1, 2, 1, 0.25)
    real = runs[0]
    assert real.name == "late_order[good]#1" and real.tool_errors == 0 and real.tool_calls == 3
    assert real.timing is not None and real.timing.turn_gap_ms.p50 is not None and real.timing.interruptions == 0
    assert runs[1].why == "criteria failed: says refund, refund call"  # the skipped judge is no failure
    assert runs[2].why == "call ended idle_timeout"
    assert runs[3].why == "call ended leg_failed: cs leg: ICE failed"
    # The report reads back from its JSON into the same record (what `compare` does).
    report = report_of(runs)
    assert LabReport.model_validate_json(json.dumps(report.model_dump(mode="json"))) == report


@pytest.mark.parametrize(
    ("rate", "least", "ok"), [(1.0, 1.0, True), (0.75, 1.0, False), (0.6667, 2 / 3, True), (0.0, 0.0, True)]
)
def test_the_verdict_is_the_pass_rate_against_the_minimum(rate: float, least: float, ok: bool) -> None:
    assert verdict(rate, least, interrupted=False) is ok
    assert verdict(rate, least, interrupted=True) is False


def test_junit_parses_and_its_counts_match(runs: list[LabRun]) -> None:
    report = report_of(runs)
    root = ET.fromstring(junit_xml(report))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "2", "1")
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [r.name for r in runs]
    for suite in root.findall("testsuite"):
        kids = suite.findall("testcase")
        assert int(suite.get("tests", "")) == len(kids)
        assert int(suite.get("failures", "")) == sum(c.find("failure") is not None for c in kids)
        assert int(suite.get("errors", "")) == sum(c.find("error") is not None for c in kids)
    by_name = {c.get("name"): c for c in cases}
    passed = by_name["late_order[good]#1"]
    assert passed.find("failure") is None and passed.find("error") is None
    assert passed.get("time") == f"{runs[0].duration_s:.3f}"
    # Each failed criterion is a <failure> naming it, with its evidence; the skipped judge is not one.
    failures = by_name["quick_bye[good]#1"].findall("failure")
    assert [f.get("message") for f in failures] == [
        "says refund: says refund: detail", "refund call: refund call: detail"
    ]
    assert [f.get("type") for f in failures] == ["said", "tool"]
    assert json.loads(failures[1].text or "") == {"calls": 0}
    props = {p.get("name"): p.get("value") for p in by_name["quick_bye[good]#1"].iter("property")}
    assert props["criterion:polite"] == "skipped" and props["criterion:hung up"] == "passed"
    assert "SKIPPED polite [judge]" in (by_name["quick_bye[good]#1"].findtext("system-out") or "")
    # A call that failed without a failed criterion says how it ended; one that could not be judged is an error.
    assert [f.get("message") for f in by_name["quick_bye[good]#2"].findall("failure")] == ["call ended idle_timeout"]
    error = by_name["quick_bye[good]#3"].find("error")
    assert error is not None and error.get("type") == "leg_failed" and error.text == "cs leg: ICE failed"


def test_the_matrix_goes_repeat_by_repeat_with_a_seed_per_repeat() -> None:
    late, bye = load_scenario("late_order"), load_scenario("quick_bye")
    jobs = matrix([late, bye], ["good", "loss=5%"], 2, 7)
    assert [(j.scenario.name, j.impairment, j.repeat) for j in jobs] == [
        (s, i, r) for r in (1, 2) for s in ("late_order", "quick_bye") for i in ("good", "loss=5%")
    ]
    assert [j.scenario.impair_seed for j in jobs] == [7] * 4 + [8] * 4
    assert {j.scenario.impair for j in jobs} == {"good", "loss=5%"}
    assert all(j.scenario.path == (late if j.scenario.name == "late_order" else bye).path for j in jobs)
    # No --impair: each scenario as its file says, labelled `good` when it has no impairment of its own.
    own = matrix([late.model_copy(update={"impair": "3g"}), bye], [], 1, None)
    assert [(j.impairment, j.scenario.impair) for j in own] == [("3g", "3g"), ("good", "")]


def test_refusals_at_creation_are_counted_and_shown_never_a_failure(tmp_path: Path) -> None:
    import io

    from voicebridge.batch.lab_html import render_lab
    from voicebridge.commands.test import print_table

    ok = make_summary(call_id="c1", scenario="quick_bye")
    refused_then_ran = lab_run(ok, "good", 1, "calls/c1", {}, refusals=3)
    gave_up = lab_run(
        make_summary(call_id="c2", scenario="quick_bye", end_reason="error", error="refused 12 times"),
        "good", 2, "calls/c2", {}, refusals=12, gave_up=True,
    )
    assert refused_then_ran.outcome == "passed" and gave_up.outcome == "error"
    counts = refusal_counts([refused_then_ran, gave_up, run(ok, 3)])
    assert counts == {"refusals": 15, "retried": 2, "gave_up": 1}
    report = report_of([refused_then_ran, gave_up]).model_copy(update=counts)
    assert LabReport.model_validate_json(report.model_dump_json()).runs[0].refusals == 3
    out = io.StringIO()
    print_table(report, tmp_path, out)
    assert "refused at creation (server at capacity): 15 times, 2 runs retried, 1 gave up" in out.getvalue()
    assert "<b>15</b>refused at creation (2 runs retried, 1 gave up)" in render_lab(report)

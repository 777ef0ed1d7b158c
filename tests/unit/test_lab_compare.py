"""`voicebridge compare`: the statistics of its two rules, and the comparison of a real `voicebridge test` report
with itself (no regression) and with copies into which a regression was injected (flagged, exit status 1)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from voicebridge.cli import main as voicebridge
from voicebridge.lab.compare import (
    FIGURES,
    CompareInputError,
    compare,
    figure_change,
    fisher_less,
    load_report,
    mad,
    pass_rate_dropped,
)
from voicebridge.lab.report import LabReport, LabRun

pytestmark = pytest.mark.unit
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lab"
GAP_P50 = next(f for f in FIGURES if f.name == "turn_gap_p50")


@pytest.fixture
def real() -> LabReport:
    return load_report(FIXTURE)


def test_fisher_one_sided_tail() -> None:
    assert math.isclose(fisher_less(2, 2, 0, 2), 1 / 6)  # the one failing draw of 4 fell in NEW's 2 twice
    assert math.isclose(fisher_less(10, 10, 5, 10), 3003 / 184756)  # C(15,5) / C(20,10)
    assert fisher_less(3, 4, 4, 4) == 1.0 and fisher_less(0, 3, 0, 3) == 1.0


@pytest.mark.parametrize(
    ("old", "new", "flagged"),
    [
        ((2, 2), (1, 2), True),  # few runs: any drop
        ((10, 10), (5, 10), True),  # p = 0.016
        ((20, 20), (19, 20), False),  # p = 0.5: noise
        ((9, 10), (7, 10), False),  # p = 0.29
        ((1, 2), (2, 2), False),  # better
        ((5, 5), (5, 5), False),
    ],
)
def test_pass_rate_rule(old: tuple[int, int], new: tuple[int, int], flagged: bool) -> None:
    assert pass_rate_dropped(*old, *new)[0] is flagged


def _with_gap(run: LabRun, p50: float) -> LabRun:
    assert run.timing is not None
    gaps = run.timing.turn_gap_ms.model_copy(update={"p50": p50})
    return run.model_copy(update={"timing": run.timing.model_copy(update={"turn_gap_ms": gaps})})


def test_figure_rule_floor_and_spread(real: LabReport) -> None:
    assert mad([1.0, 2.0, 10.0]) == 1.0 and mad([5.0]) == 0.0
    run = real.runs[0]
    old = [_with_gap(run, v) for v in (500.0, 520.0, 540.0)]  # median 520, MAD 20: 3 x 1.4826 x 20 < 100 ms
    assert not figure_change(GAP_P50, old, [_with_gap(run, 615.0)]).regression
    change = figure_change(GAP_P50, old, [_with_gap(run, 625.0)])
    assert change.regression and (change.threshold, change.delta) == (100.0, 105.0)
    noisy = [_with_gap(run, v) for v in (300.0, 520.0, 900.0)]  # MAD 220: the spread decides, 978.5 ms
    assert not figure_change(GAP_P50, noisy, [_with_gap(run, 1450.0)]).regression
    change = figure_change(GAP_P50, noisy, [_with_gap(run, 1550.0)])
    assert change.regression and change.threshold == round(3 * 1.4826 * 220, 4)
    errored = run.model_copy(update={"outcome": "error"})  # an error measures no agent
    assert figure_change(GAP_P50, old, [errored]).new_median is None


def test_a_report_compared_with_itself_has_no_regression(real: LabReport) -> None:
    cmp = compare(real, real)
    assert not cmp.regression and cmp.regressions == 0 and len(cmp.cells) == 4
    for cell in cmp.cells:
        assert not cell.reasons and not cell.criteria_changed and cell.p_value == 1.0
        assert all(f.delta == 0 for f in cell.figures if f.delta is not None)


def regressed(real: LabReport) -> LabReport:
    """late_order[good] loses its refund in both runs; unknown_order[good] answers 400 ms slower."""
    runs = []
    for r in real.runs:
        if (r.scenario, r.impairment) == ("late_order", "good"):
            criteria = [c.model_copy(update={"passed": False}) if c.name == "refund issued" else c for c in r.criteria]
            r = r.model_copy(update={"passed": False, "outcome": "failed", "criteria": criteria})
        if (r.scenario, r.impairment) == ("unknown_order", "good"):
            assert r.timing is not None and r.timing.turn_gap_ms.p50 is not None
            r = _with_gap(r, r.timing.turn_gap_ms.p50 + 400)
        runs.append(r)
    return real.model_copy(update={"test_id": "test_new", "runs": runs, "passed": 2, "failed": 6})


def test_an_injected_regression_is_flagged(real: LabReport) -> None:
    cmp = compare(real, regressed(real))
    cells = {(c.scenario, c.impairment): c for c in cmp.cells}
    assert cmp.regression and cmp.regressions == 2
    late = cells[("late_order", "good")]
    assert late.pass_rate_regression and (late.old_pass_rate, late.new_pass_rate) == (1.0, 0.0)
    assert [(k.name, k.old_passed, k.new_passed) for k in late.criteria_changed] == [("refund issued", 2, 0)]
    assert late.reasons == ["pass rate 2/2 -> 0/2 (Fisher p = 0.167, fewer than 5 runs)"]
    slow = cells[("unknown_order", "good")]
    assert not slow.pass_rate_regression and [f.name for f in slow.figures if f.regression] == ["turn_gap_p50"]
    assert not cells[("late_order", "lossy")].regression and not cells[("unknown_order", "lossy")].regression


def _folder(tmp_path: Path, name: str, report: LabReport) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(report.model_dump(mode="json")))
    return folder


def test_the_command_exit_status_and_files(
    real: LabReport, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _folder(tmp_path, "old", real)
    same = tmp_path / "same"
    shutil.copytree(old, same)
    assert voicebridge(["compare", str(old), str(same)]) == 0
    assert "0 regressions" in capsys.readouterr().out
    new = _folder(tmp_path, "new", regressed(real))
    assert voicebridge(["compare", str(old), str(new), "--json"]) == 1
    out = capsys.readouterr().out
    assert "late_order[good]" in out and "REGRESSION" in out and "criterion 'refund issued' passed 2/2 -> 0/2" in out
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed == json.loads((new / "compare.json").read_text()) and printed["regressions"] == 2
    page = (new / "compare.html").read_text()
    assert "REGRESSION" in page and "refund issued" in page


def test_bad_input_is_named(real: LabReport, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _folder(tmp_path, "good", real)
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.json").write_text('{"version": 1, "runs": "x"}')
    cases = [
        (tmp_path / "nowhere", "nowhere: no such folder"),
        (tmp_path / "empty", f"{tmp_path / 'empty' / 'report.json'}: missing"),
        (broken, f"{broken / 'report.json'}: not a `voicebridge test` report"),
    ]
    for folder, message in cases:
        assert voicebridge(["compare", str(good), str(folder)]) == 2
        assert message in capsys.readouterr().err
        with pytest.raises(CompareInputError, match=r"report|folder"):
            load_report(folder)

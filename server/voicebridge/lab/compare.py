"""`voicebridge compare OLD NEW`: two `voicebridge test` reports side by side, per scenario x impairment, with the
regressions beyond run-to-run noise flagged by two stated rules (docs/lab.md "Comparing runs"):

- pass rate: NEW's is lower than OLD's, and either the one-sided Fisher exact test says so (p < 0.05, the
  hypothesis that NEW passes less often than OLD) or one side has fewer than `FEW_RUNS` runs, where no drop can be
  significant and any drop is flagged rather than let through;
- a figure (turn gap p50 / p95, overlap, interruptions, duration, tool errors, longest silence): NEW's median over
  its runs exceeds OLD's by more than max(the figure's floor, K_SPREAD x OLD's spread), the spread being the robust
  standard deviation of OLD's runs (MAD_TO_SIGMA x their median absolute deviation). With one run a side the
  spread is 0 and the floor decides.

Runs that ended in error (lab/report.py) count in the pass rate but not in the figures (they measure no agent).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from voicebridge.results import Record

from .report import LabReport, LabRun, tally

COMPARE_VERSION = 1
ALPHA = 0.05
FEW_RUNS = 5
K_SPREAD = 3.0
# The median absolute deviation times this estimates the standard deviation of normal noise (1 / Phi^-1(3/4)).
MAD_TO_SIGMA = 1.4826


class CompareInputError(ValueError):
    """A folder or report that cannot be compared; the message names the file."""


class Figure:
    """A per-run figure compared by the median rule: how to read it from a run, and its floor."""

    def __init__(self, name: str, unit: str, floor: float, read: Callable[[LabRun], float | None]) -> None:
        self.name, self.unit, self.floor, self.read = name, unit, floor, read


def _gap(run: LabRun, which: str) -> float | None:
    t = run.timing
    return None if t is None else getattr(t.turn_gap_ms, which)


FIGURES: tuple[Figure, ...] = (
    Figure("turn_gap_p50", "ms", 100.0, lambda r: _gap(r, "p50")),
    Figure("turn_gap_p95", "ms", 150.0, lambda r: _gap(r, "p95")),
    Figure("overlap_s", "s", 0.5, lambda r: r.timing.overlap_s if r.timing else None),
    Figure("interruptions", "", 0.5, lambda r: float(r.timing.interruptions) if r.timing else None),
    Figure("max_silence_s", "s", 1.0, lambda r: r.timing.max_silence_s if r.timing else None),
    Figure("duration_s", "s", 2.0, lambda r: r.duration_s),
    Figure("tool_errors", "", 0.5, lambda r: float(r.tool_errors)),
)


class FigureChange(Record):
    name: str
    unit: str
    old_median: float | None
    new_median: float | None
    old_spread: float | None
    """Robust standard deviation of OLD's runs: MAD_TO_SIGMA x their median absolute deviation."""
    threshold: float | None
    """max(floor, K_SPREAD x old_spread): how far above OLD's median NEW's may be."""
    delta: float | None
    """new_median - old_median."""
    regression: bool


class CriterionChange(Record):
    """A criterion whose verdicts differ between the two (skipped verdicts left out)."""

    name: str
    old_passed: int
    old_ran: int
    new_passed: int
    new_ran: int


class CellComparison(Record):
    scenario: str
    impairment: str
    old_runs: int
    new_runs: int
    old_pass_rate: float | None
    new_pass_rate: float | None
    p_value: float | None
    """One-sided Fisher exact p that NEW passes less often; None when either side has no runs."""
    pass_rate_regression: bool
    criteria_changed: list[CriterionChange]
    figures: list[FigureChange]
    regression: bool
    reasons: list[str]
    """Why it is a regression, one line each; or why it could not be compared."""


class Comparison(Record):
    """compare.json; `voicebridge compare --json` prints it as stdout's last line."""

    version: int
    old: str
    new: str
    old_test_id: str
    new_test_id: str
    rules: list[str]
    cells: list[CellComparison]
    regressions: int
    """Cells with a regression."""
    regression: bool


RULES = [
    f"pass rate: a regression when NEW's is lower and the one-sided Fisher exact test gives p < {ALPHA}, or when "
    f"either side has fewer than {FEW_RUNS} runs (any drop)",
    f"figures: a regression when NEW's median exceeds OLD's by more than max(floor, {K_SPREAD:g} x OLD's robust "
    f"standard deviation, {MAD_TO_SIGMA} x its median absolute deviation); floors: "
    + ", ".join(f"{f.name} {f.floor:g}{f.unit and ' ' + f.unit}" for f in FIGURES),
]


# -- statistics ---------------------------------------------------------------------------------------------------


def fisher_less(old_passed: int, old_runs: int, new_passed: int, new_runs: int) -> float:
    """One-sided Fisher exact test: P(NEW passes this few or fewer) given both sides' passes in all, under the
    hypothesis that both pass equally often (the hypergeometric tail)."""
    total, passes = old_runs + new_runs, old_passed + new_passed
    denominator = math.comb(total, new_runs)
    low = max(0, passes - old_runs)
    tail = sum(math.comb(passes, x) * math.comb(total - passes, new_runs - x) for x in range(low, new_passed + 1))
    return min(1.0, tail / denominator)


def pass_rate_dropped(old_passed: int, old_runs: int, new_passed: int, new_runs: int) -> tuple[bool, float]:
    """(a regression by the pass-rate rule, its Fisher p)."""
    p = fisher_less(old_passed, old_runs, new_passed, new_runs)
    lower = new_passed * old_runs < old_passed * new_runs
    return lower and (p < ALPHA or min(old_runs, new_runs) < FEW_RUNS), p


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median."""
    mid = statistics.median(values)
    return statistics.median(abs(v - mid) for v in values)


def figure_change(figure: Figure, old: Sequence[LabRun], new: Sequence[LabRun]) -> FigureChange:
    a = [v for v in (figure.read(r) for r in old if r.outcome != "error") if v is not None]
    b = [v for v in (figure.read(r) for r in new if r.outcome != "error") if v is not None]
    if not a or not b:
        return FigureChange(name=figure.name, unit=figure.unit, old_median=statistics.median(a) if a else None,
                            new_median=statistics.median(b) if b else None, old_spread=None, threshold=None,
                            delta=None, regression=False)
    old_median, new_median, spread = statistics.median(a), statistics.median(b), MAD_TO_SIGMA * mad(a)
    threshold = max(figure.floor, K_SPREAD * spread)
    delta = new_median - old_median
    return FigureChange(
        name=figure.name, unit=figure.unit, old_median=round(old_median, 4), new_median=round(new_median, 4),
        old_spread=round(spread, 4), threshold=round(threshold, 4), delta=round(delta, 4),
        regression=delta > threshold,
    )


# -- the comparison -----------------------------------------------------------------------------------------------


def _criteria_changed(old: Sequence[LabRun], new: Sequence[LabRun]) -> list[CriterionChange]:
    def counts(runs: Sequence[LabRun]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for r in runs:
            for c in r.criteria:
                if not c.skipped:
                    passed, ran = out.get(c.name, (0, 0))
                    out[c.name] = (passed + c.passed, ran + 1)
        return out

    a, b = counts(old), counts(new)
    changed = []
    for name in dict.fromkeys([*a, *b]):
        (op, on), (np_, nn) = a.get(name, (0, 0)), b.get(name, (0, 0))
        # Changed: one side has a verdict the other never had (a pass where all failed, or a failure).
        if (op > 0, op < on) != (np_ > 0, np_ < nn):
            changed.append(CriterionChange(name=name, old_passed=op, old_ran=on, new_passed=np_, new_ran=nn))
    return changed


def _cell(scenario: str, impairment: str, old: list[LabRun], new: list[LabRun]) -> CellComparison:
    reasons: list[str] = []
    if not old or not new:
        reasons.append(f"only in {'NEW' if not old else 'OLD'}: not compared")
    _, old_passed, _, _, old_rate = tally(old)
    _, new_passed, _, _, new_rate = tally(new)
    dropped, p = (pass_rate_dropped(old_passed, len(old), new_passed, len(new)) if old and new else (False, None))
    if dropped:
        reasons.append(
            f"pass rate {old_passed}/{len(old)} -> {new_passed}/{len(new)} (Fisher p = {p:.3f}"
            + (f", fewer than {FEW_RUNS} runs" if min(len(old), len(new)) < FEW_RUNS else "") + ")"
        )
    figures = [figure_change(f, old, new) for f in FIGURES] if old and new else []
    for f in figures:
        if f.regression:
            reasons.append(
                f"{f.name} median {f.old_median:g} -> {f.new_median:g}{f.unit and ' ' + f.unit} "
                f"(+{f.delta:g} > {f.threshold:g})"
            )
    return CellComparison(
        scenario=scenario, impairment=impairment, old_runs=len(old), new_runs=len(new),
        old_pass_rate=old_rate if old else None, new_pass_rate=new_rate if new else None,
        p_value=round(p, 4) if p is not None else None, pass_rate_regression=dropped,
        criteria_changed=_criteria_changed(old, new) if old and new else [], figures=figures,
        regression=dropped or any(f.regression for f in figures), reasons=reasons,
    )


def _cells(report: LabReport) -> dict[tuple[str, str], list[LabRun]]:
    cells: dict[tuple[str, str], list[LabRun]] = {}
    for r in report.runs:
        cells.setdefault((r.scenario, r.impairment), []).append(r)
    return cells


def compare(old: LabReport, new: LabReport, old_name: str = "OLD", new_name: str = "NEW") -> Comparison:
    a, b = _cells(old), _cells(new)
    cells = [_cell(s, i, a.get((s, i), []), b.get((s, i), [])) for s, i in dict.fromkeys([*a, *b])]
    regressions = sum(c.regression for c in cells)
    return Comparison(
        version=COMPARE_VERSION, old=old_name, new=new_name, old_test_id=old.test_id, new_test_id=new.test_id,
        rules=RULES, cells=cells, regressions=regressions, regression=regressions > 0,
    )


def load_report(folder: Path) -> LabReport:
    """A `voicebridge test` folder's report.json; CompareInputError naming the folder or file otherwise."""
    if not folder.is_dir():
        raise CompareInputError(f"{folder}: no such folder (expected a `voicebridge test` output folder)")
    path = folder / "report.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompareInputError(f"{path}: missing: {folder} is not a `voicebridge test` output folder") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CompareInputError(f"{path}: cannot read: {e}") from None
    try:
        return LabReport.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "the top"
        raise CompareInputError(
            f"{path}: not a `voicebridge test` report ({e.error_count()} problems; first at {where}: {first['msg']})"
        ) from None

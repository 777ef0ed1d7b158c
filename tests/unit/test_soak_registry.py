"""The soak's bound on RSS per ended call retained: relative to keeping calls whole, and deaf to one-off steps."""

from __future__ import annotations

import random

import pytest

from voicebridge.batch.soak import _slope
from voicebridge.batch.soak_registry import MIN_SLOPE_CALLS, RegistryFigures, judge, median_slope, per_100_calls

pytestmark = pytest.mark.unit
N = 200
rng = random.Random(12)


def trace(per_call_mb: float, step_mb: float = 0.0, step_at: int = N * 3 // 4, jitter_mb: float = 0.2) -> list[float]:
    """RSS after each call: a slope, an optional one-off step (an arena grown once), jitter."""
    return [
        150.0 + i * per_call_mb + (step_mb if i >= step_at else 0.0) + rng.uniform(-jitter_mb, jitter_mb)
        for i in range(N + 1)
    ]


def figures(retained: list[float], baseline: list[float] | None = None) -> RegistryFigures:
    return RegistryFigures(
        baseline=per_100_calls(baseline or trace(0.0)),
        retained=per_100_calls(retained),
        kept_whole=per_100_calls(trace(2.4)[:21], second_half=False),  # 2.4 MiB a call kept whole, as measured
    )


def test_median_slope_is_the_median_growth_across_windows_of_a_tenth() -> None:
    line = [2.0 * i for i in range(101)]
    stepped = line[:50] + [v + 30.0 for v in line[50:]]  # one jump: 10 of the 91 windows of 10 steps hold it
    assert median_slope(line) == median_slope(stepped) == 2.0
    assert median_slope([1.0, 4.0]) == 3.0 and median_slope([5.0]) is None


def test_ended_calls_kept_whole_fail_the_bound() -> None:
    f = figures(trace(2.4))
    assert judge(f, N, 20) is not None and f.judged and f.bound == pytest.approx(12.0, rel=0.1)


def test_a_small_record_per_ended_call_passes() -> None:
    f = figures(trace(0.006))  # ~6 KiB per ended call, as measured after the change
    assert judge(f, N, 20) is None and f.judged


def test_a_leak_a_tenth_of_a_whole_call_fails() -> None:
    assert judge(figures(trace(0.24)), N, 20) is not None


def test_a_one_off_step_is_not_a_leak() -> None:
    """8 MB at once (a malloc arena, a lazy import) in the middle of the judged half, twice: least squares reads it
    as a slope over the bound; the median over windows does not."""
    stepped = trace(0.006, step_mb=8.0)
    assert judge(figures(stepped), N, 20) is None
    twice = trace(0.006, step_mb=8.0, step_at=N * 5 // 8)
    twice = twice[: N * 7 // 8] + [v + 8.0 for v in twice[N * 7 // 8 :]]
    assert judge(figures(twice), N, 20) is None
    least_squares = _slope(stepped[len(stepped) // 2 :])
    assert least_squares is not None and least_squares * 100 > figures(stepped).kept_whole * 0.05  # type: ignore[operator]


def test_too_few_calls_are_reported_not_judged() -> None:
    f = figures(trace(2.4)[: MIN_SLOPE_CALLS // 2])
    assert judge(f, MIN_SLOPE_CALLS - 1, 20) is None and not f.judged and f.retained is not None
    assert judge(figures(trace(2.4)), N, 4) is None

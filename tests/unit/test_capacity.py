"""observability/capacity.py: the lag meter's smoothing, the budget per core, the lag floor, the settings."""

from __future__ import annotations

import asyncio

import pytest

from voicebridge.emulator.limits import Limits
from voicebridge.observability.capacity import Capacity, CapacityLimits, LagMeter


class SetLag:
    def __init__(self, lag_ms: float = 0.0) -> None:
        self.lag_ms = lag_ms


def test_the_meter_smooths_one_stall_and_follows_a_lasting_lag() -> None:
    meter = LagMeter(tick_s=0.05, smoothing_s=2.0)
    meter.observe(1.0, 1.05)  # one callback a second late: noticed, not yet "a second of lag"
    assert 300 < meter.lag_ms < 500 and meter.take_peak() == 1000.0 and meter.peak_ms == 0.0
    for _ in range(200):  # ten seconds of callbacks 300 ms late
        meter.observe(0.3, 0.35)
    assert meter.lag_ms == pytest.approx(300.0, abs=1.0)
    for _ in range(400):  # then on time again
        meter.observe(-0.001, 0.05)  # early counts as on time
    assert meter.lag_ms < 1.0


async def test_the_meter_ticks_on_the_running_loop() -> None:
    now = [100.0]
    ticked = asyncio.Event()
    meter = LagMeter(tick_s=0.01, clock=lambda: now[0])
    observe = meter.observe

    def observed(late_s: float, dt_s: float) -> None:
        observe(late_s, dt_s)
        ticked.set()

    meter.observe = observed  # type: ignore[method-assign]
    meter.start()
    now[0] += 0.51  # the clock it reads says this tick ran 0.5 s late
    await asyncio.wait_for(ticked.wait(), 10)
    meter.stop()
    assert meter.peak_ms == pytest.approx(500.0) and not meter.running


def test_budget_per_core_lag_limit_and_floor() -> None:
    meter = SetLag()
    cap = Capacity("calls", CapacityLimits(per_core=2.5, max_lag_ms=100, cores=2), meter, lag_floor=3)
    assert cap.limits.budget == 5 and cap.full(4) is None
    full = cap.refusal(5)
    assert full is not None and full.reason == "budget" and "5 calls live" in full.message
    meter.lag_ms = 150.0
    assert cap.full(2) is None  # under the floor the lag is not this process's doing
    full = cap.refusal(3)
    assert full is not None and full.reason == "lag" and full.retry_after_s > 0
    assert cap.refused == {"budget": 1, "lag": 1}
    status = cap.status(3)
    assert status["full"] and status["calls"] == 3 and status["lag_ms"] == 150.0
    assert Capacity("x", CapacityLimits(per_core=0, max_lag_ms=0), SetLag(1e6)).full(10_000) is None  # both off
    assert CapacityLimits(per_core=0.1, max_lag_ms=0, cores=1).budget == 1  # a budget is at least one


def test_emulator_capacity_settings_from_the_environment() -> None:
    # Embedded in the bridge's process, a call costs both ends there: half the sessions of an emulator alone.
    assert Limits.from_env({}).sessions_per_core == 2 * Limits.from_env({}, embedded=True).sessions_per_core
    env = {"VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE": "3", "VOICEBRIDGE_EMULATOR_MAX_LAG_MS": "0"}
    limits = Limits.from_env(env, embedded=True)
    assert (limits.sessions_per_core, limits.max_lag_ms) == (3.0, 0.0)
    assert Limits.from_env(env, sessions_per_core=5.0).sessions_per_core == 5.0  # a flag wins
    with pytest.raises(ValueError, match="VOICEBRIDGE_EMULATOR_MAX_LAG_MS must be a number >= 0, got '-1'"):
        Limits.from_env({"VOICEBRIDGE_EMULATOR_MAX_LAG_MS": "-1"})


def test_a_process_sharing_the_machine_counts_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from voicebridge.observability.capacity import CORES_ENV, usable_cores

    monkeypatch.delenv(CORES_ENV, raising=False)
    affinity = usable_cores()
    monkeypatch.setenv(CORES_ENV, "1")
    assert usable_cores() == 1 and CapacityLimits(per_core=25, max_lag_ms=0).budget == 25
    monkeypatch.setenv(CORES_ENV, "0")
    assert usable_cores() == 1  # at least one core
    monkeypatch.setenv(CORES_ENV, "two")
    with pytest.raises(ValueError, match="VOICEBRIDGE_CORES must be a whole number of cores, got 'two'"):
        usable_cores()
    monkeypatch.delenv(CORES_ENV)
    assert usable_cores() == affinity

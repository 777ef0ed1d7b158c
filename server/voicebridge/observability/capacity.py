"""How much new work a process can take, and why it takes no more: degrade, never collapse.

Past its capacity an asyncio process does not slow down gracefully: a starved loop misses ICE consent and DTLS
deadlines, so one call too many fails every call (50 calls at once on two cores all ended `leg_failed`). So the
emulator and the bridge each refuse new work beyond their capacity, with a clear error and a `Retry-After`,
instead of accepting it; what was accepted keeps running.

Two measures, each a setting (0 turns it off):
* a budget: sessions (the emulator) or calls (the bridge) per core, times the cores this process may run on
  (`os.sched_getaffinity`); a burst of offers arrives before any lag shows, so the budget is what bounds a burst;
* event-loop lag: `LagMeter` schedules a callback every TICK_S and measures how late it runs, smoothed over
  about SMOOTHING_S; above `max_lag_ms` the process is full, whatever its count (other work, a slower machine).

`Capacity.refusal(live)` says whether one more fits (None) or why not (`Full`); `Capacity.status(live)` is what
/readyz shows. The meter is injectable (anything with `lag_ms`), so tests set the lag instead of loading the
machine.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

TICK_S = 0.05  # the meter's period: cheap (20 callbacks a second) and finer than the 20 ms audio pacing matters
SMOOTHING_S = 2.0  # the lag's time constant: one slow callback does not fill a process, a busy second does
RETRY_AFTER_BUDGET_S = 5  # a session or call ends every few seconds at capacity: try again then
RETRY_AFTER_LAG_S = 2  # the lag falls within a couple of seconds of the load easing


CORES_ENV = "VOICEBRIDGE_CORES"  # the cores this process's budgets count: its share when it shares the machine


def usable_cores() -> int:
    """The cores this process's budgets count, at least 1: VOICEBRIDGE_CORES when set (`serve --workers N` gives
    each local worker its share, so N workers on one machine do not each count every core), else its CPU
    affinity."""
    share = os.environ.get(CORES_ENV, "").strip()
    if share:
        try:
            return max(1, int(share))
        except ValueError:
            raise ValueError(f"{CORES_ENV} must be a whole number of cores, got {share!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(text: str, *, minimum: int, auto: Callable[[], int]) -> int:
    """A `--workers` flag: a whole number >= `minimum`, or `auto` (`auto()`, e.g. one per core). ValueError names
    the flag and the bad value. One parser for `serve --workers` (0: the front door alone) and `emulator --workers`."""
    if text == "auto":
        return auto()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--workers must be a whole number >= {minimum} or `auto`, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"--workers must be >= {minimum}, got {value}")
    return value


class LagSource(Protocol):
    @property
    def lag_ms(self) -> float: ...


class LagMeter:
    """The event loop's lag: a callback every `tick_s` measures how late it ran; `lag_ms` is that lateness
    smoothed exponentially (time constant `smoothing_s`), `peak_ms` the worst single one since the last
    `take_peak()`. `observe(late_s, dt_s)` is the arithmetic, callable without a loop."""

    def __init__(
        self, tick_s: float = TICK_S, smoothing_s: float = SMOOTHING_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tick_s = tick_s
        self.smoothing_s = smoothing_s
        self.clock = clock
        self.lag_ms = 0.0
        self.peak_ms = 0.0
        self.ticks = 0
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def observe(self, late_s: float, dt_s: float) -> None:
        """One tick that ran `late_s` late, `dt_s` after the previous one."""
        late_ms = max(0.0, late_s) * 1000.0
        weight = 1.0 - math.exp(-max(dt_s, 0.0) / self.smoothing_s)
        self.lag_ms += (late_ms - self.lag_ms) * weight
        self.peak_ms = max(self.peak_ms, late_ms)
        self.ticks += 1

    def take_peak(self) -> float:
        peak, self.peak_ms = self.peak_ms, 0.0
        return peak

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is None:
            self._due = self.clock() + self.tick_s
            self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.clock()
        late = now - self._due
        self.observe(late, self.tick_s + max(late, 0.0))
        self._due = now + self.tick_s
        self._handle = asyncio.get_running_loop().call_later(self.tick_s, self._tick)


@dataclass(frozen=True)
class CapacityLimits:
    """`per_core`: sessions or calls per core (0: no budget); `max_lag_ms`: the smoothed loop lag beyond which
    the process is full (0: lag is not checked); `cores`: how many cores the budget counts (default: this
    process's CPU affinity); `retry_after_s`: the Retry-After of a refusal (0: RETRY_AFTER_BUDGET_S or
    RETRY_AFTER_LAG_S by reason)."""

    per_core: float
    max_lag_ms: float
    cores: int = 0
    retry_after_s: int = 0

    def __post_init__(self) -> None:
        if self.per_core < 0 or self.max_lag_ms < 0 or self.cores < 0 or self.retry_after_s < 0:
            raise ValueError(f"capacity settings must not be negative: {self}")
        if self.cores == 0:
            object.__setattr__(self, "cores", usable_cores())

    @property
    def budget(self) -> int | None:
        """How many at once (None: no budget); at least 1 when there is one."""
        if self.per_core <= 0:
            return None
        return max(1, math.floor(self.per_core * self.cores + 1e-9))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], per_core_var: str, lag_var: str, per_core: float, max_lag_ms: float
    ) -> CapacityLimits:
        """The defaults, overridden by the environment variables that are set (ValueError naming a bad one)."""
        return cls(per_core=env_number(env, per_core_var, per_core), max_lag_ms=env_number(env, lag_var, max_lag_ms))


def env_number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {text!r}")
    return value


@dataclass(frozen=True)
class Full:
    """Why a process takes no more now, and when to ask again."""

    reason: str  # "budget" or "lag"
    message: str
    retry_after_s: int


class Capacity:
    """One process's capacity for `what` ("sessions", "calls"): a budget and a lag limit (see the module)."""

    def __init__(
        self, what: str, limits: CapacityLimits, meter: LagSource | None = None, lag_floor: int = 0
    ) -> None:
        """`lag_floor`: the lag refuses only while at least this many are live. With fewer, the lag is not this
        process's doing (another process loading the machine, a slow start-up) and refusing would shed nothing:
        a test or a single call on a busy machine is never refused for it."""
        self.what = what
        self.limits = limits
        self.lag_floor = lag_floor
        self.meter: LagSource = meter if meter is not None else LagMeter()
        self.refused: dict[str, int] = {"budget": 0, "lag": 0}

    def start(self) -> None:
        """Start measuring the running loop's lag (a no-op for an injected meter)."""
        if isinstance(self.meter, LagMeter) and self.limits.max_lag_ms > 0:
            self.meter.start()

    def stop(self) -> None:
        if isinstance(self.meter, LagMeter):
            self.meter.stop()

    def full(self, live: int) -> Full | None:
        """Whether one more would exceed the capacity (not counted as a refusal: /readyz asks this)."""
        lim = self.limits
        budget = lim.budget
        if budget is not None and live >= budget:
            return Full(
                "budget",
                f"{live} {self.what} live, this process's capacity is {budget} "
                f"({lim.per_core:g} per core x {lim.cores} cores)",
                lim.retry_after_s or RETRY_AFTER_BUDGET_S,
            )
        lag = self.meter.lag_ms
        if lim.max_lag_ms > 0 and lag > lim.max_lag_ms and live >= self.lag_floor:
            return Full(
                "lag",
                f"its event loop is {lag:.0f} ms late on average (limit {lim.max_lag_ms:g} ms): "
                f"the {live} {self.what} it has use all it can give",
                lim.retry_after_s or RETRY_AFTER_LAG_S,
            )
        return None

    def refusal(self, live: int) -> Full | None:
        """As `full`, counting a refusal."""
        full = self.full(live)
        if full is not None:
            self.refused[full.reason] += 1
        return full

    def status(self, live: int) -> dict[str, Any]:
        """For /readyz: full or not and why, the count against the budget, the lag against its limit."""
        full = self.full(live)
        return {
            "full": full is not None,
            "why": None if full is None else full.message,
            self.what: live,
            "budget": self.limits.budget,
            "per_core": self.limits.per_core,
            "cores": self.limits.cores,
            "lag_ms": round(self.meter.lag_ms, 1),
            "max_lag_ms": self.limits.max_lag_ms,
            "lag_floor": self.lag_floor,
            "refused": dict(self.refused),
        }

"""Run many agent-to-agent calls of one scenario, C at a time, each to its end; one failure never stops the rest.

Each call gets its own folder (`<out>/calls/<call_id>/`, the usual artifacts) and its own `call_id` in the
logging context. Each call's result is a `BatchCall` (voicebridge/results.py): its summary and its set-up time.

Refused is not failed. A Realtime server at capacity refuses to create a session (429 rate limit, 503
overloaded, with `Retry-After`: emulator/limits.py); nothing was set up, so the call is tried again, afresh in
the same folder, after a back-off (`RetryPolicy`: at least the `Retry-After`, exponential and jittered, a
bounded number of attempts). A call that went live and then failed is never retried: it counts as failed.
Each `BatchCall` says how often it was refused and how long it waited. A refusal also holds back every other
call's next try until its `Retry-After` has passed, and at most SETUPS_PER_CORE calls per core set up at once
(offers, ICE, DTLS: the CPU-heavy part of a call), so a batch larger than the server's capacity neither bursts
past it nor hammers it with tries that each cost a set-up.

What a call could not say for itself (it crashed before it had a summary, or never ended) becomes a summary with
end_reason `error` and the reason in `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from voicebridge.config import Settings
from voicebridge.observability.capacity import usable_cores
from voicebridge.observability.logs import CALL_ID
from voicebridge.observability.metrics import Metrics, ObservedCall
from voicebridge.realtime.api import LegError
from voicebridge.results import BatchCall, CallSummary, EndReason, TurnLatencySummary
from voicebridge.scenarios.model import Scenario

log = logging.getLogger(__name__)

SETUPS_PER_CORE = 2  # calls setting up at once, per core (offers, ICE and DTLS: the CPU-heavy part of a call)
# Beyond the scenario's own max_duration_s (the call ends itself then): hang-up drain, artifacts, slack.
END_GRACE_S = 30.0

Progress = Callable[[int, int, CallSummary], None]  # (done, total, that call's summary)


class BatchedCall(ObservedCall, Protocol):
    """What the runner needs of a call (voicebridge.bridge.call.Call provides it)."""

    error: str | None

    @property
    def ended(self) -> bool: ...

    async def start(self) -> None: ...

    async def wait_ended(self, timeout_s: float | None = None) -> None: ...

    async def hangup(self, reason: EndReason = ..., by: str = ...) -> None: ...

    def summary(self) -> CallSummary: ...


# (scenario, settings, folder, call_id) -> a Call (or anything with its interface)
CallFactory = Callable[[Scenario, Settings, Path, str], BatchedCall]


@dataclass(frozen=True)
class RetryPolicy:
    """How a call whose creation was refused (429/503) is tried again: up to `attempts` tries in all; before try
    n+1, wait max(Retry-After, min(cap_s, base_s * 2**(n-1))) times a random factor in [1, 1 + jitter] (so the
    refused calls of a burst do not all come back at the same moment)."""

    attempts: int = 12
    base_s: float = 1.0
    cap_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s < 0 or self.cap_s < 0 or self.jitter < 0:
            raise ValueError(f"bad retry policy: {self}")

    def wait_s(self, refusals: int, retry_after_s: float | None, rng: random.Random) -> float:
        """The back-off after the `refusals`-th refusal of a call (1 for the first)."""
        backoff = min(self.cap_s, self.base_s * 2.0 ** max(0, refusals - 1))
        return max(retry_after_s or 0.0, backoff) * (1.0 + rng.uniform(0.0, self.jitter))


NO_RETRY = RetryPolicy(attempts=1)


def refusal(e: BaseException) -> LegError | None:
    """The server's "not now" to creating a session (a LegError with 429/503), else None."""
    return e if isinstance(e, LegError) and e.refused else None


def default_call_factory(scenario: Scenario, settings: Settings, folder: Path, call_id: str) -> BatchedCall:
    from voicebridge.bridge.call import Call

    return Call(scenario, settings, folder, call_id=call_id)


@dataclass
class BatchResult:
    batch_id: str
    scenario: Scenario
    settings: Settings
    out_dir: Path
    concurrency: int
    calls: list[BatchCall] = field(default_factory=list)
    started_at: float = 0.0
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def summaries(self) -> list[CallSummary]:
        return [c.summary for c in self.calls]

    @property
    def failed(self) -> list[CallSummary]:
        return [s for s in self.summaries if not s.succeeded]


def new_batch_id() -> str:
    return f"batch_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(2)}"


def call_id(batch_id: str, i: int) -> str:
    """The id of a batch's i-th call (from 0), whatever its scenario."""
    return f"{batch_id}_{i + 1:04d}"


class BatchRunner:
    """`await BatchRunner(...).run(n)`: n calls, `concurrency` at a time. `stop()` starts no new calls and hangs
    the live ones up (end_reason `shutdown`)."""

    def __init__(
        self,
        scenario: Scenario,
        settings: Settings,
        out_dir: Path,
        *,
        concurrency: int = 1,
        batch_id: str | None = None,
        metrics: Metrics | None = None,
        progress: Progress | None = None,
        call_factory: CallFactory = default_call_factory,
        keep: Callable[[BatchCall], bool] | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        max_setups: int | None = None,
    ) -> None:
        """`keep`: whether the result keeps a call (all of them when None; the soak keeps a line of its own
        instead, so that its memory measures the calls and not its notes about them). `retry`: how calls
        refused at creation are tried again (RetryPolicy(); NO_RETRY: never). `max_setups`: calls setting up at
        once (SETUPS_PER_CORE per core by default)."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.scenario = scenario
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.concurrency = concurrency
        self.batch_id = batch_id or new_batch_id()
        self.metrics = metrics
        self.progress = progress
        self.call_factory = call_factory
        self.keep = keep
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._setups = asyncio.Semaphore(max_setups or SETUPS_PER_CORE * usable_cores())
        self._hold_until = 0.0  # monotonic: no call tries before this (the last refusal's Retry-After)
        self._live: dict[str, BatchedCall] = {}
        self._stopping = False
        self._stopped = asyncio.Event()
        self._hangups: set[asyncio.Future[None]] = set()

    async def run(self, calls: int) -> BatchResult:
        if calls < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        return await self.run_each([self.scenario] * calls)

    def call_id(self, i: int) -> str:
        return call_id(self.batch_id, i)

    async def run_each(self, scenarios: Sequence[Scenario]) -> BatchResult:
        """One call of each scenario in the list, `concurrency` at a time (`voicebridge test`'s matrix: several
        scenarios and impairments, one runner); call i gets `call_id(i)`."""
        calls = len(scenarios)
        if calls < 1:
            raise ValueError("no calls to run")
        result = BatchResult(self.batch_id, self.scenario, self.settings, self.out_dir, self.concurrency)
        result.started_at = time.time()
        t0 = time.monotonic()
        slots = asyncio.Semaphore(self.concurrency)
        done = 0
        results: list[BatchCall | None] = [None] * calls

        async def one(i: int) -> None:
            nonlocal done
            async with slots:
                if self._stopping:
                    return
                outcome = await self._one_call(i, scenarios[i])
            done += 1
            if self.progress is not None:
                try:
                    self.progress(done, calls, outcome.summary)
                except Exception:
                    log.exception("batch progress callback failed")
            if self.keep is None or self.keep(outcome):
                results[i] = outcome

        await asyncio.gather(*(one(i) for i in range(calls)))
        result.calls = [c for c in results if c is not None]
        result.interrupted = self._stopping
        result.wall_s = round(time.monotonic() - t0, 3)
        return result

    async def run_call(self, i: int) -> BatchCall:
        """Call number i (from 0) of the batch alone: a bridge worker runs the batch's calls one job at a time
        (cluster/job_loop.py), each with the id, folder and outcome it would have had in `run`."""
        return await self._one_call(i)

    @contextlib.asynccontextmanager
    async def _setting_up(self) -> AsyncIterator[None]:
        """A call's turn to set up: after any hold a refusal put on every call, one of `max_setups` at once."""
        while True:
            while (wait := self._hold_until - time.monotonic()) > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), wait)
            await self._setups.acquire()
            if self._hold_until <= time.monotonic() or self._stopping:
                break
            self._setups.release()  # refused meanwhile: wait for the hold again
        try:
            yield
        finally:
            self._setups.release()

    def _hold(self, refused: LegError) -> None:
        """Nobody tries before the refusal's Retry-After (or the policy's first back-off) has passed, jittered."""
        wait = refused.retry_after_s if refused.retry_after_s is not None else self.retry.base_s
        until = time.monotonic() + wait * (1.0 + self._rng.uniform(0.0, self.retry.jitter))
        self._hold_until = max(self._hold_until, until)

    def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        for call in list(self._live.values()):
            task = asyncio.ensure_future(call.hangup("shutdown", "operator"))
            self._hangups.add(task)
            task.add_done_callback(self._hangups.discard)

    async def _one_call(self, i: int, scenario: Scenario | None = None) -> BatchCall:
        """The call (of the batch's scenario, unless given another), tried again (afresh, in the same folder)
        while its creation is refused."""
        scenario = scenario or self.scenario
        call_id = self.call_id(i)
        folder = self.out_dir / "calls" / call_id
        CALL_ID.set(call_id)  # this task's context (and the call's tasks): its log lines carry the id
        refusals, waited, gave_up = 0, 0.0, False
        while True:
            outcome, refused = await self._attempt(call_id, folder, scenario)
            if refused is None or self._stopping:
                break
            refusals += 1
            if refusals >= self.retry.attempts:
                log.warning("call %s: refused %d times, giving up: %s", call_id, refusals, refused)
                summary = outcome.summary.model_copy(
                    update={"error": f"refused {refusals} times (the last: {refused})"}
                )
                outcome, gave_up = outcome.model_copy(update={"summary": summary}), True
                break
            wait = self.retry.wait_s(refusals, refused.retry_after_s, self._rng)
            log.info("call %s: refused (%s); trying again in %.1f s", call_id, refused, wait)
            with contextlib.suppress(TimeoutError):  # stop() ends the wait at once
                await asyncio.wait_for(self._stopped.wait(), wait)
            waited += wait
            if self._stopping:
                break
            await asyncio.to_thread(shutil.rmtree, folder, True)  # the refused try's artifacts: nothing happened
        return outcome.model_copy(update={"refusals": refusals, "retry_wait_s": round(waited, 3), "gave_up": gave_up})

    async def _attempt(
        self, call_id: str, folder: Path, scenario: Scenario
    ) -> tuple[BatchCall, LegError | None]:
        """One try of the call; with the refusal when its creation was refused (it never went live)."""
        refused: LegError | None = None
        started_at, t0 = time.time(), time.monotonic()
        live_at: list[float] = []
        call: BatchedCall | None = None
        try:
            async with self._setting_up():
                started_at, t0 = time.time(), time.monotonic()
                call = self.call_factory(scenario, self.settings, folder, call_id)

                def on_state(state: str) -> None:
                    if state == "live" and not live_at:
                        live_at.append(time.monotonic() - t0)

                call.on("state", on_state)
                if self.metrics is not None:
                    self.metrics.observe(call)
                self._live[call_id] = call
                if self._stopping:  # stopped while it waited its turn: it ends before it begins
                    task = asyncio.ensure_future(call.hangup("shutdown", "operator"))
                    self._hangups.add(task)
                    task.add_done_callback(self._hangups.discard)
                try:
                    await call.start()
                except Exception as e:
                    # The Call has ended itself with `error` (its summary says why); anything else is logged.
                    refused = refusal(e) if not live_at else None
                    if refused is None:
                        log.info("call %s did not start: %s", call_id, e)
                    else:
                        self._hold(refused)
            limit = scenario.max_duration_s + self.settings.hangup_drain_timeout_s + END_GRACE_S
            try:
                await call.wait_ended(limit)
            except TimeoutError:
                log.error("call %s did not end within %.0f s; hanging it up", call_id, limit)
                call.error = f"did not end within {limit:.0f} s"
                await asyncio.wait_for(call.hangup("shutdown", "batch"), END_GRACE_S)
            summary = call.summary()
        except Exception as e:  # one broken call is a row in the report, never the end of the batch
            log.exception("call %s failed", call_id)
            summary = CallSummary(
                call_id=call_id, scenario=scenario.name, title=scenario.title, state="ended",
                end_reason="error", ended_by="batch", error=f"{type(e).__name__}: {e}", started_at=started_at,
                duration_s=round(time.monotonic() - t0, 3), turns=[], heard={}, tool_calls=[], legs=[], relay=None,
                turn_latency=_NO_TURNS, artifacts={}, events=0, out_dir=str(folder),
            )
            if call is not None and not call.ended:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(call.hangup("error", "batch"), END_GRACE_S)
        finally:
            self._live.pop(call_id, None)
        return BatchCall(summary=summary, setup_s=round(live_at[0], 4) if live_at else None), refused


_NO_TURNS = TurnLatencySummary(turns=[], count=0, total_ms=None, bridge_ms=None, relay_ms=None)

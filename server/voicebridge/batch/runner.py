"""Run many agent-to-agent calls of one scenario, C at a time, each to its end; one failure never stops the rest.

Each call gets its own folder (`<out>/calls/<call_id>/`, the usual artifacts) and its own `call_id` in the
logging context. What a call could not say for itself (it crashed before it had a summary, or never ended)
becomes a summary with end_reason `error` and the reason in `error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicebridge.config import Settings
from voicebridge.observability.logs import CALL_ID
from voicebridge.observability.metrics import Metrics
from voicebridge.scenarios.model import Scenario

log = logging.getLogger(__name__)

SUCCESS_REASONS = ("caller_hangup", "operator_hangup")
# Beyond the scenario's own max_duration_s (the call ends itself then): hang-up drain, artifacts, slack.
END_GRACE_S = 30.0

Progress = Callable[[int, int, dict[str, Any]], None]  # (done, total, that call's summary)
# (scenario, settings, folder, call_id) -> a Call (or anything with its interface)
CallFactory = Callable[[Scenario, Settings, Path, str], Any]


def default_call_factory(scenario: Scenario, settings: Settings, folder: Path, call_id: str) -> Any:
    from voicebridge.bridge.call import Call

    return Call(scenario, settings, folder, call_id=call_id)


@dataclass
class BatchResult:
    batch_id: str
    scenario: Scenario
    settings: Settings
    out_dir: Path
    concurrency: int
    summaries: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0
    wall_s: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [s for s in self.summaries if not succeeded(s)]


def succeeded(summary: dict[str, Any]) -> bool:
    return summary.get("end_reason") in SUCCESS_REASONS


def new_batch_id() -> str:
    return f"batch_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(2)}"


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
    ) -> None:
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
        self._live: dict[str, Any] = {}
        self._stopping = False
        self._hangups: set[asyncio.Future[None]] = set()

    async def run(self, calls: int) -> BatchResult:
        if calls < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        result = BatchResult(self.batch_id, self.scenario, self.settings, self.out_dir, self.concurrency)
        result.started_at = time.time()
        t0 = time.monotonic()
        slots = asyncio.Semaphore(self.concurrency)
        done = 0
        summaries: list[dict[str, Any] | None] = [None] * calls

        async def one(i: int) -> None:
            nonlocal done
            async with slots:
                if self._stopping:
                    return
                summary = await self._one_call(i)
            summaries[i] = summary
            done += 1
            if self.progress is not None:
                try:
                    self.progress(done, calls, summary)
                except Exception:
                    log.exception("batch progress callback failed")

        await asyncio.gather(*(one(i) for i in range(calls)))
        result.summaries = [s for s in summaries if s is not None]
        result.interrupted = self._stopping
        result.wall_s = round(time.monotonic() - t0, 3)
        return result

    def stop(self) -> None:
        self._stopping = True
        for call in list(self._live.values()):
            task = asyncio.ensure_future(call.hangup("shutdown", "operator"))
            self._hangups.add(task)
            task.add_done_callback(self._hangups.discard)

    async def _one_call(self, i: int) -> dict[str, Any]:
        call_id = f"{self.batch_id}_{i + 1:04d}"
        folder = self.out_dir / "calls" / call_id
        CALL_ID.set(call_id)  # this task's context (and the call's tasks): its log lines carry the id
        t0 = time.monotonic()
        live_at: list[float] = []
        call: Any = None
        try:
            call = self.call_factory(self.scenario, self.settings, folder, call_id)

            def on_state(state: str) -> None:
                if state == "live" and not live_at:
                    live_at.append(time.monotonic() - t0)

            call.on("state", on_state)
            if self.metrics is not None:
                self.metrics.observe(call)
            self._live[call_id] = call
            try:
                await call.start()
            except Exception as e:
                # The Call has ended itself with `error` (its summary says why); anything else is logged.
                log.info("call %s did not start: %s", call_id, e)
            limit = self.scenario.max_duration_s + self.settings.hangup_drain_timeout_s + END_GRACE_S
            try:
                await call.wait_ended(limit)
            except TimeoutError:
                log.error("call %s did not end within %.0f s; hanging it up", call_id, limit)
                call.error = f"did not end within {limit:.0f} s"
                await asyncio.wait_for(call.hangup("shutdown", "batch"), END_GRACE_S)
            summary: dict[str, Any] = call.summary()
        except Exception as e:  # one broken call is a row in the report, never the end of the batch
            log.exception("call %s failed", call_id)
            summary = {
                "call_id": call_id,
                "scenario": self.scenario.name,
                "end_reason": "error",
                "ended_by": "batch",
                "error": f"{type(e).__name__}: {e}",
                "duration_s": round(time.monotonic() - t0, 3),
                "turns": [],
                "tool_calls": [],
                "out_dir": str(folder),
            }
            if call is not None and not call.ended:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(call.hangup("error", "batch"), END_GRACE_S)
        finally:
            self._live.pop(call_id, None)
        summary["setup_s"] = round(live_at[0], 4) if live_at else None
        return summary

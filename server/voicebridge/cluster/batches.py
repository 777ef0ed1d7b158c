"""`voicebridge batch --redis URL`: a batch whose calls run on the cluster's workers, not in this process.

The batch puts its calls on the jobs stream (cluster/jobs.py), `concurrency` at a time: a new job goes on each time
a result comes back, so at most that many of its calls are queued or running across all workers, and Ctrl-C leaves
little behind. It reads its results stream until every call has one, and meanwhile reports (as `worker_lost`) the
jobs lost twice that no worker is left to report. The result is the same BatchResult a local batch produces, each
call with the worker that ran it, so the report (report.json / report.html) is built the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from voicebridge.batch.runner import BatchResult, Progress
from voicebridge.config import Settings
from voicebridge.results import BatchCall
from voicebridge.scenarios.model import BUILTIN_DIR, Scenario, ScenarioError

from .jobs import Job, JobQueue

if TYPE_CHECKING:
    import redis.asyncio as aioredis  # the `cluster` extra, imported on use: a base install imports this module

log = logging.getLogger(__name__)

RETRY_S = 1.0  # between attempts to reach Redis again
QUIET_WARNING_S = 60.0  # no result for this long: say that workers may be missing (once)


class ClusterUnavailable(RuntimeError):
    """Redis cannot be reached or refuses us: the batch cannot run (the message says why)."""


def scenario_job(scenario: Scenario, batch_id: str, index: int) -> Job:
    """A built-in scenario travels by name; any other as its file's text (a worker on another machine has no
    copy of it)."""
    path = scenario.path
    if path is None or path.resolve().parent == BUILTIN_DIR.resolve():
        return Job(batch_id=batch_id, index=index, scenario=scenario.name)
    return Job(batch_id=batch_id, index=index, scenario=scenario.name, scenario_toml=path.read_text("utf-8"))


def lab_job(run: Scenario, test_id: str, index: int, repeat: int) -> Job:
    """A `voicebridge test` matrix cell as a job: the scenario (by name or its file's text) with the impairment and
    seed it runs under here, and its repeat. Checked before it is queued, as the worker will read it (the JSON
    round trip, the scenario loaded back, impairment applied, criteria checked): ScenarioError names what is
    wrong, before any call is placed."""
    from pydantic import ValidationError

    from voicebridge.lab.criteria import check_scenario

    from .job_loop import job_scenario

    base = scenario_job(run, test_id, index)
    try:
        job = Job.model_validate_json(
            base.model_copy(update={"impair": run.impair, "impair_seed": run.impair_seed, "repeat": repeat})
            .model_dump_json()
        )
    except ValidationError as e:
        raise ScenarioError(f"{run.name}: cannot be sent to workers: {e}") from None
    check_scenario(job_scenario(job))
    return job


def where(url: str) -> str:
    """The Redis URL without its password (for messages and the report)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.scheme}://{parts.hostname or '?'}:{port}{parts.path}"


async def connect(url: str) -> aioredis.Redis:
    import redis.asyncio as aioredis  # the `cluster` extra, imported on use: a base install imports this module
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    if not url:
        raise ClusterUnavailable("no Redis URL: give --redis redis://[:PASSWORD@]HOST:PORT/DB")
    try:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5.0)
    except ValueError as e:
        raise ClusterUnavailable(f"the Redis URL is not valid ({e}): give redis://[:PASSWORD@]HOST:PORT/DB") from None
    try:
        await client.ping()
    except AuthenticationError as e:
        await client.aclose()
        raise ClusterUnavailable(f"Redis at {where(url)} refused our credentials ({e})") from None
    except ResponseError as e:
        await client.aclose()
        raise ClusterUnavailable(f"Redis at {where(url)} needs a password in the URL ({e})") from None
    except (RedisError, OSError) as e:
        await client.aclose()
        raise ClusterUnavailable(f"Redis at {where(url)} is unavailable ({e})") from None
    return client


class ClusterBatch:
    """`await ClusterBatch(...).run(n)`; `stop()` (Ctrl-C) queues no more calls and takes the queued ones back."""

    def __init__(
        self,
        queue: JobQueue,
        scenario: Scenario,
        settings: Settings,
        out_dir: Path,
        *,
        concurrency: int,
        batch_id: str,
        progress: Progress | None = None,
        make_job: Callable[[int], Job] | None = None,
    ) -> None:
        """`make_job(i)`: call i's job (`voicebridge test`: its matrix cell); by default `scenario`'s."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.queue = queue
        self.scenario = scenario
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.concurrency = concurrency
        self.batch_id = batch_id
        self.progress = progress
        self.make_job = make_job or (lambda i: scenario_job(scenario, batch_id, i))
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, calls: int) -> BatchResult:
        if calls < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        result = BatchResult(self.batch_id, self.scenario, self.settings, self.out_dir, self.concurrency)
        result.started_at = time.time()
        t0 = time.monotonic()
        await self.queue.ensure_group()
        index_of: dict[str, int] = {}
        got: dict[str, BatchCall] = {}
        next_index = 0

        async def submit() -> None:
            nonlocal next_index
            job = self.make_job(next_index)
            index_of[job.call_id] = next_index
            await self.queue.submit(job)
            next_index += 1  # only once it is queued: a failed submit is tried again

        from redis.exceptions import RedisError  # the cluster extra, as everywhere in cluster/

        after = "0"
        last_news = time.monotonic()
        warned = False
        redis_problem: str | None = None
        while len(got) < calls and not self._stopping.is_set():
            try:
                # Keep `concurrency` calls queued or running: one new job for each result.
                while next_index < min(calls, len(got) + self.concurrency) and not self._stopping.is_set():
                    await submit()
                results = await self.queue.read_results(self.batch_id, after, block_s=1.0)
                # A job lost twice, with no worker left to notice: reported here (it ends the wait for it).
                await self.queue.reclaim(f"batch:{self.batch_id}", run=False)
            except (RedisError, OSError) as e:
                if redis_problem is None:
                    log.warning("batch %s: Redis unavailable (%s); waiting for it (Ctrl-C stops)", self.batch_id, e)
                redis_problem = str(e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RETRY_S)
                continue
            if redis_problem is not None:
                log.info("batch %s: Redis answers again", self.batch_id)
                redis_problem = None
            for entry_id, r in results:
                after = entry_id
                last_news = time.monotonic()
                if r.call_id in got or r.call_id not in index_of:
                    log.info(
                        "batch %s: result for %s again (from %s): the first one stands",
                        self.batch_id,
                        r.call_id,
                        r.worker,
                    )
                    continue
                got[r.call_id] = r.call.model_copy(update={"worker": r.worker, "attempt": r.attempt})
                if self.progress is not None:
                    try:
                        self.progress(len(got), calls, r.call.summary)
                    except Exception:
                        log.exception("batch progress callback failed")
            if not warned and time.monotonic() - last_news > QUIET_WARNING_S:
                warned = True
                log.warning(
                    "batch %s: no result for %.0f s; is any worker running (`voicebridge worker --redis ...` or "
                    "`voicebridge serve --workers N --redis ...`)?",
                    self.batch_id,
                    QUIET_WARNING_S,
                )
        try:
            if self._stopping.is_set():
                await self.queue.cancel(self.batch_id)  # queued jobs are taken off unrun; running ones finish
            else:
                await self.queue.forget_batch(self.batch_id)
        except (RedisError, OSError) as e:  # the report is written anyway; the keys expire on their own
            log.warning("batch %s: could not tidy up in Redis: %s", self.batch_id, e)
        result.calls = sorted(got.values(), key=lambda c: index_of[c.summary.call_id])
        result.interrupted = self._stopping.is_set()
        result.wall_s = round(time.monotonic() - t0, 3)
        return result


def cluster_settings(redis_url: str) -> Settings:
    """The batch's settings for its report: the calls' backend is the workers', so the report names the cluster."""
    return dataclasses.replace(
        Settings.from_env(), base_url=f"workers via {where(redis_url)}", base_url_source="--redis"
    )

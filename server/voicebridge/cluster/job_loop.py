"""A worker's batch jobs: take call jobs off the Redis stream (cluster/jobs.py), run each as a batch call (a
`voicebridge test` cell under its impairment and seed), send its result back. The calls it runs count in the
worker's load (registry `worker:{id}:batch`), as the calls the front door places do.

A worker runs up to `slots` batch calls at once, beside the calls the front door places on it. It takes a job only
when a slot is free, so a busy worker leaves jobs to the others. While a call runs, its lease is renewed every
third of the lease; if this process dies, the lease runs out and another worker runs the call again (once).
Redis going away pauses taking jobs (logged once); running calls go on, and their results are sent when Redis
answers again (or, if it never does before their lease ends, the job is run again elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

from voicebridge.batch.runner import BatchRunner
from voicebridge.config import Settings
from voicebridge.results import BatchCall
from voicebridge.scenarios.model import Scenario, ScenarioError, load_scenario, parse_scenario

from .jobs import Delivery, Job, JobQueue, JobResult, failed_call, lease_from_env
from .registry import batch_calls_key


def _transient() -> tuple[type[Exception], ...]:
    """Redis failing or unreachable. The redis client is the `cluster` extra: imported when an error is matched, so a
    base install still imports this module."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)

log = logging.getLogger(__name__)

RunJob = Callable[[Job, int], Awaitable[BatchCall]]  # (job, attempt) -> the call as the batch runner saw it
DEFAULT_SLOTS = 2
RETRY_S = 1.0  # between attempts to reach Redis again
DRAIN_S = 60.0  # hung-up calls end in seconds; this bound only catches a hang


class JobLoop:
    """`await JobLoop(queue, worker_id, run_job).run()` until `stop()`; then it waits for the calls it runs."""

    def __init__(
        self, queue: JobQueue, worker: str, run_job: RunJob, *, slots: int = DEFAULT_SLOTS, block_s: float = 1.0
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.queue = queue
        self.worker = worker
        self.run_job = run_job
        self.slots = slots
        self.block_s = block_s
        self.running: dict[str, asyncio.Task[None]] = {}
        self.done = 0
        self._stop = asyncio.Event()
        self._redis_problem: str | None = None
        # The batch calls this worker runs count in its load (registry `worker:{id}:batch`): placement and
        # GET /api/workers see them beside the calls the front door placed here.
        self._load_key = batch_calls_key(worker)
        self.calls: set[str] = set()
        """The batch calls in progress (their results not yet sent)."""
        self._load_lock = asyncio.Lock()

    def stop(self) -> None:
        """Take no more jobs (the calls running go on; `run` returns once they have sent their results)."""
        self._stop.set()

    async def run(self) -> None:
        free = asyncio.Semaphore(self.slots)
        while not self._stop.is_set():
            await free.acquire()
            if self._stop.is_set():
                free.release()
                break
            try:
                await self.queue.ensure_group()
                delivery = await self.queue.take(self.worker, self.block_s)
            except _transient() as e:
                free.release()
                self._redis_down(e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RETRY_S)
                continue
            self._redis_up()
            if delivery is None:
                free.release()
                continue
            task = asyncio.ensure_future(self._run(delivery))
            self.running[delivery.job.call_id] = task
            task.add_done_callback(functools.partial(self._ended, delivery.job.call_id, free))
        if self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)
        await self._write_load()

    async def _write_load(self) -> None:
        """The set of running batch calls in Redis, rewritten whole: one that failed to go out (Redis away)
        is put right by the next, so a call never loads a worker after it ended."""
        async with self._load_lock:  # one write at a time, each of the set as it is then: the last one stands
            try:
                async with self.queue.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self._load_key)
                    if self.calls:
                        pipe.sadd(self._load_key, *self.calls)
                    await pipe.execute()
            except _transient() as e:
                self._redis_down(e)

    def _ended(self, call_id: str, free: asyncio.Semaphore, _task: asyncio.Task[None]) -> None:
        self.running.pop(call_id, None)
        self.done += 1
        free.release()

    async def _run(self, delivery: Delivery) -> None:
        job = delivery.job
        renewing = asyncio.ensure_future(self._renew(delivery))
        self.calls.add(job.call_id)
        try:
            await self._write_load()
            call = await self.run_job(job, delivery.attempt)
        except Exception as e:  # a broken job is a failed call in the report, never the end of the worker
            log.exception("job %s failed", job.call_id)
            call = failed_call(job, f"{type(e).__name__}: {e}", "error")
        finally:
            renewing.cancel()
            self.calls.discard(job.call_id)
        await self._write_load()  # the call has ended: no longer a load on this worker
        result = JobResult(
            batch_id=job.batch_id,
            call_id=job.call_id,
            index=job.index,
            worker=self.worker,
            attempt=delivery.attempt,
            call=call.model_copy(
                update={"worker": self.worker, "attempt": delivery.attempt, "lost_worker": delivery.lost_worker or None}
            ),
        )
        deadline = time.monotonic() + self.queue.lease_s
        while True:
            try:
                await self.queue.finish(delivery, result)
                return
            except _transient() as e:
                self._redis_down(e)
                if time.monotonic() > deadline:
                    # The lease has run out: another worker runs it again, and that result is the one reported.
                    log.error("job %s: its result could not be sent (%s); dropped", job.call_id, e)
                    return
                await asyncio.sleep(RETRY_S)  # waiting for Redis to come back; bounded by the lease

    async def _renew(self, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(self.queue.lease_s / 3)
            try:
                if not await self.queue.renew(self.worker, delivery):
                    log.warning("job %s was taken over by another worker; finishing it anyway", delivery.job.call_id)
                    return
            except _transient() as e:
                self._redis_down(e)

    def _redis_down(self, e: BaseException) -> None:
        if self._redis_problem is None:
            log.warning("worker %s: Redis unavailable for batch jobs (%s); retrying", self.worker, e)
        self._redis_problem = str(e)

    def _redis_up(self) -> None:
        if self._redis_problem is not None:
            log.info("worker %s: Redis answers again; taking batch jobs", self.worker)
            self._redis_problem = None


class CallJobs:
    """Runs a job as one call of its batch, with this worker's Realtime backend, into
    `<artifacts>/batches/<batch_id>/calls/<call_id>/` (the folder layout of `voicebridge batch`)."""

    def __init__(self, settings: Settings, artifacts_dir: Path) -> None:
        self.settings = settings
        self.artifacts_dir = Path(artifacts_dir)
        self._runners: set[BatchRunner] = set()

    async def __call__(self, job: Job, attempt: int) -> BatchCall:
        out_dir = self.artifacts_dir / "batches" / job.batch_id
        try:
            scenario = job_scenario(job)
        except ScenarioError as e:
            return failed_call(job, f"bad scenario: {e}", "error")
        runner = BatchRunner(scenario, self.settings, out_dir, batch_id=job.batch_id)
        self._runners.add(runner)
        try:
            return await runner.run_call(job.index)
        finally:
            self._runners.discard(runner)

    def stop(self) -> None:
        """Hang the running calls up (end_reason `shutdown`): the worker is shutting down."""
        for runner in list(self._runners):
            runner.stop()


def job_scenario(job: Job) -> Scenario:
    """The scenario a job runs, as its batch meant it: by name or from the file text it carries, under the
    impairment and seed it carries (`voicebridge test`'s cell); ScenarioError names what is wrong."""
    if job.scenario_toml is None:
        scenario = load_scenario(job.scenario)
    else:
        try:
            data = tomllib.loads(job.scenario_toml)
        except tomllib.TOMLDecodeError as e:
            raise ScenarioError(f"{job.scenario}: not valid TOML: {e}") from e
        scenario = parse_scenario(data, where=f"{job.scenario} (sent with batch {job.batch_id})")
    update: dict[str, object] = {}
    if job.impair is not None:
        update["impair"] = job.impair  # checked when the Job was made (Job._impair_spec)
    if job.impair_seed is not None:
        update["impair_seed"] = job.impair_seed
    return scenario.model_copy(update=update) if update else scenario


class BatchJobs:
    """A bridge worker's batch jobs (cluster/worker.py): `run(worker_id, settings)` as a task beside the worker's
    server, until `drain(task)` at shutdown."""

    def __init__(self, redis_url: str, artifacts_dir: Path, slots: int = DEFAULT_SLOTS) -> None:
        self.redis_url = redis_url
        self.artifacts_dir = Path(artifacts_dir)
        self.slots = slots
        self.lease_s = lease_from_env()  # a bad value is an error at start-up, not at the first job
        self._loop: JobLoop | None = None
        self._calls: CallJobs | None = None

    @property
    def running(self) -> int:
        """Batch calls in progress on this worker (its heartbeat counts them among its calls)."""
        return len(self._loop.calls) if self._loop is not None else 0

    async def run(self, worker: str, settings: Settings) -> None:
        import redis.asyncio as aioredis  # the cluster extra, as everywhere in cluster/

        # Its own connection: blocking stream reads must not wait behind (or time out like) the registry's commands.
        client = aioredis.Redis.from_url(self.redis_url, decode_responses=True, socket_connect_timeout=2.0)
        self._calls = CallJobs(settings, self.artifacts_dir)
        self._loop = JobLoop(JobQueue(client, lease_s=self.lease_s), worker, self._calls, slots=self.slots)
        try:
            await self._loop.run()
        finally:
            await client.aclose()

    async def drain(self, task: asyncio.Future[None]) -> None:
        """Take no more jobs; hang the running batch calls up (`shutdown`) and wait for their results to be sent."""
        if self._loop is not None:
            self._loop.stop()
        if self._calls is not None:
            self._calls.stop()
        try:
            await asyncio.wait_for(task, DRAIN_S)
        except TimeoutError:
            log.error("batch jobs did not drain within %.0f s", DRAIN_S)
        except Exception:
            log.exception("batch jobs failed")

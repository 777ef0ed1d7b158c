"""A batch's calls as jobs on a Redis stream, taken by workers on any machine; their results come back through Redis.

The protocol (every key under `voicebridge:`):
- `voicebridge:jobs` is one stream of call jobs (a `Job` as JSON in the field `job`) for every batch, read by the
  consumer group `workers`; each worker reads as its own consumer (its worker id), one job per free slot. Redis
  gives each entry to one consumer and keeps it in that consumer's pending list until it is acknowledged.
- A worker running a job renews its lease every `lease_s / 3` (XCLAIM of its own entry, which resets the entry's
  idle time without counting a delivery). An entry idle for longer than `lease_s` belongs to a dead worker (killed,
  or cut off from Redis): any worker claims it (XPENDING, then XCLAIM, which is atomic, so only one wins) and runs
  it again. Redis counts the deliveries: the first run and one retry (`MAX_DELIVERIES`); an entry that would be
  delivered a third time is not run again, its call is reported ended with `worker_lost` instead. The batch itself
  does that check too, so a job lost with no worker left to claim it still gets its result.
- A finished job's result (`JobResult`: the typed BatchCall with the worker that ran it and the attempt) goes to the
  batch's own stream `voicebridge:batch:<batch_id>:results`; then the job is acknowledged and deleted. The batch
  reads its results stream; a result may come twice (a worker presumed dead that was only slow), the first wins.
- `voicebridge:batch:<batch_id>:cancelled` set: workers take that batch's jobs off the stream without running them
  (Ctrl-C on `voicebridge batch`).

Results cross the process boundary as pydantic JSON (results.py models), so a worker and the batch agree on the
shape by construction. Nothing here runs a call: the worker's job loop (cluster/job_loop.py) does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # the redis client is the `cluster` extra: a base install still imports this module
    import redis.asyncio as aioredis

from voicebridge.results import BatchCall, CallSummary, EndReason, TurnLatencySummary

log = logging.getLogger(__name__)

PREFIX = "voicebridge:"
JOBS_STREAM = PREFIX + "jobs"
GROUP = "workers"
# The first run and one retry: a job whose worker died twice is reported, not run a third time.
MAX_DELIVERIES = 2
# A job nobody renewed for this long belongs to a dead worker (renewals come every lease_s / 3). Every worker and
# batch of a cluster must use the same: VOICEBRIDGE_JOB_LEASE_S sets it (the tests shorten it).
DEFAULT_LEASE_S = 15.0
LEASE_ENV = "VOICEBRIDGE_JOB_LEASE_S"
# A batch's results stream outlives the batch by this much at most (a batch killed before it could clean up).
RESULTS_TTL_S = 7 * 24 * 3600


class Job(BaseModel):
    """One call of a batch, as it travels on the jobs stream."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    index: int
    """The call's place in its batch, from 0; its call id is `<batch_id>_<index + 1, 4 digits>`."""
    scenario: str
    """The scenario's name: a built-in one when `scenario_toml` is None."""
    scenario_toml: str | None = None
    """The scenario file's text, for a scenario that is not built in (a worker on another machine has no copy)."""
    submitted_at: float = 0.0
    # `voicebridge test`'s matrix cell: the call runs under this impairment and seed (over the scenario's own
    # `impair` / `impair_seed`), so that a worker applies exactly what the same command would locally.
    impair: str | None = None
    """An impairment profile or spec (`3g`, `loss=5%,delay=80ms`, per direction); None: the scenario's own."""
    impair_seed: int | None = None
    """The impairment's seed; None: the scenario's own."""
    repeat: int | None = Field(default=None, ge=1)
    """The lab's repeat index (1 to --repeat); None for a plain batch call."""

    @field_validator("impair")
    @classmethod
    def _impair_spec(cls, impair: str | None) -> str | None:
        from voicebridge.scenarios.impairment import parse_directions

        if impair is not None and impair.strip():
            parse_directions(impair)  # ImpairSpecError (a ValueError) names the bad field
        return impair.strip() if impair is not None else None

    @property
    def call_id(self) -> str:
        return f"{self.batch_id}_{self.index + 1:04d}"


class JobResult(BaseModel):
    """What a worker sends back for a job: the call as the batch runner saw it, and who ran it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    call_id: str
    index: int
    worker: str
    """The worker that ran the call (its worker id); for a call given up on, the one that gave up."""
    attempt: int
    """1 for the first run, 2 for the retry after a worker was lost."""
    call: BatchCall


@dataclass(frozen=True)
class Delivery:
    """A job as one consumer got it: the stream entry (to renew and acknowledge) and how often Redis delivered it."""

    entry_id: str
    job: Job
    attempt: int
    lost_worker: str = ""
    """For a retry: the consumer (worker id) the job was lost on."""


def lease_from_env(env: Mapping[str, str] | None = None) -> float:
    """The job lease in seconds: VOICEBRIDGE_JOB_LEASE_S (from 1 to 3600), else DEFAULT_LEASE_S."""
    text = (os.environ if env is None else env).get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{LEASE_ENV} must be a number of seconds, got {text!r}") from None
    if not 1.0 <= value <= 3600.0:
        raise ValueError(f"{LEASE_ENV} must be from 1 to 3600 seconds, got {value:g}")
    return value


def results_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:results"


def cancelled_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:cancelled"


def failed_call(job: Job, reason: str, end_reason: EndReason = "worker_lost") -> BatchCall:
    """The result of a job whose call could not run: it ran out of attempts (`worker_lost`), or could not even
    start on its worker (`error`: a scenario the worker cannot load, a crash); `reason` says why."""
    summary = CallSummary(
        call_id=job.call_id,
        scenario=job.scenario,
        title=job.scenario,
        state="ended",
        end_reason=end_reason,
        ended_by="batch",
        error=reason,
        started_at=time.time(),
        duration_s=0.0,
        turns=[],
        heard={},
        tool_calls=[],
        legs=[],
        relay=None,
        turn_latency=TurnLatencySummary(turns=[], count=0, total_ms=None, bridge_ms=None, relay_ms=None),
        artifacts={},
        events=0,
        out_dir="",
    )
    return BatchCall(summary=summary, setup_s=None)


class JobQueue:
    """The jobs stream and the results streams, on one Redis connection pool (decode_responses=True)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str = JOBS_STREAM,
        group: str = GROUP,
        lease_s: float | None = None,
    ) -> None:
        """`lease_s`: VOICEBRIDGE_JOB_LEASE_S or DEFAULT_LEASE_S when None."""
        lease_s = lease_from_env() if lease_s is None else lease_s
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.redis = client
        self.stream = stream
        self.group = group
        self.lease_s = lease_s

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group if they do not exist yet (every party may call it)."""
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # -- the batch's side ----------------------------------------------------------------------------------------

    async def submit(self, job: Job) -> str:
        return str(await self.redis.xadd(self.stream, {"job": job.model_dump_json()}))

    async def read_results(self, batch_id: str, after: str, block_s: float) -> list[tuple[str, JobResult]]:
        """The batch's results after entry `after` ("0" for all), waiting up to block_s for the first one."""
        reply = await self.redis.xread({results_key(batch_id): after}, block=max(1, int(block_s * 1000)))
        out: list[tuple[str, JobResult]] = []
        for _key, entries in _streams(reply):
            for entry_id, fields in entries:
                try:
                    out.append((entry_id, JobResult.model_validate_json(fields["result"])))
                except (KeyError, ValueError) as e:
                    # A result the batch cannot read (a worker of another version?) still settles its call.
                    log.error("batch %s: unreadable result %s: %s", batch_id, entry_id, e)
                    out.append((entry_id, _unreadable(batch_id, fields, str(e))))
        return out

    async def cancel(self, batch_id: str) -> None:
        await self.redis.set(cancelled_key(batch_id), "1", ex=RESULTS_TTL_S)

    async def forget_batch(self, batch_id: str) -> None:
        """Drop the batch's results and its cancel flag (once it has read everything), and its jobs still queued."""
        await self.redis.delete(results_key(batch_id), cancelled_key(batch_id))

    # -- a worker's side -----------------------------------------------------------------------------------------

    async def take(self, consumer: str, block_s: float) -> Delivery | None:
        """The next job for this consumer: a dead worker's job first (a retry), else a new one (waiting up to
        block_s for it). Jobs of a cancelled batch, and jobs out of attempts, are settled here and skipped."""
        for retry in await self.reclaim(consumer, run=True, count=1):
            return retry
        reply = await self.redis.xreadgroup(
            self.group, consumer, {self.stream: ">"}, count=1, block=max(1, int(block_s * 1000))
        )
        for _key, entries in _streams(reply):
            for entry_id, fields in entries:
                delivery = await self._delivery(consumer, entry_id, fields, attempt=1)
                if delivery is not None:
                    return delivery
        return None

    async def renew(self, consumer: str, delivery: Delivery) -> bool:
        """Reset the job's idle time (the lease); False when another consumer has claimed it meanwhile (this
        worker was presumed dead: it finishes the call, and the batch keeps whichever result comes first)."""
        owner = await self.redis.xpending_range(
            self.stream, self.group, min=delivery.entry_id, max=delivery.entry_id, count=1
        )
        if not owner or owner[0]["consumer"] != consumer:
            return False
        claimed = await self.redis.xclaim(
            self.stream, self.group, consumer, min_idle_time=0, message_ids=[delivery.entry_id], justid=True
        )
        return bool(claimed)

    async def finish(self, delivery: Delivery, result: JobResult) -> None:
        """Send the result to its batch, then acknowledge and delete the job (one round trip, in this order)."""
        key = results_key(delivery.job.batch_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"call_id": result.call_id, "worker": result.worker, "result": result.model_dump_json()})
            pipe.expire(key, RESULTS_TTL_S)
            pipe.xack(self.stream, self.group, delivery.entry_id)
            pipe.xdel(self.stream, delivery.entry_id)
            await pipe.execute()

    async def reclaim(self, consumer: str, *, run: bool, count: int = 10) -> list[Delivery]:
        """Claim jobs idle for longer than the lease (their worker is gone). Those out of attempts get their
        `worker_lost` result here; with run=True the others are returned, to be run again by `consumer`
        (at most `count`); with run=False (the batch, which runs nothing) they are left for a worker."""
        pending = await self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=100, idle=self.lease_ms
        )
        out: list[Delivery] = []
        for p in pending:
            delivered = int(p["times_delivered"])
            if delivered < MAX_DELIVERIES and (not run or len(out) >= count):
                continue
            claimed: Any = await self.redis.xclaim(
                self.stream, self.group, consumer, min_idle_time=self.lease_ms, message_ids=[p["message_id"]]
            )
            for entry_id, fields in claimed:
                if not fields:  # deleted meanwhile
                    await self.redis.xack(self.stream, self.group, entry_id)
                    continue
                delivery = await self._delivery(
                    consumer, entry_id, fields, attempt=delivered + 1, lost_from=str(p["consumer"])
                )
                if delivery is not None:
                    out.append(delivery)
        return out

    async def _delivery(
        self, consumer: str, entry_id: str, fields: dict[str, Any], *, attempt: int, lost_from: str = ""
    ) -> Delivery | None:
        """The entry as a Delivery to run, or None when it was settled here (unreadable, cancelled, out of
        attempts)."""
        try:
            job = Job.model_validate_json(fields["job"])
        except (KeyError, ValueError) as e:
            log.error("jobs: dropping unreadable entry %s: %s", entry_id, e)
            await self._refuse(consumer, entry_id, fields, e)
            return None
        delivery = Delivery(entry_id, job, attempt, lost_from)
        if await self.redis.exists(cancelled_key(job.batch_id)):
            await self._drop(entry_id)
            return None
        if attempt > MAX_DELIVERIES:
            reason = f"its worker was lost {MAX_DELIVERIES} times (last {lost_from}): not run again"
            log.warning("job %s: %s", job.call_id, reason)
            result = JobResult(
                batch_id=job.batch_id,
                call_id=job.call_id,
                index=job.index,
                worker=consumer,
                attempt=attempt - 1,
                call=failed_call(job, reason),
            )
            await self.finish(delivery, result)
            return None
        if lost_from:
            log.warning(
                "job %s: its worker %s was lost; running it again (attempt %d)", job.call_id, lost_from, attempt
            )
        return delivery

    async def _refuse(self, consumer: str, entry_id: str, fields: dict[str, Any], error: Exception) -> None:
        """Settle a job this worker cannot read. When it still names its batch and place (a job written by another
        version of voicebridge, with a field this one does not know), its batch gets an `error` result saying why,
        instead of waiting for a result that never comes; otherwise the entry is only dropped."""
        try:
            raw = json.loads(fields.get("job", ""))
            batch_id, index = raw["batch_id"], raw["index"]
            ok = isinstance(batch_id, str) and isinstance(index, int) and not isinstance(index, bool)
        except (ValueError, TypeError, KeyError):
            ok = False
        if not ok:
            await self._drop(entry_id)
            return
        job = Job(batch_id=batch_id, index=index, scenario=str(raw.get("scenario", "unknown")))
        reason = f"worker {consumer} could not read this job (is it another voicebridge version?): {_first_line(error)}"
        result = JobResult(
            batch_id=batch_id,
            call_id=job.call_id,
            index=index,
            worker=consumer,
            attempt=1,
            call=failed_call(job, reason, "error"),
        )
        await self.finish(Delivery(entry_id, job, 1, ""), result)

    async def _drop(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)
            await pipe.execute()


Entries = list[tuple[str, dict[str, str]]]


def _first_line(error: Exception) -> str:
    """An error's message in one line (pydantic's span several: the count, then each field and its problem)."""
    return " ".join(str(error).split())[:300]


def _streams(reply: Any) -> list[tuple[str, Entries]]:
    """XREAD / XREADGROUP's reply (RESP2, decode_responses=True) as [(stream, [(entry id, fields)])]; it is None
    when the wait timed out."""
    return [(k, v) for k, v in reply or []]


def _unreadable(batch_id: str, fields: dict[str, Any], why: str) -> JobResult:
    """A result the batch could not read, as a failed call (end_reason `error`) under the call id it came with."""
    call_id = str(fields.get("call_id", "unknown"))
    call = failed_call(Job(batch_id=batch_id, index=0, scenario="unknown"), f"unreadable result: {why}", "error")
    summary = call.summary.model_copy(update={"call_id": call_id})
    return JobResult(
        batch_id=batch_id,
        call_id=call_id,
        index=-1,
        worker=str(fields.get("worker", "unknown")),
        attempt=1,
        call=BatchCall(summary=summary, setup_s=None),
    )

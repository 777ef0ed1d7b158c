"""The batch job protocol (cluster/jobs.py) against a real redis-server: one delivery per job, typed results back,
a dead worker's job run again once and then reported `worker_lost`, cancelled batches skipped.

Workers "die" here by taking a job and never renewing or finishing it, which is what a kill -9 leaves in Redis. The
lease is short so that a lost job is reclaimed soon; the tests wait for that by asking again (each `take` blocks on
Redis), never by asserting how long it took.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from voicebridge.cluster.jobs import (
    MAX_DELIVERIES,
    Delivery,
    Job,
    JobQueue,
    JobResult,
    failed_call,
    results_key,
)
from voicebridge.results import BatchCall

HANG_S = 60.0  # only catches a hang: a slow machine waits longer within it


@pytest.fixture
async def queue(redis_server: Any) -> AsyncIterator[JobQueue]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    q = JobQueue(client, lease_s=0.2)
    await q.ensure_group()
    await q.ensure_group()  # every party calls it: the second time is no error
    yield q
    await client.aclose()


def ran(job: Job, worker: str, attempt: int) -> JobResult:
    """A result as a worker would send it (the call itself is not what these tests are about)."""
    call = failed_call(job, "stand-in")
    summary = call.summary.model_copy(update={"end_reason": "caller_hangup", "error": None, "duration_s": 1.5})
    return JobResult(
        batch_id=job.batch_id, call_id=job.call_id, index=job.index, worker=worker, attempt=attempt,
        call=BatchCall(summary=summary, setup_s=0.25, worker=worker, attempt=attempt),
    )


async def take_until(queue: JobQueue, consumer: str) -> Delivery:
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        delivery = await queue.take(consumer, block_s=0.1)
        if delivery is not None:
            return delivery
    raise AssertionError(f"{consumer} got no job within {HANG_S} s")


async def results_until(queue: JobQueue, batch_id: str, n: int) -> list[JobResult]:
    got: list[JobResult] = []
    after = "0"
    deadline = time.monotonic() + HANG_S
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} results within {HANG_S} s"
        for entry_id, result in await queue.read_results(batch_id, after, block_s=0.5):
            after = entry_id
            got.append(result)
    return got


async def test_each_job_goes_to_one_worker_and_its_typed_result_comes_back(queue: JobQueue) -> None:
    jobs = [Job(batch_id="b1", index=i, scenario="late_order") for i in range(4)]
    for job in jobs:
        await queue.submit(job)
    deliveries = [await take_until(queue, w) for w in ("w1", "w2", "w1", "w2")]
    assert sorted(d.job.index for d in deliveries) == [0, 1, 2, 3]  # nobody got a job twice
    assert {d.attempt for d in deliveries} == {1}
    assert await queue.take("w3", block_s=0.1) is None  # nothing left
    sent = {d.job.call_id: ran(d.job, w, d.attempt) for d, w in zip(deliveries, ("w1", "w2", "w1", "w2"), strict=True)}
    for d in deliveries:
        await queue.finish(d, sent[d.job.call_id])
    results = await results_until(queue, "b1", 4)
    by_call = {r.call_id: r for r in results}
    assert by_call == sent  # the typed records, equal after their trip through Redis
    assert {r.worker for r in results} == {"w1", "w2"}
    # Finished jobs are acknowledged and deleted: nothing pending, nothing left on the stream.
    assert await queue.redis.xlen(queue.stream) == 0
    assert (await queue.redis.xpending(queue.stream, queue.group))["pending"] == 0
    await queue.forget_batch("b1")
    assert not await queue.redis.exists(results_key("b1"))


async def test_a_dead_workers_job_runs_once_more_then_is_reported_worker_lost(queue: JobQueue) -> None:
    job = Job(batch_id="b2", index=0, scenario="late_order")
    await queue.submit(job)
    first = await take_until(queue, "w1")  # w1 dies with it: never renews, never finishes
    assert first.attempt == 1
    retry = await take_until(queue, "w2")  # w2 finds it idle past the lease and runs it again
    assert (retry.entry_id, retry.job, retry.attempt, retry.lost_worker) == (first.entry_id, job, 2, "w1")
    assert not await queue.renew("w1", first)  # w1, were it only slow, learns it lost the job
    # w2 dies too: the next worker does not run it a third time, it reports the call lost.
    deadline = time.monotonic() + HANG_S
    while not await queue.redis.exists(results_key("b2")):
        assert time.monotonic() < deadline, "the twice-lost job was never reported"
        assert await queue.take("w3", block_s=0.1) is None
    [result] = await results_until(queue, "b2", 1)
    assert result.call_id == job.call_id and result.attempt == MAX_DELIVERIES
    assert result.call.summary.end_reason == "worker_lost"
    assert result.call.summary.error is not None and "w2" in result.call.summary.error
    assert not result.call.summary.succeeded
    assert await queue.redis.xlen(queue.stream) == 0


async def test_the_batch_itself_reports_a_twice_lost_job_when_no_worker_is_left(queue: JobQueue) -> None:
    job = Job(batch_id="b3", index=5, scenario="late_order")
    await queue.submit(job)
    await take_until(queue, "w1")
    await take_until(queue, "w2")
    deadline = time.monotonic() + HANG_S
    while not await queue.reclaim("batch:b3", run=False) and not await queue.redis.exists(results_key("b3")):
        assert time.monotonic() < deadline, "the batch never gave the job up"
        await asyncio.sleep(0.05)  # polling Redis for the lease to run out; bounded by the deadline
    [result] = await results_until(queue, "b3", 1)
    assert (result.call_id, result.call.summary.end_reason) == ("b3_0006", "worker_lost")


async def test_the_batch_leaves_a_once_lost_job_to_the_workers(queue: JobQueue) -> None:
    await queue.submit(Job(batch_id="b4", index=0, scenario="late_order"))
    await take_until(queue, "w1")
    deadline = time.monotonic() + HANG_S
    while not (await queue.redis.xpending_range(queue.stream, queue.group, "-", "+", 1, idle=queue.lease_ms)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)  # polling Redis for the lease to run out; bounded by the deadline
    assert await queue.reclaim("batch:b4", run=False) == []  # the batch runs nothing and gives up nothing yet
    assert not await queue.redis.exists(results_key("b4"))
    assert (await take_until(queue, "w2")).attempt == 2


async def test_cancelled_batches_jobs_are_taken_off_without_running(queue: JobQueue) -> None:
    await queue.submit(Job(batch_id="gone", index=0, scenario="late_order"))
    await queue.submit(Job(batch_id="kept", index=0, scenario="late_order"))
    await queue.cancel("gone")
    delivery = await take_until(queue, "w1")
    assert delivery.job.batch_id == "kept"
    assert await queue.redis.xlen(queue.stream) == 1  # the cancelled one is deleted, the taken one pending


async def test_an_unreadable_entry_is_dropped_and_the_next_job_is_taken(queue: JobQueue) -> None:
    await queue.redis.xadd(queue.stream, {"job": "{not json"})
    await queue.submit(Job(batch_id="b5", index=1, scenario="late_order"))
    assert (await take_until(queue, "w1")).job.call_id == "b5_0002"


async def test_a_job_from_another_version_gets_an_error_result_instead_of_no_result(queue: JobQueue) -> None:
    newer = Job(batch_id="b6", index=2, scenario="late_order").model_dump(mode="json") | {"voices": ["x"]}
    await queue.redis.xadd(queue.stream, {"job": json.dumps(newer)})
    await queue.submit(Job(batch_id="b6", index=3, scenario="late_order"))
    assert (await take_until(queue, "w1")).job.call_id == "b6_0004"  # the readable job is still taken
    [result] = await results_until(queue, "b6", 1)
    assert (result.call_id, result.worker, result.call.summary.end_reason) == ("b6_0003", "w1", "error")
    error = result.call.summary.error or ""
    assert "worker w1 could not read this job" in error and "voices" in error and "\n" not in error


def test_a_scenario_file_travels_with_its_job() -> None:
    job = Job(batch_id="b6", index=0, scenario="mine", scenario_toml='name = "mine"\n')
    assert Job.model_validate_json(job.model_dump_json()) == job

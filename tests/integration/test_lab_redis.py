"""`voicebridge test --redis`: the lab's matrix run by workers' job loops (cluster/job_loop.py) through a real Redis,
real calls against the emulator, each under the impairment and seed of its cell; the report says which worker ran
each call. And a worker's batch calls count in its load, as placement and GET /api/workers see it.

The workers run in this process (their job loops and call runners are the ones `voicebridge worker` runs), as in
test_cluster_batch.py; tests/browser/test_multihost.py runs workers as processes on other "machines".
"""

from __future__ import annotations

import asyncio
import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import StartEmulator
from voicebridge.cli import build_parser
from voicebridge.cluster.job_loop import CallJobs, JobLoop
from voicebridge.cluster.jobs import Job, JobQueue
from voicebridge.cluster.placement import candidates
from voicebridge.cluster.registry import Registry, WorkerInfo
from voicebridge.commands.test import _main as lab_main
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.lab.report import LabReport
from voicebridge.results import BatchCall
from voicebridge.scenarios.model import BUILTIN_DIR

pytestmark = pytest.mark.integration
HANG_S = 180.0  # only catches a hang
SPEC = "caller>cs: loss=5%; cs>caller: delay=20ms"


async def test_a_lab_matrix_runs_on_two_workers_under_its_impairment(
    redis_server: Any, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emulator = await start_emulator()
    settings = dataclasses.replace(Settings(), base_url=emulator.base_url, api_key=EMULATOR_KEY)
    own = tmp_path / "my_bye.toml"  # not built in: its text travels in the job
    own.write_text((BUILTIN_DIR / "quick_bye.toml").read_text().replace('"quick_bye"', '"my_bye"'))
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    # One slot each: a worker busy with a call leaves the other job to the other worker.
    loops = [
        JobLoop(JobQueue(client), name, CallJobs(settings, tmp_path / name), slots=1, block_s=0.2)
        for name in ("w-a", "w-b")
    ]
    running = [asyncio.ensure_future(loop.run()) for loop in loops]
    out, junit = tmp_path / "lab", tmp_path / "junit.xml"
    args = build_parser().parse_args([
        "test", "quick_bye", str(own), "--impair", SPEC, "--impair-seed", "11", "--redis", redis_server.url,
        "--out", str(out), "--junit", str(junit),
    ])
    try:
        code = await asyncio.wait_for(lab_main(args), HANG_S)
    finally:
        for loop in loops:
            loop.stop()
        await asyncio.wait_for(asyncio.gather(*running), HANG_S)
        await client.aclose()
    report = LabReport.model_validate_json((out / "report.json").read_text())
    assert code == 0 and report.ok, [r.why for r in report.runs]
    assert (report.total, report.passed) == (2, 2)
    runs = {r.scenario: r for r in report.runs}
    assert sorted(runs) == ["my_bye", "quick_bye"]
    assert sorted(r.worker or "" for r in report.runs) == ["w-a", "w-b"]
    for r in report.runs:
        assert (r.impairment, r.repeat, r.attempt) == (SPEC, 1, 1)
        # The worker applied the cell's impairment with its seed (repeat 1: --impair-seed; the other way, + 1).
        to_cs, to_caller = r.impairment_applied["caller_to_cs"], r.impairment_applied["cs_to_caller"]
        assert (to_cs["spec"], to_cs["seed"], to_caller["seed"]) == ("loss=5%", 11, 12)
        assert to_cs["dropped"] == to_cs["lost_random"] > 0 and to_caller["dropped"] == 0
        # Its call folder is the worker's, as a batch of its own would write it.
        assert (tmp_path / str(r.worker) / "batches" / report.test_id / "calls" / r.call_id / "summary.json").is_file()
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    for r in report.runs:
        props = {p.get("name"): p.get("value") for p in cases[r.name].iter("property")}
        assert (props["worker"], props["attempt"]) == (r.worker, "1")
    page = (out / "report.html").read_text()
    assert "worker <code>w-a</code>" in page and "worker <code>w-b</code>" in page


def test_a_lab_that_cannot_use_redis_says_why_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicebridge.commands.test import main

    args = build_parser().parse_args(
        ["test", "quick_bye", "--redis", "redis://127.0.0.1:1/0", "--out", str(tmp_path / "lab")]
    )
    assert main(args) == 2
    assert "is unavailable" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()


async def test_a_workers_batch_calls_count_in_its_load(redis_server: Any) -> None:
    """A batch call running on w-a loads it as a placed call would: the front door places the next call on w-b
    and GET /api/workers (the same `loads`) counts it; once the call has ended it no longer does."""
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    registry = await Registry.connect(redis_server.url)
    started, release = asyncio.Event(), asyncio.Event()

    async def run_job(job: Job, attempt: int) -> BatchCall:
        from voicebridge.cluster.jobs import failed_call

        started.set()
        await release.wait()
        return failed_call(job, "stand-in")

    queue = JobQueue(client)
    loop = JobLoop(queue, "w-a", run_job, slots=1, block_s=0.2)
    running = asyncio.ensure_future(loop.run())
    workers = [WorkerInfo(id=w, host="127.0.0.1", port=1, pid=1, started_at=0.0) for w in ("w-a", "w-b")]
    try:
        await queue.ensure_group()
        await queue.submit(Job(batch_id="batch_l", index=0, scenario="quick_bye"))
        await asyncio.wait_for(started.wait(), HANG_S)
        loads = await registry.loads(["w-a", "w-b"])
        assert loads == {"w-a": 1, "w-b": 0}
        assert [w.id for w in candidates(workers, loads)] == ["w-b", "w-a"]
        release.set()
        results = await asyncio.wait_for(queue.read_results("batch_l", "0", block_s=HANG_S), HANG_S)
        assert [r.call_id for _, r in results] == ["batch_l_0001"]
        # The load is written before the result is sent: it is 0 by the time the batch has its result.
        assert await registry.loads(["w-a", "w-b"]) == {"w-a": 0, "w-b": 0}
    finally:
        loop.stop()
        release.set()
        await asyncio.wait_for(running, HANG_S)
        await client.aclose()
        await registry.close()

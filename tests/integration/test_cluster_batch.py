"""`voicebridge batch --redis`: a batch's calls run by workers' job loops (cluster/job_loop.py) through a real Redis,
real calls against the emulator; the report says which worker ran each call.

The two workers run in this process here (their job loops and call runners are the ones `voicebridge worker` runs);
tests/browser/test_multihost.py runs them as processes on other "machines".
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import StartEmulator
from voicebridge.batch.cli import run_cluster_batch
from voicebridge.cluster.job_loop import CallJobs, JobLoop
from voicebridge.cluster.jobs import JobQueue
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.results import BatchReport
from voicebridge.scenarios.model import load_scenario

HANG_S = 180.0


async def test_a_batch_runs_on_two_workers_and_its_report_names_them(
    redis_server: Any, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emulator = await start_emulator()
    settings = dataclasses.replace(Settings(), base_url=emulator.base_url, api_key=EMULATOR_KEY)
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    # One slot each: a worker busy with a call leaves the other job to the other worker.
    loops = [
        JobLoop(JobQueue(client), name, CallJobs(settings, tmp_path / name), slots=1, block_s=0.2)
        for name in ("w-a", "w-b")
    ]
    running = [asyncio.ensure_future(loop.run()) for loop in loops]
    out = tmp_path / "batch"
    progress: list[int] = []
    try:
        result, report = await asyncio.wait_for(
            run_cluster_batch(
                load_scenario("quick_bye"), 2, 2, out, redis_url=redis_server.url, batch_id="batch_c",
                progress=lambda done, total, s: progress.append(done),
            ),
            HANG_S,
        )
    finally:
        for loop in loops:
            loop.stop()
        await asyncio.wait_for(asyncio.gather(*running), HANG_S)
        await client.aclose()
    assert BatchReport.model_validate(json.loads((out / "report.json").read_text())) == report
    assert (report.total, report.succeeded) == (2, 2), report.errors
    assert result.interrupted is False
    assert report.workers == {"w-a": 1, "w-b": 1}
    rows = {r.call_id: r for r in report.calls}
    assert sorted(rows) == ["batch_c_0001", "batch_c_0002"] and sorted(progress) == [1, 2]
    for call in result.calls:
        row = rows[call.summary.call_id]
        assert row.worker == call.worker and row.worker in ("w-a", "w-b") and row.attempt == 1
        # The worker wrote the call's folder under its own artifacts, as a batch of its own would.
        folder = tmp_path / row.worker / "batches" / "batch_c" / "calls" / row.call_id
        assert Path(call.summary.out_dir) == folder and (folder / "summary.json").is_file()
        assert [t.text for t in row.turns] == ["Hello there.", "Goodbye now."]
    assert "redis://127.0.0.1" in report.base_url and redis_server.password not in report.base_url
    assert "w-a" in (out / "report.html").read_text()
    # Every job was acknowledged and deleted; the batch's results stream is gone.
    check = redis_server.client()
    assert check.xlen("voicebridge:jobs") == 0 and not check.exists("voicebridge:batch:batch_c:results")


def test_a_batch_that_cannot_use_redis_says_why_before_any_call(
    redis_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicebridge.batch.cli import main
    from voicebridge.cli import build_parser

    wrong = redis_server.url.replace(redis_server.password, "not-the-password")
    for url, says in ((wrong, "refused our credentials"), ("redis://127.0.0.1:1/0", "is unavailable")):
        args = build_parser().parse_args(["batch", "--redis", url, "--calls", "1", "--out", str(tmp_path / "b")])
        assert main(args) == 2
        err = capsys.readouterr().err
        assert says in err and "not-the-password" not in err, err
    assert not (tmp_path / "b").exists()  # nothing was started

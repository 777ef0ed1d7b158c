"""Degrade, never collapse (observability/capacity.py): the emulator refuses sessions beyond its capacity with the
real API's 429 (the SDK's RateLimitError, `Retry-After`), the sessions it accepted keep working, and /readyz says
it is full; the lag's refusal is driven by an injected meter, never by loading the machine. A batch against a
full emulator backs off and retries the calls it refused, and every call finally succeeds. A full bridge answers
POST /api/calls with 503 and Retry-After, says so on /readyz, and keeps the call it took."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openai import AsyncOpenAI

from tests.integration.conftest import Client, cs_session
from voicebridge.batch.cli import run_batch
from voicebridge.batch.runner import RetryPolicy
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.emulator.limits import Limits
from voicebridge.emulator.server import Emulator
from voicebridge.observability.capacity import CapacityLimits
from voicebridge.scenarios.model import load_scenario
from voicebridge.signaling.app import create_app
from voicebridge.signaling.http import CAPACITY, MANAGER

pytestmark = pytest.mark.integration


class SetLag:
    """A lag meter whose reading the test sets."""

    def __init__(self) -> None:
        self.lag_ms = 0.0


@pytest.fixture
async def tiny() -> AsyncIterator[tuple[Emulator, SetLag]]:
    """Room for one session (1 per core, 1 core); the lag limit 100 ms, refusing from the first session."""
    meter = SetLag()
    limits = Limits(sessions_per_core=1, cores=1, max_lag_ms=100, lag_floor=0)
    emu = Emulator(limits=limits, lag_meter=meter)
    await emu.start()
    try:
        yield emu, meter
    finally:
        await emu.stop()


async def readyz(emu: Emulator) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(emu.base_url.removesuffix("/v1") + "/readyz") as r:
        return r.status, await r.json()


def assert_capacity_429(e: BaseException) -> dict[str, Any]:
    assert isinstance(e, openai.RateLimitError), repr(e)
    assert e.status_code == 429 and int(e.response.headers["retry-after"]) > 0
    body = e.body if isinstance(e.body, dict) else {}
    err: dict[str, Any] = body.get("error", body)
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded") and "param" in err, err
    assert "this emulator is at capacity" in err["message"], err["message"]
    return err


async def test_a_full_emulator_refuses_the_next_session_and_keeps_the_one_it_took(
    tiny: tuple[Emulator, SetLag],
) -> None:
    emu, meter = tiny
    assert (await readyz(emu))[0] == 200
    first = Client()
    second = Client()
    try:
        await first.connect(emu.base_url, cs_session())
        await asyncio.wait_for(first.opened, 15)
        await first.wait_for("session.created")
        status, body = await readyz(emu)
        assert status == 503 and "capacity" in body["failing"] and body["capacity"]["budget"] == 1, body

        # The SDK (as any outside client) sees its RateLimitError, in the API's shape, with Retry-After.
        sdk = AsyncOpenAI(base_url=emu.base_url, api_key="sk-test", max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as info:
                await sdk.realtime.calls.create(sdp=await second.offer())
        finally:
            await sdk.close()
        err = assert_capacity_429(info.value)
        assert "1 sessions live" in err["message"], err["message"]
        assert emu.capacity.refused["budget"] == 1 and len(emu.sessions) == 1

        # The accepted session still answers.
        first.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await first.wait_for("response.done", within=30)
        assert done["response"]["status"] == "completed"

        # Once it ends, there is room again.
        sdk = AsyncOpenAI(base_url=emu.base_url, api_key="sk-test", max_retries=0)
        try:
            await sdk.realtime.calls.hangup(first.call_id)
        finally:
            await sdk.close()
        assert (await readyz(emu))[0] == 200
        # The lag, not the count: a loop 250 ms late refuses a session although the budget has room.
        meter.lag_ms = 250.0
        status, body = await readyz(emu)
        assert status == 503 and "250 ms late" in body["failing"]["capacity"], body
        sdk = AsyncOpenAI(base_url=emu.base_url, api_key="sk-test", max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as info:
                await sdk.realtime.calls.create(sdp=await second.offer())
        finally:
            await sdk.close()
        assert "event loop is 250 ms late" in assert_capacity_429(info.value)["message"]
        assert emu.capacity.refused["lag"] == 1
        meter.lag_ms = 20.0
        assert (await readyz(emu))[0] == 200
        await second.connect(emu.base_url, cs_session())
    finally:
        await first.close()
        await second.close()


async def test_a_batch_retries_the_calls_a_full_emulator_refused_until_each_succeeds(tmp_path: Path) -> None:
    # Room for one call (two sessions); three at once: at least one is refused at creation, and waits its turn.
    emu = Emulator(limits=Limits(sessions_per_core=2, cores=1, max_lag_ms=0, capacity_retry_after_s=1))
    await emu.start()
    try:
        _, report = await run_batch(
            load_scenario("quick_bye"), 3, 3, tmp_path / "batch", emulator_url=emu.base_url, batch_id="batch_r",
            retry=RetryPolicy(attempts=40, base_s=0.2, cap_s=1.0),
        )
    finally:
        await emu.stop()
    saved = json.loads((tmp_path / "batch" / "report.json").read_text())
    assert (saved["total"], saved["succeeded"], saved["gave_up"]) == (3, 3, 0), saved["errors"]
    assert saved["refusals"] >= 1 and saved["retried"] >= 1
    assert sum(row["refusals"] for row in saved["calls"]) == saved["refusals"] == report.refusals
    assert emu.capacity.refused["budget"] >= saved["refusals"]  # each refused try had a refused session
    for row in saved["calls"]:  # a retried call starts afresh: its folder holds the try that succeeded
        assert row["ok"] and row["setup_s"] is not None
        assert json.loads((tmp_path / "batch" / row["links"]["summary.json"]).read_text())["error"] is None


async def test_a_full_bridge_answers_503_with_retry_after_and_keeps_its_call(
    emulator: Emulator, tmp_path: Path
) -> None:
    settings = Settings(base_url=emulator.base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    app = await create_app(settings, capacity=CapacityLimits(per_core=1, max_lag_ms=100, cores=1), lag_meter=SetLag())
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/readyz")).status == 200
        first = await c.post("/api/calls", json={"scenario": "late_order"})
        assert first.status == 201
        call_id = (await first.json())["id"]
        refused = await c.post("/api/calls", json={"scenario": "late_order"})
        assert refused.status == 503 and int(refused.headers["Retry-After"]) > 0
        err = (await refused.json())["error"]
        assert err["type"] == "overloaded" and "the server is full: 1 calls live" in err["message"], err
        ready = await c.get("/readyz")
        body = await ready.json()
        assert ready.status == 503 and "capacity" in body["failing"] and body["capacity"]["budget"] == 1, body
        # The call it took goes on: it goes live, untouched by the refusal.
        rec = app[MANAGER].get(call_id)
        assert rec is not None
        while rec.call.state == "connecting":
            await asyncio.wait_for(next_state(rec.call), 30)
        assert rec.call.state == "live", rec.call.summary().error
        await app[MANAGER].shutdown(30)
        assert app[CAPACITY].refused == {"budget": 1, "lag": 0}


def next_state(call: Any) -> asyncio.Future[str]:
    """The call's next state (listened for at once, so none is missed)."""
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    call.once("state", lambda s: fut.done() or fut.set_result(s))
    return fut

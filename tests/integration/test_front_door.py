"""The front door's answers when the cluster cannot serve, on a real redis-server, no worker process needed: every
refusal is JSON naming why (no worker, an unknown call, a call whose worker has gone, a worker that does not answer)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from voicebridge.cluster.front_door import create_front_door
from voicebridge.cluster.registry import Registry, WorkerInfo
from voicebridge.config import Settings


@pytest.fixture
async def door(redis_server: Any) -> AsyncIterator[tuple[TestClient[Any, Any], Registry]]:
    registry = await Registry.connect(redis_server.url)
    client = TestClient(TestServer(create_front_door(registry, Settings())))
    await client.start_server()
    yield client, registry
    await client.close()
    await registry.close()


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _error(resp: Any) -> tuple[int, str, str]:
    body = await resp.json()
    return resp.status, body["error"]["type"], body["error"]["message"]


async def test_without_workers_nothing_is_placed_and_readyz_says_why(door: Any) -> None:
    client, _ = door
    status, kind, message = await _error(await client.post("/api/calls", json={"scenario": "quick_bye"}))
    assert (status, kind) == (503, "no_workers") and "voicebridge worker" in message
    resp = await client.get("/readyz")
    assert resp.status == 503 and "workers" in (await resp.json())["failing"]
    status, kind, _ = await _error(await client.get("/api/calls/call_nope"))
    assert (status, kind) == (404, "not_found")
    assert (await (await client.get("/api/workers")).json()) == {"workers": []}


async def test_a_worker_that_does_not_answer_is_skipped_then_reported(door: Any) -> None:
    client, registry = door
    mute = WorkerInfo(id="w-mute", host="127.0.0.1", port=_closed_port(), pid=1, started_at=time.time())
    await registry.heartbeat(mute)
    status, kind, message = await _error(await client.post("/api/calls", json={"scenario": "quick_bye"}))
    assert (status, kind) == (503, "no_workers") and "w-mute" in message
    await registry.put_calls("w-mute", [{"id": "c-live", "state": "live", "created_at": time.time()}])
    status, kind, message = await _error(await client.get("/api/calls/c-live/sdp"))
    assert (status, kind) == (502, "worker_unreachable") and "worker_lost" in message


async def test_a_call_whose_worker_left_keeps_its_record_and_refuses_the_rest(door: Any, redis_server: Any) -> None:
    client, registry = door
    ended = {"id": "c-done", "state": "ended", "end_reason": "caller_hangup", "created_at": time.time()}
    await registry.put_calls("w-gone", [ended])  # a worker that drained and left
    resp = await client.get("/api/calls/c-done")
    assert resp.status == 200 and (await resp.json())["worker"] == "w-gone"
    status, kind, _ = await _error(await client.post("/api/calls/c-done/tokens", json={"role": "listen"}))
    assert (status, kind) == (410, "worker_gone")
    # A live call whose worker's heartbeat has expired: asking about it reaps the worker there and then.
    await registry.heartbeat(WorkerInfo(id="w-dead", host="127.0.0.1", port=1, pid=1, started_at=0.0))
    await registry.put_calls("w-dead", [{"id": "c-lost", "state": "live", "created_at": time.time()}])
    redis_server.client().delete("voicebridge:worker:w-dead")  # its key expiring, without waiting for it
    status, kind, message = await _error(await client.get("/api/calls/c-lost/events"))
    assert (status, kind) == (410, "worker_lost") and "w-dead" in message
    assert (await (await client.get("/api/calls/c-lost")).json())["end_reason"] == "worker_lost"

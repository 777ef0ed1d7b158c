"""The registry on a real redis-server: heartbeats that expire, call records with their owner, and reaping a dead
worker's calls as `worker_lost` exactly once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from voicebridge.cluster.registry import Registry, RegistryUnavailable, WorkerInfo


@pytest.fixture
async def registry(redis_server: Any) -> AsyncIterator[Registry]:
    reg = await Registry.connect(redis_server.url)
    yield reg
    await reg.close()


def _worker(wid: str) -> WorkerInfo:
    return WorkerInfo(id=wid, host="127.0.0.1", port=9, pid=123, started_at=time.time(), heartbeat_at=time.time())


def _row(call_id: str, state: str = "live", created_at: float = 1.0) -> dict[str, Any]:
    return {"id": call_id, "state": state, "end_reason": None, "created_at": created_at, "scenario": "quick_bye"}


async def test_records_carry_their_worker_and_count_as_its_load(registry: Registry) -> None:
    assert await registry.heartbeat(_worker("w1")) is False
    await registry.put_calls("w1", [_row("c1", created_at=1.0), _row("c2", created_at=2.0)])
    assert [c["id"] for c in await registry.calls()] == ["c2", "c1"]  # newest first
    assert (await registry.call("c1") or {})["worker"] == "w1"
    assert await registry.loads(["w1"]) == {"w1": 2}
    await registry.put_calls("w1", [_row("c1", state="ended")])
    assert await registry.loads(["w1"]) == {"w1": 1}
    assert [w.id for w in await registry.workers()] == ["w1"]


async def test_a_worker_whose_heartbeat_expired_is_reaped_once_and_its_live_calls_lost(
    registry: Registry, redis_server: Any
) -> None:
    await registry.heartbeat(_worker("alive"))
    await registry.heartbeat(_worker("dead"), ttl_s=60)
    await registry.put_calls("dead", [_row("lost"), _row("done", state="ended")])
    redis_server.client().delete("voicebridge:worker:dead")  # its key expiring, without waiting for it
    assert await registry.reap() == ["dead"]
    assert await registry.reap() == []  # a second reaper finds nothing to do
    lost = await registry.call("lost") or {}
    assert (lost["state"], lost["end_reason"], lost["worker"]) == ("ended", "worker_lost", "dead")
    assert "dead" in lost["error"]
    assert (await registry.call("done") or {})["end_reason"] is None  # an ended call stays as it ended
    assert [w.id for w in await registry.workers()] == ["alive"]
    # The reaped worker was only stalled and heartbeats again: it is told, so it ends its calls for real.
    assert await registry.heartbeat(_worker("dead")) is True
    assert await registry.heartbeat(_worker("dead")) is False


async def test_the_secret_is_shared_and_survives_a_restart_of_redis(registry: Registry, redis_server: Any) -> None:
    first = await registry.cluster_secret()
    assert len(first) >= 32 and await registry.cluster_secret() == first
    redis_server.client().flushall()  # Redis restarted empty
    assert await registry.cluster_secret(first) == first


async def test_a_wrong_password_or_no_redis_is_one_clear_error(redis_server: Any) -> None:
    wrong = f"redis://:not-the-password@{redis_server.host}:{redis_server.port}/0"
    with pytest.raises(RegistryUnavailable, match=r"credentials|password"):
        await Registry.connect(wrong)
    bare = f"redis://{redis_server.host}:{redis_server.port}/0"
    with pytest.raises(RegistryUnavailable, match="password"):
        await Registry.connect(bare)
    with pytest.raises(RegistryUnavailable, match="no Redis URL"):
        await Registry.connect("")


async def test_the_front_doors_first_record_never_overwrites_the_workers(registry: Registry) -> None:
    await registry.put_new_call("w1", _row("fresh"))
    assert (await registry.call("fresh") or {})["worker"] == "w1" and await registry.loads(["w1"]) == {"w1": 1}
    await registry.put_calls("w1", [_row("quick", state="ended")])  # the worker was first, and the call is over
    await registry.put_new_call("w1", _row("quick"))
    assert (await registry.call("quick") or {})["state"] == "ended"
    assert await registry.loads(["w1"]) == {"w1": 1}  # not counted live again

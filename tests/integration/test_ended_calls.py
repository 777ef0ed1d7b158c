"""An ended call, retired by the server's registry, is served from its folder exactly as it was from memory.

A real call (the two-line `quick_bye` against the embedded emulator) ends; while its retirement is held back,
every read-only view of it is fetched from the call object (detail, list row, SDP, debug, the download, stats,
participants, the events backlog and `?since=`); then it is retired and the same views are fetched again, now
read from summary.json, debug.json and messages.jsonl. They must be equal, and the Call object (with its peer
connections) must be gone. Then the registry's list forgets it: still found by id, the same again.
"""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from voicebridge.signaling.calls import CallManager, CallRecord
from voicebridge.signaling.ended import EndedCall
from voicebridge.signaling.http import MANAGER

pytestmark = pytest.mark.integration
CALL_TIMEOUT = 60.0


async def replay(client: TestClient[Any, Any], call_id: str, since: int = 0) -> list[dict[str, Any]]:
    ws = await client.ws_connect(f"/api/calls/{call_id}/events?since={since}")
    out = []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))
    return out


async def views(client: TestClient[Any, Any], call_id: str) -> dict[str, Any]:
    async def get(path: str) -> Any:
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    out = {
        "detail": await get(f"/api/calls/{call_id}"),
        "sdp": await get(f"/api/calls/{call_id}/sdp"),
        "debug": await get(f"/api/calls/{call_id}/debug"),
        "download": await get(f"/api/calls/{call_id}/debug?download=1"),
        "stats": await get(f"/api/calls/{call_id}/stats"),
        "participants": await get(f"/api/calls/{call_id}/participants"),
        "events": await replay(client, call_id),
        "events_since_3": await replay(client, call_id, 3),
    }
    for name in ("debug", "download"):
        out[name].pop("generated_at")  # the time of the request
    return out


def assert_same(now: dict[str, Any], was: dict[str, Any], when: str) -> None:
    for name in was:
        if isinstance(was[name], dict):
            changed = {k: (was[name].get(k), now[name].get(k)) for k in set(was[name]) | set(now[name])
                       if was[name].get(k) != now[name].get(k)}
            assert not changed, f"{name} differs {when}: {changed}"
        assert now[name] == was[name], f"{name} differs {when}"


async def listed(client: TestClient[Any, Any], call_id: str) -> list[dict[str, Any]]:
    return [c for c in (await (await client.get("/api/calls")).json())["calls"] if c["id"] == call_id]


async def test_a_retired_call_is_served_from_disk_as_it_was_from_memory(
    console_client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    retire = CallManager._retire

    async def held(self: CallManager, rec: CallRecord) -> None:
        await release.wait()
        await retire(self, rec)

    monkeypatch.setattr(CallManager, "_retire", held)
    manager = console_client.server.app[MANAGER]
    resp = await console_client.post("/api/calls", json={"scenario": "quick_bye"})
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    rec = manager.get(call_id)
    assert rec is not None
    call_ref = weakref.ref(rec.call)
    await asyncio.wait_for(rec.call.wait_ended(), CALL_TIMEOUT)
    assert rec.ended and not isinstance(rec.call, EndedCall)

    before = await views(console_client, call_id)
    row = await listed(console_client, call_id)
    release.set()
    await manager.wait_retired()
    assert isinstance(rec.call, EndedCall) and rec.stream_on_disk
    gc.collect()
    assert call_ref() is None, "the registry (or something) still holds the ended Call object"
    after = await views(console_client, call_id)

    assert before["detail"]["end_reason"] == "caller_hangup" and before["detail"]["turns"]
    assert len(before["sdp"]["legs"]) == 2 and len(before["debug"]["peer_connections"]) == 2
    assert before["events"][-1]["kind"] == "ended" and [m["seq"] for m in before["events_since_3"][1:3]] == [4, 5]
    assert_same(after, before, "once the call is served from its folder")
    assert await listed(console_client, call_id) == row

    # Beyond the list's bound, the call is no longer listed but still found by id, from its folder.
    manager.max_ended = 0
    manager.forget_old()
    assert manager.records() == [] and await listed(console_client, call_id) == []
    assert_same(await views(console_client, call_id), after, "once the call is found by id, not listed")



"""GET /api/calls/{id}/debug and /stats with the real Call against the embedded emulator.

A demo call's two agent legs are recorded from their first state: SDP (ICE passwords masked, explained),
the ICE/DTLS/connection timeline, live RTP stats with bitrates; after the call ends it all stays readable.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from voicebridge.signaling.http import MANAGER

pytestmark = pytest.mark.integration
CALL_TIMEOUT = 60.0


async def wait_for(console_client: TestClient[Any, Any], call_id: str, kind: str, pred: Any = None) -> dict[str, Any]:
    """The first message of `kind` (matching `pred`) on the call's event socket, backlog included."""
    ws = await console_client.ws_connect(f"/api/calls/{call_id}/events")

    async def read() -> dict[str, Any]:
        while True:
            msg = await ws.receive_json()
            if msg["kind"] == kind and (pred is None or pred(msg["data"])):
                return dict(msg["data"]) if isinstance(msg["data"], dict) else {"value": msg["data"]}

    try:
        return await asyncio.wait_for(read(), CALL_TIMEOUT)
    finally:
        await ws.close()


def rows_by_type(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["type"]: r for r in snapshot["rows"]}


async def test_debug_of_a_live_call_then_after_it_ends(console_client: TestClient[Any, Any]) -> None:
    resp = await console_client.post("/api/calls", json={"scenario": "late_order"})
    call_id = (await resp.json())["id"]
    await wait_for(console_client, call_id, "state", lambda s: s == "live")

    resp = await console_client.get(f"/api/calls/{call_id}/debug")
    assert resp.status == 200 and "Content-Disposition" not in resp.headers
    text = await resp.text()
    body = json.loads(text)
    pcs = {pc["name"]: pc for pc in body["peer_connections"]}
    assert set(pcs) == {"caller", "cs"} and all(pc["kind"] == "agent" for pc in pcs.values())
    call = console_client.server.app[MANAGER].get(call_id).call  # type: ignore[union-attr]
    for role, pc in pcs.items():
        assert pc["local"]["type"] == "offer" and pc["remote"]["type"] == "answer"
        assert pc["local"]["sdp"] == re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:***", call.legs[role].offer_sdp)
        for real in re.findall(r"a=ice-pwd:(\S+)", call.legs[role].offer_sdp + call.legs[role].answer_sdp):
            assert real not in text
        ex = pc["explained"]
        assert [m["kind"] for m in ex["media"]] == ["audio", "application"]
        assert ex["media"][0]["codecs"][0]["name"].lower() == "opus"
        assert ex["warnings"] == [] and ex["counterpart"]["warnings"] == []
        st = pc["states"]
        assert (st["connection"], st["ice_gathering"], st["signaling"]) == ("connected", "complete", "stable")
        assert list(st["dtls"].values()) == ["connected"]
        steps = [(e["layer"], e["state"]) for e in pc["timeline"]]
        assert steps.index(("ice_gathering", "complete")) < steps.index(("connection", "connected"))
        assert rows_by_type(pc["stats"])["transport-sent"]["bytes"] > 0

    # Stats now, then again once the caller has answered the CS greeting (seconds later): bitrates from the two.
    first = (await (await console_client.get(f"/api/calls/{call_id}/stats")).json())["stats"]
    await wait_for(
        console_client, call_id, "turn", lambda t: t.get("speaker") == "caller" and t.get("kind", "said") == "said"
    )
    second = (await (await console_client.get(f"/api/calls/{call_id}/stats")).json())["stats"]
    for role in ("caller", "cs"):
        before, after = rows_by_type(first[role]), rows_by_type(second[role])
        assert after["outbound-rtp"]["packets"] > before["outbound-rtp"]["packets"]
        assert after["inbound-rtp"]["packets"] > before["inbound-rtp"]["packets"]
        assert after["outbound-rtp"]["kbps"] > 0 and after["transport-received"]["kbps"] > 0
        assert after["inbound-rtp"]["pps"] > 0

    resp = await console_client.get(f"/api/calls/{call_id}/debug?download=1")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{call_id}-debug.json"'
    assert len((await resp.json())["peer_connections"][0]["stats_history"]) >= 2

    assert (await console_client.post(f"/api/calls/{call_id}/hangup")).status == 202
    await wait_for(console_client, call_id, "ended")
    body = await (await console_client.get(f"/api/calls/{call_id}/debug")).json()
    assert body["state"] == "ended"
    for pc in body["peer_connections"]:
        assert pc["closed"] and pc["states"]["connection"] == "closed"
        assert pc["timeline"][-1]["t"] >= pc["timeline"][0]["t"]
        kept = rows_by_type(pc["stats"])  # the snapshot taken just before the peer connection closed
        assert kept["outbound-rtp"]["packets"] >= rows_by_type(second[pc["name"]])["outbound-rtp"]["packets"]
        assert pc["local"]["sdp"].startswith("v=0") and pc["explained"]["media"]
    assert body["turn_latency"]["rows"] and all(r["latency_s"] >= 0 for r in body["turn_latency"]["rows"])
    stats = await (await console_client.get(f"/api/calls/{call_id}/stats")).json()
    assert set(stats["stats"]) == {"caller", "cs"} and stats["states"]["cs"]["connection"] == "closed"


async def test_unknown_call_is_a_json_404(console_client: TestClient[Any, Any]) -> None:
    for path in ("/api/calls/nope/debug", "/api/calls/nope/stats"):
        resp = await console_client.get(path)
        assert resp.status == 404
        assert "no call with id 'nope'" in (await resp.json())["error"]["message"]

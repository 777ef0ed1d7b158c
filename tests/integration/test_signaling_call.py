"""The server with the real Call against the embedded emulator.

A demo call started over REST, watched over the event WebSocket from greeting to the caller's hang-up, then
inspected; and an operator hang-up mid-call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.integration.test_signaling_api import error_of
from voicebridge.config import EMULATOR_KEY

pytestmark = pytest.mark.integration
CALL_TIMEOUT = 60.0  # the demo call takes ~30 s of speech; pytest's own limit is 120 s


async def watch(
    console_client: TestClient[Any, Any], call_id: str, until_kind: str = "ended", until: Any = None
) -> list[dict[str, Any]]:
    """Messages of the call's event socket until one of `until_kind` (and matching `until`) arrives."""
    ws = await console_client.ws_connect(f"/api/calls/{call_id}/events")
    seen: list[dict[str, Any]] = []

    async def read() -> list[dict[str, Any]]:
        while True:
            msg = await ws.receive_json()
            seen.append(msg)
            if msg["kind"] == until_kind and (until is None or until(msg["data"])):
                return seen

    try:
        return await asyncio.wait_for(read(), CALL_TIMEOUT)
    except TimeoutError:
        turns = [(m["data"]["speaker"], m["data"]["text"]) for m in seen if m["kind"] == "turn"]
        raise AssertionError(
            f"no {until_kind!r} within {CALL_TIMEOUT} s; turns so far: {turns[:8]}"
        ) from None
    finally:
        await ws.close()


async def test_demo_call_from_greeting_to_caller_hangup(console_client: TestClient[Any, Any]) -> None:
    resp = await console_client.post("/api/calls", json={"scenario": "late_order"})
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    seen = await watch(console_client, call_id)
    assert seen[-1]["data"]["end_reason"] == "caller_hangup"
    kinds = {m["kind"] for m in seen}
    assert kinds >= {"hello", "state", "event", "turn", "tool_call", "ended"}
    states = [m["data"] for m in seen if m["kind"] == "state"]
    assert states.index("live") < states.index("ending") < states.index("ended")
    legs = {m["data"]["leg"] for m in seen if m["kind"] == "event"}
    assert legs == {"caller", "cs"}
    detail = await (await console_client.get(f"/api/calls/{call_id}")).json()
    assert (detail["state"], detail["end_reason"]) == ("ended", "caller_hangup")
    assert [t["name"] for t in detail["tool_calls"] if t.get("leg") == "cs"] == [
        "lookup_order",
        "issue_refund",
    ]
    speakers = [t["speaker"] for t in detail["turns"]]
    assert "caller" in speakers and "cs" in speakers
    assert EMULATOR_KEY not in await (await console_client.get(f"/api/calls/{call_id}")).text()

    # Its timeline figure, drawn from the same summary: both parties spoke, both tools ran; the same figure as the
    # call's own timeline.svg next to its summary.json.
    resp = await console_client.get(f"/api/calls/{call_id}/timeline.svg")
    assert resp.status == 200 and resp.content_type == "image/svg+xml"
    svg = await resp.text()
    assert 'class="speech caller"' in svg and 'class="speech cs"' in svg
    assert 'data-name="lookup_order"' in svg and 'data-name="issue_refund"' in svg
    assert svg == (Path(detail["out_dir"]) / "timeline.svg").read_text()
    assert "no call" in await error_of(await console_client.get("/api/calls/call_nope/timeline.svg"), 404)

    # Both legs' SDP, explained: Opus, the data channel, loopback candidates, no classic mistakes.
    sdp = await (await console_client.get(f"/api/calls/{call_id}/sdp")).json()
    assert {leg["role"] for leg in sdp["legs"]} == {"caller", "cs"}
    for leg in sdp["legs"]:
        ex = leg["explained"]
        assert leg["offer"].startswith("v=0") and "a=ice-pwd:***" in leg["offer"]
        assert ex["role"] == "offer" and ex["counterpart"]["role"] == "answer"
        kinds = [m["kind"] for m in ex["media"]]
        assert kinds == ["audio", "application"]
        assert ex["media"][0]["codecs"][0]["name"].lower() == "opus"
        assert ex["warnings"] == [], ex["warnings"]


async def test_operator_hangup_mid_call(console_client: TestClient[Any, Any]) -> None:
    call_id = (await (await console_client.post("/api/calls", json={"scenario": "late_order"})).json())["id"]
    await watch(console_client, call_id, "state", lambda s: s == "live")
    resp = await console_client.post(f"/api/calls/{call_id}/hangup")
    assert resp.status == 202
    seen = await watch(console_client, call_id)
    assert seen[-1]["data"]["end_reason"] == "operator_hangup"
    listed = await (await console_client.get("/api/calls")).json()
    assert listed["live"] == 0 and listed["calls"][0]["end_reason"] == "operator_hangup"

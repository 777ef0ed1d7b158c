"""A WebSocket message over a server's limit (16 MB here) closes the socket the RFC 6455 way on every WebSocket of
both servers: the client reads a close frame with 1009 and a reason naming the limit, instead of a connection
reset in the middle of its send. This also pins the two aiohttp internals edge/websocket.py relies on.

The server lingers (at most LINGER_S) until the client, done sending, has read the close frame and closed. A loaded
machine may take its time sending 16 MB: here the linger is far longer than that, so what is tested is the close
the client reads, not whether it finished within the product's 5 s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.conftest import Client
from tests.integration.test_signaling_api import FakeCall
from voicebridge.config import Settings
from voicebridge.edge import websocket as edge_websocket
from voicebridge.emulator.handlers import MAX_EVENT_BYTES
from voicebridge.emulator.server import Emulator
from voicebridge.signaling.app import create_app
from voicebridge.signaling.events_ws import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.integration
HUGE = b"x" * (16 * 1024 * 1024)
AUTH = {"Authorization": "Bearer sk-test"}


@pytest.fixture(autouse=True)
def patient_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_websocket, "LINGER_S", 120.0)  # ends as soon as the client closes, as it does here


async def _close_after_huge_message(ws: aiohttp.ClientWebSocketResponse) -> tuple[int, str]:
    """Send the huge message, then read until the server's close frame; its code and reason."""
    await ws.send_bytes(HUGE)  # no ConnectionResetError: the server reads what we send until we close
    while True:
        msg = await asyncio.wait_for(ws.receive(), 30)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
            break
    assert msg.type == WSMsgType.CLOSE, (msg.type, msg.data, ws.close_code)
    return int(msg.data), str(msg.extra)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    FakeCall.made = []
    settings = Settings(base_url="http://127.0.0.1:1/v1", api_key="sk-test", artifacts_dir=tmp_path)
    async with TestClient(TestServer(await create_app(settings, call_factory=FakeCall))) as client:
        yield client


async def test_the_events_websocket_closes_1009_with_a_reason(console: TestClient[Any, Any]) -> None:
    assert (await console.post("/api/calls", json={"scenario": "late_order"})).status == 201
    path = f"/api/calls/{FakeCall.made[0].id}/events"
    async with console.ws_connect(path) as ws:
        assert (await ws.receive_json())["kind"] == "hello"
        code, reason = await _close_after_huge_message(ws)
    assert code == 1009 and f"{MAX_MESSAGE_BYTES}-byte limit" in reason
    async with console.ws_connect(path) as ws:  # and the server goes on
        assert (await ws.receive_json())["kind"] == "hello"


async def test_the_emulator_websocket_session_closes_1009_with_a_reason(emulator: Emulator) -> None:
    url = emulator.base_url.replace("http://", "ws://") + "/realtime?model=gpt-realtime"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers=AUTH) as ws:
            assert (await ws.receive_json())["type"] == "session.created"
            code, reason = await _close_after_huge_message(ws)
        assert code == 1009 and f"{MAX_EVENT_BYTES}-byte limit" in reason
        async with http.ws_connect(url, headers=AUTH) as ws:
            assert (await ws.receive_json())["type"] == "session.created"


async def test_the_emulator_sideband_closes_1009_with_a_reason(emulator: Emulator, client: Client) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emulator.base_url}/realtime/calls",
            data=await client.offer(),
            headers={**AUTH, "Content-Type": "application/sdp"},
        ) as r,
    ):
        assert r.status == 201, await r.text()
        call_id = r.headers["Location"].rsplit("/", 1)[-1]
        sideband = emulator.base_url.replace("http://", "ws://") + f"/realtime?call_id={call_id}"
        async with http.ws_connect(sideband, headers=AUTH) as ws:
            code, reason = await _close_after_huge_message(ws)
    assert code == 1009 and f"{MAX_EVENT_BYTES}-byte limit" in reason

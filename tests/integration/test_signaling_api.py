"""The REST API and the event WebSocket, over real HTTP (aiohttp TestServer/TestClient), with a scripted call.

`FakeCall` speaks the Call interface (pyee events "state", "event", "turn", "tool_call", "ended"; start,
hangup, wait_ended, summary) without WebRTC, so these tests pin the server's behaviour: status codes, JSON
errors, limits, backlog-then-live streaming and key hygiene. tests/integration/test_signaling_call.py runs
the real Call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pyee.asyncio import AsyncIOEventEmitter

from tests.summaries import line, make_summary, tool_call
from voicebridge.config import Settings
from voicebridge.results import CallSummary, ToolCallRecord, TranscriptLine
from voicebridge.scenarios.model import Scenario, load_scenario
from voicebridge.signaling.app import create_app
from voicebridge.signaling.http import MANAGER

pytestmark = pytest.mark.integration
SECRET = "sk-" + "test-SECRET-never-shown-0123456789"  # split: no key-shaped literal in the source
TIMEOUT = 5.0


class FakeCall(AsyncIOEventEmitter):
    """A call that goes live when told to, says one line per `speak()` and ends on hangup."""

    made: ClassVar[list[FakeCall]] = []

    def __init__(self, scenario: Scenario, leak: bool = False) -> None:
        super().__init__()
        self.id = f"call_fake_{len(FakeCall.made)}"
        self.scenario = scenario
        self.state = "connecting"
        self.end_reason: str | None = None
        self.ended_by: str | None = None
        self.relay = None
        self.turns: list[TranscriptLine] = []
        self.tool_calls: list[ToolCallRecord] = []
        self.go_live = asyncio.Event()
        self._ended = asyncio.Event()
        self.leak = leak
        FakeCall.made.append(self)

    async def start(self) -> None:
        self.emit("state", "connecting")
        await self.go_live.wait()
        self.state = "live"
        self.emit("state", "live")

    def speak(self, leg: str, text: str) -> None:
        self.emit(
            "event",
            {
                "t": 0.1,
                "leg": leg,
                "direction": "in",
                "event": {"type": "response.output_audio_transcript.done", "transcript": text},
            },
        )
        turn = TranscriptLine.model_validate(line(leg, text, 0.0, 1.0))
        self.turns.append(turn)
        self.emit("turn", turn)

    def call_tool(self) -> None:
        tc = ToolCallRecord.model_validate(tool_call("cs", "lookup_order", arguments={"order_id": 4217}))
        self.tool_calls.append(tc)
        self.emit("tool_call", tc)

    async def hangup(self, reason: Any = "operator_hangup", by: str = "operator") -> None:
        self.state = "ending"
        self.emit("state", "ending")
        self.end_reason, self.ended_by, self.state = reason, by, "ended"
        self.emit("state", "ended")
        self._ended.set()
        self.emit("ended", self.summary())

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ended.wait(), timeout_s)

    def summary(self) -> CallSummary:
        return make_summary(
            call_id=self.id,
            scenario=self.scenario.name,
            state=self.state,
            end_reason=self.end_reason,
            ended_by=self.ended_by,
            duration_s=1.0,
            turns=list(self.turns),
            tool_calls=list(self.tool_calls),
            error=f"Authorization: Bearer {SECRET}" if self.leak else None,
        )


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    FakeCall.made = []
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    (web_dir / "index.html").write_text("<!doctype html><title>voicebridge console</title>")
    (web_dir / "app.js").write_text("export {};")
    settings = Settings(base_url="http://127.0.0.1:1/v1", api_key=SECRET, artifacts_dir=tmp_path)
    app = await create_app(
        settings,
        call_factory=lambda s: FakeCall(s, leak="leak" in s.name),
        web_dir=web_dir,
        max_live_calls=3,
        max_body_bytes=2048,
    )
    async with TestClient(TestServer(app)) as c:
        yield c


async def error_of(resp: aiohttp.ClientResponse, status: int) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return str(body["error"]["message"])


async def start_call(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.post("/api/calls", json={"scenario": "late_order"})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert resp.headers["Location"] == f"/api/calls/{body['id']}"
    return body


async def test_start_list_inspect_and_hang_up(client: TestClient[Any, Any]) -> None:
    body = await start_call(client)
    assert body["state"] == "connecting" and body["scenario"] == "late_order"
    call = FakeCall.made[0]
    call.go_live.set()
    resp = await client.get("/api/calls")
    listed = await resp.json()
    assert [c["id"] for c in listed["calls"]] == [body["id"]] and listed["live"] == 1
    await asyncio.sleep(0)  # let the start task run: the fake has no I/O to wait on
    call.speak("cs", "Thank you for calling")
    call.call_tool()
    detail = await (await client.get(f"/api/calls/{body['id']}")).json()
    assert detail["state"] == "live"
    assert detail["turns"] == [line("cs", "Thank you for calling", 0.0, 1.0)]
    assert detail["tool_calls"][0]["name"] == "lookup_order"
    resp = await client.post(f"/api/calls/{body['id']}/hangup")
    assert resp.status == 202
    await call.wait_ended(TIMEOUT)
    detail = await (await client.get(f"/api/calls/{body['id']}")).json()
    assert (detail["state"], detail["end_reason"], detail["ended_by"]) == (
        "ended",
        "operator_hangup",
        "operator",
    )
    assert await error_of(await client.post(f"/api/calls/{body['id']}/hangup"), 409)
    listed = await (await client.get("/api/calls")).json()
    assert listed["live"] == 0 and listed["calls"][0]["end_reason"] == "operator_hangup"


async def test_events_websocket_backlog_then_live_then_close(client: TestClient[Any, Any]) -> None:
    body = await start_call(client)
    call = FakeCall.made[0]
    call.go_live.set()
    call.speak("cs", "early line")  # before anyone watches: must arrive from the backlog
    ws = await client.ws_connect(f"/api/calls/{body['id']}/events")
    hello = await ws.receive_json(timeout=TIMEOUT)
    assert hello["kind"] == "hello" and hello["data"]["call_id"] == body["id"]
    seen: list[dict[str, Any]] = []

    async def until(pred: Any) -> dict[str, Any]:
        while True:
            msg = await ws.receive_json(timeout=TIMEOUT)
            seen.append(msg)
            if pred(msg):
                return msg

    await until(lambda m: m["kind"] == "turn" and m["data"]["text"] == "early line")
    call.speak("caller", "live line")
    await until(lambda m: m["kind"] == "turn" and m["data"]["text"] == "live line")
    await client.post(f"/api/calls/{body['id']}/hangup")
    ended = await until(lambda m: m["kind"] == "ended")
    assert ended["data"]["end_reason"] == "operator_hangup"
    closed = await ws.receive(timeout=TIMEOUT)
    assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    seqs = [m["seq"] for m in seen]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "no message lost order or repeated"
    assert {m["kind"] for m in seen} >= {"state", "event", "turn", "ended"}
    await ws.close()

    # A watcher that arrives after the end gets the whole story, then the close; ?since= skips what it has.
    ws2 = await client.ws_connect(f"/api/calls/{body['id']}/events?since={seqs[2]}")
    replay = []
    async for msg in ws2:
        replay.append(json.loads(msg.data))
    assert [m["seq"] for m in replay[1:]] == [s for s in seqs if s > seqs[2]]


async def test_watcher_leaving_does_not_disturb_the_call(client: TestClient[Any, Any]) -> None:
    body = await start_call(client)
    call = FakeCall.made[0]
    ws = await client.ws_connect(f"/api/calls/{body['id']}/events")
    await ws.receive_json(timeout=TIMEOUT)
    await ws.close()
    call.go_live.set()
    call.speak("cs", "still talking")
    detail = await (await client.get(f"/api/calls/{body['id']}")).json()
    assert detail["turns"][-1]["text"] == "still talking"


async def test_scenarios_health_and_static(client: TestClient[Any, Any]) -> None:
    sc = await (await client.get("/api/scenarios")).json()
    late = next(s for s in sc["scenarios"] if s["name"] == "late_order")
    assert late["first_speaker"] == "cs" and late["title"]
    health = await (await client.get("/healthz")).json()
    assert health["ok"] is True and health["live_calls"] == 0
    index = await client.get("/")
    assert index.status == 200 and "voicebridge console" in await index.text()
    js = await client.get("/app.js")
    assert js.status == 200 and "javascript" in js.content_type
    assert (await client.get("/../secret")).status in (403, 404)


@pytest.mark.parametrize(
    ("data", "headers", "status", "fragment"),
    [
        ("{not json", {"Content-Type": "application/json"}, 400, "not valid JSON"),
        ("[1, 2]", {"Content-Type": "application/json"}, 400, "must be a JSON object"),
        ('{"scenario": 7}', {"Content-Type": "application/json"}, 400,
         "invalid request body: scenario: expected a string, got 7 (an integer)"),
        ('{"scenario": "nope"}', {"Content-Type": "application/json"}, 422, "unknown scenario 'nope'"),
        ('{"scenario": "../../etc/passwd"}', {"Content-Type": "application/json"}, 422, "unknown scenario"),
        ('{"scenario": "late_order", "x": 1}', {"Content-Type": "application/json"}, 400,
         "invalid request body: x: unknown field (known: scenario)"),
        ("scenario=late_order", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "send JSON"),
        ('{"scenario": "' + "a" * 4000 + '"}', {"Content-Type": "application/json"}, 413, "2048-byte limit"),
    ],
)
async def test_bad_start_requests(
    client: TestClient[Any, Any], data: str, headers: dict[str, str], status: int, fragment: str
) -> None:
    resp = await client.post("/api/calls", data=data, headers=headers)
    assert fragment in await error_of(resp, status)
    assert FakeCall.made == []


async def test_unknown_call_and_route_errors_are_json(client: TestClient[Any, Any]) -> None:
    assert "no call with id 'call_nope'" in await error_of(await client.get("/api/calls/call_nope"), 404)
    assert "no call" in await error_of(await client.post("/api/calls/call_nope/hangup"), 404)
    assert "no call" in await error_of(await client.get("/api/calls/call_nope/events"), 404)
    assert "no call" in await error_of(await client.get("/api/calls/call_nope/sdp"), 404)
    assert await error_of(await client.get("/api/nothing"), 404)
    assert await error_of(await client.delete("/api/calls"), 405)
    body = await start_call(client)
    bad = await client.get(f"/api/calls/{body['id']}/events?since=x")
    assert "`since`" in await error_of(bad, 400)


async def test_too_many_live_calls(client: TestClient[Any, Any]) -> None:
    for _ in range(3):
        await start_call(client)
    resp = await client.post("/api/calls", json={"scenario": "late_order"})
    assert "3 calls are live" in await error_of(resp, 429)


async def test_api_key_never_in_a_response(client: TestClient[Any, Any], tmp_path: Path) -> None:
    # A call whose summary (wrongly) carries the key: the server must redact it on every path out.
    leaky = load_scenario("late_order").model_copy(update={"name": "leaky"})
    rec = client.app[MANAGER].start(leaky)
    texts = [
        await (await client.get(p)).text()
        for p in ("/api/calls", f"/api/calls/{rec.call.id}", "/api/scenarios", "/healthz", "/")
    ]
    ws = await client.ws_connect(f"/api/calls/{rec.call.id}/events")
    await ws.receive_str(timeout=TIMEOUT)
    await rec.call.hangup()
    async for msg in ws:
        texts.append(msg.data)
    joined = "\n".join(texts)
    assert "[redacted]" in joined and SECRET not in joined

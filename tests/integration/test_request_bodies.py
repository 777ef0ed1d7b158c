"""Every JSON body of the signaling API against its pydantic model (signaling/bodies.py), over real HTTP: each
mistake (unknown field, wrong type, bad choice, out-of-range number, missing field) is a 400 whose message names
the field, what was expected and what was given, pinned here word for word; hostile JSON is still refused by the
bounded reader before any model sees it; and every POST route of the router has a model, so a new route cannot
slip past. The call is tests/integration/test_signaling_api.py's FakeCall: bodies are checked before the call
matters (a good join body reaches the FakeCall's 501, past validation)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.test_dns_rebinding import routes
from tests.integration.test_signaling_api import FakeCall, error_of
from voicebridge.config import Settings
from voicebridge.signaling.app import create_app
from voicebridge.signaling.bodies import BODIES, NoFields

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"
Client = TestClient[Any, Any]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    FakeCall.made = []
    settings = Settings(base_url="http://127.0.0.1:1/v1", api_key="sk-test", artifacts_dir=tmp_path)
    app = await create_app(settings, call_factory=FakeCall, max_live_calls=3, max_body_bytes=2048)
    async with TestClient(TestServer(app)) as c:
        yield c


async def live_call(client: Client) -> str:
    resp = await client.post("/api/calls", json={})  # {} is the defaults: the demo scenario
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def token(client: Client, call_id: str, role: str) -> dict[str, str]:
    resp = await client.post(f"/api/calls/{call_id}/tokens", json={"role": role})
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


BAD = "invalid request body: "

# (route, role of the join token sent or None, body, the whole error message)
CASES: list[tuple[str, str | None, Any, str]] = [
    ("calls", None, {"scenario": "late_order", "scenari": "x"}, BAD + "scenari: unknown field (known: scenario)"),
    ("calls", None, {"scenario": 7}, BAD + "scenario: expected a string, got 7 (an integer)"),
    ("calls", None, {"scenario": ["late_order"]}, BAD + "scenario: expected a string, got an array"),
    ("calls", None, {"scenario": ""}, BAD + "scenario: expected at least 1 character, got '' (a string)"),
    ("calls", None, {"scenario": "x" * 65},
     BAD + f"scenario: expected at most 64 characters, got '{'x' * 36}... (a string)"),
    ("tokens", None, {}, BAD + "role: required but missing (expected 'listen' or 'takeover')"),
    ("tokens", None, {"role": "admin"}, BAD + "role: expected 'listen' or 'takeover', got 'admin' (a string)"),
    ("tokens", None, {"role": "listen", "ttl": 60}, BAD + "ttl: unknown field (known: role, ttl_s)"),
    ("tokens", None, {"role": "listen", "ttl_s": "60"}, BAD + "ttl_s: expected a number, got '60' (a string)"),
    ("tokens", None, {"role": "listen", "ttl_s": True}, BAD + "ttl_s: expected a number, got true (a boolean)"),
    ("tokens", None, {"role": "listen", "ttl_s": 0.5}, BAD + "ttl_s: expected a number at least 1, got 0.5 (a number)"),
    ("tokens", None, {"role": "listen", "ttl_s": 10**9},
     BAD + "ttl_s: expected a number at most 86400, got 1000000000 (an integer)"),
    ("tokens", None, {"role": 1, "ttl_s": -1, "x": 0},
     BAD + "role: expected 'listen' or 'takeover', got 1 (an integer); ttl_s: expected a number at least 1, "
     "got -1 (an integer); x: unknown field (known: role, ttl_s)"),
    ("join", "listen", {}, BAD + "sdp: required but missing"),
    ("join", "listen", {"type": "answer", "sdp": "v=0"}, BAD + "type: expected 'offer', got 'answer' (a string)"),
    ("join", "listen", {"sdp": 5}, BAD + "sdp: expected a string, got 5 (an integer)"),
    ("join", "listen", {"sdp": ""}, BAD + "sdp: expected at least 1 character, got '' (a string)"),
    ("join", "listen", {"sdp": "v=0", "candidates": []},
     BAD + "candidates: unknown field (known: sdp, type)"),
    ("leave", "listen", {}, BAD + "participant_id: required but missing"),
    ("leave", "listen", {"participant_id": 3}, BAD + "participant_id: expected a string, got 3 (an integer)"),
    ("leave", "listen", {"participant_id": "p_1", "reason": "bye"},
     BAD + "reason: unknown field (known: participant_id)"),
    ("handback", "takeover", {"reason": "done"}, BAD + "reason: unknown field (none are accepted here)"),
    ("hangup", "takeover", {"reason": "done"}, BAD + "reason: unknown field (none are accepted here)"),
    ("hangup", None, {"reason": "done"}, BAD + "reason: unknown field (none are accepted here)"),
    ("hangup", None, [], "request body must be a JSON object, got an array"),
    ("tokens", None, "listen", "request body must be a JSON object, got a string"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "role", "body", "message"), CASES)
async def test_each_mistake_is_a_400_naming_the_field_the_expectation_and_the_value(
    client: Client, route: str, role: str | None, body: Any, message: str
) -> None:
    call_id = await live_call(client)
    path = "/api/calls" if route == "calls" else f"/api/calls/{call_id}/{route}"
    headers = await token(client, call_id, role) if role else {}
    resp = await client.post(path, data=json.dumps(body), headers={**headers, "Content-Type": "application/json"})
    assert await error_of(resp, 400) == message
    assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert len(FakeCall.made) == 1 and FakeCall.made[0].state == "connecting"  # nothing started, nothing ended


async def test_good_bodies_get_past_validation(client: Client) -> None:
    call_id = await live_call(client)
    assert (await client.post(f"/api/calls/{call_id}/tokens", json={"role": "listen", "ttl_s": 1})).status == 201
    listen = await token(client, call_id, "listen")
    join = await client.post(f"/api/calls/{call_id}/join", json={"sdp": "v=0"}, headers=listen)
    assert (await join.json())["error"]["type"] == "not_supported"  # the FakeCall's 501: the body was fine
    leave = await client.post(f"/api/calls/{call_id}/leave", json={"participant_id": "p_nobody"}, headers=listen)
    assert "no participant 'p_nobody'" in await error_of(leave, 404)
    takeover = await token(client, call_id, "takeover")
    assert "nobody has taken over" in await error_of(
        await client.post(f"/api/calls/{call_id}/handback", json={}, headers=takeover), 409
    )
    resp = await client.post(f"/api/calls/{call_id}/hangup", data=b"", headers=takeover)  # empty: as {}
    assert resp.status == 202 and FakeCall.made[0].end_reason == "human_hangup"


async def test_hostile_json_is_refused_before_any_model(client: Client) -> None:
    call_id = await live_call(client)
    cases = [
        (f"/api/calls/{call_id}/tokens", b'{"role": "listen", "ttl_s": ' + b"9" * 500 + b"}", "500 digits"),
        (f"/api/calls/{call_id}/tokens", b'{"role": ' + b"[" * 40 + b"]" * 40 + b"}", "levels deep"),
        ("/api/calls", b'{"scenario": NaN}', "not a JSON value"),
        (f"/api/calls/{call_id}/hangup", b"{", "not valid JSON"),
    ]
    for path, raw, why in cases:
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert why in await error_of(resp, 400), path
    resp = await client.post("/api/calls", data=b'{"scenario": "' + b"x" * 3000 + b'"}')
    assert "2048-byte limit" in await error_of(resp, 413)
    assert len(FakeCall.made) == 1 and FakeCall.made[0].state == "connecting"


async def test_every_post_route_has_a_body_model(client: Client) -> None:
    posts = {path for method, path in routes(client.app) if method == "POST" and path.startswith("/api/")}
    modelled = {re.sub(r"\{[^}]+\}", "x", route.split(" ", 1)[1]) for route in BODIES}
    assert posts == modelled
    assert all(route.startswith("POST ") for route in BODIES)


async def test_the_schema_route_serves_each_body(client: Client) -> None:
    resp = await client.get("/api/schema")
    assert resp.status == 200
    bodies = (await resp.json())["bodies"]
    assert set(bodies) == set(BODIES)
    for schema in bodies.values():
        assert schema["type"] == "object" and schema["additionalProperties"] is False
    token_body = bodies["POST /api/calls/{call_id}/tokens"]
    assert token_body["required"] == ["role"] and token_body["properties"]["role"]["enum"] == ["listen", "takeover"]
    ttl = token_body["properties"]["ttl_s"]["anyOf"][0]
    assert (ttl["minimum"], ttl["maximum"]) == (1.0, 86400.0)


def test_the_readme_lists_each_body_and_its_fields() -> None:
    text = README.read_text()
    for route, model in BODIES.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{route}`")), None)
        if model is NoFields:
            row = next(line for line in text.splitlines() if line.startswith("| `POST /api/calls/{call_id}/hangup`"))
            assert route.rsplit("/", 1)[1] in row, route
            continue
        assert row is not None, f"README: no row for {route}"
        for field in model.model_fields:
            assert f"`{field}`" in row, (route, field)

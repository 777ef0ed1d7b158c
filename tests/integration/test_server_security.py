"""The signaling server's guards over real HTTP: the management token, per-IP rate limits, CORS, /readyz and
refusing new work while shutting down (the scripted FakeCall of test_signaling_api stands in for a call)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.test_signaling_api import FakeCall, error_of
from voicebridge.config import Settings
from voicebridge.signaling.app import create_app
from voicebridge.signaling.http import MANAGER
from voicebridge.signaling.lifecycle import LIFECYCLE, backend_reachable, graceful_shutdown
from voicebridge.signaling.security import (
    ADMIN_TOKEN_ENV,
    RateLimit,
    SecurityConfigError,
    SecurityPolicy,
    TokenBuckets,
    is_loopback_host,
    normalize_origin,
    policy_for_serve,
)

pytestmark = pytest.mark.integration
ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PARTNER = "https://console.example.com"


async def _client(
    tmp_path: Path, policy: SecurityPolicy, base_url: str = "http://127.0.0.1:1/v1"
) -> TestClient[Any, Any]:
    FakeCall.made = []
    settings = Settings(base_url=base_url, api_key="sk-test", artifacts_dir=tmp_path)
    app = await create_app(settings, call_factory=lambda s: FakeCall(s), max_live_calls=50, security=policy)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    c = await _client(tmp_path, SecurityPolicy(admin_token=ADMIN, allowed_origins=frozenset({PARTNER})))
    try:
        yield c
    finally:
        await c.close()


async def test_management_api_needs_the_admin_token(guarded: TestClient[Any, Any]) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {ADMIN}"}):
        resp = await guarded.get("/api/calls", headers=headers)
        assert "VOICEBRIDGE_ADMIN_TOKEN" in await error_of(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await guarded.post("/api/calls", json={"scenario": "late_order"})
    await error_of(resp, 401)
    assert FakeCall.made == []  # refused before anything was created
    assert (await guarded.get("/healthz")).status == 200  # liveness stays open for probes

    resp = await guarded.post("/api/calls", json={"scenario": "late_order"}, headers=AUTH)
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    assert (await guarded.get("/api/calls", headers=AUTH)).status == 200
    await error_of(await guarded.get(f"/api/calls/{call_id}/timeline.svg"), 401)  # a read of the call like the rest
    resp = await guarded.get(f"/api/calls/{call_id}/timeline.svg", headers=AUTH)
    assert resp.status == 200 and (await resp.text()).startswith("<svg ")
    await error_of(await guarded.post(f"/api/calls/{call_id}/tokens", json={"role": "listen"}), 401)

    # The events WebSocket takes the token as ?access_token= (browsers cannot set WebSocket headers).
    await error_of(await guarded.get(f"/api/calls/{call_id}/events"), 401)
    async with guarded.ws_connect(f"/api/calls/{call_id}/events?access_token={ADMIN}") as ws:
        hello = await asyncio.wait_for(ws.receive_json(), 5)
        assert hello["kind"] == "hello" and hello["data"]["call_id"] == call_id

    # A join-token route lets another bearer through to join.py's own check (which refuses a forged one).
    resp = await guarded.post(f"/api/calls/{call_id}/join", headers={"Authorization": "Bearer forged.token"})
    message = await error_of(resp, 401)
    assert "VOICEBRIDGE_ADMIN_TOKEN" not in message

    # The operator's hang-up with the admin token stays an operator hang-up (not mistaken for a join token).
    FakeCall.made[0].go_live.set()
    resp = await guarded.post(f"/api/calls/{call_id}/hangup", headers=AUTH)
    assert resp.status == 202, await resp.text()
    await FakeCall.made[0].wait_ended(5)
    assert FakeCall.made[0].end_reason == "operator_hangup"


async def test_metrics_need_the_admin_token_when_the_server_has_one(
    guarded: TestClient[Any, Any], tmp_path: Path
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
        resp = await guarded.get("/metrics", headers=headers)
        assert "VOICEBRIDGE_ADMIN_TOKEN" in await error_of(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await guarded.get("/metrics", headers=AUTH)  # what Prometheus sends with `authorization:` set
    assert resp.status == 200 and "voicebridge_" in await resp.text()
    open_server = await _client(tmp_path, SecurityPolicy())  # loopback without a token: open, as before
    try:
        resp = await open_server.get("/metrics")
        assert resp.status == 200 and "voicebridge_" in await resp.text()
    finally:
        await open_server.close()


def test_serve_policy_refuses_an_open_management_api_beyond_loopback() -> None:
    with pytest.raises(SecurityConfigError, match=ADMIN_TOKEN_ENV):
        policy_for_serve("0.0.0.0", {})
    with pytest.raises(SecurityConfigError, match="too short"):
        policy_for_serve("0.0.0.0", {ADMIN_TOKEN_ENV: "short"})
    assert policy_for_serve("0.0.0.0", {ADMIN_TOKEN_ENV: ADMIN}).admin_token == ADMIN
    assert policy_for_serve("127.0.0.1", {}).admin_token is None
    assert policy_for_serve("::1", {ADMIN_TOKEN_ENV: ADMIN}).admin_token == ADMIN  # set: required on loopback too
    with pytest.raises(SecurityConfigError, match="not an origin"):
        policy_for_serve("127.0.0.1", {}, ["*"])
    with pytest.raises(SecurityConfigError, match="not an origin"):
        policy_for_serve("127.0.0.1", {}, ["https://x.example/path"])
    assert policy_for_serve("127.0.0.1", {}, ["HTTPS://X.example:8443"]).allowed_origins == {"https://x.example:8443"}
    assert [is_loopback_host(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback_host(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com")] == [False] * 4
    assert normalize_origin("null") is None and normalize_origin("http://a.b:99999") is None


def test_serve_process_will_not_start_without_a_token_beyond_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicebridge.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--artifacts",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert ADMIN_TOKEN_ENV in proc.stderr and "beyond loopback" in proc.stderr
    assert "console at" not in proc.stdout  # it never listened


def test_token_buckets_refill_per_client_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    buckets = TokenBuckets(RateLimit(burst=2, per_s=0.5), clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)  # empty: one token in 1 / 0.5 s
    assert buckets.take("b") == 0.0  # another client has its own bucket
    now[0] = 2.0
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0
    monkeypatch.setattr("voicebridge.signaling.security.MAX_CLIENTS", 100)
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
    assert len(buckets) == 100
    with pytest.raises(SecurityConfigError):
        RateLimit(burst=0, per_s=1)


async def test_call_creation_and_joins_are_rate_limited(tmp_path: Path) -> None:
    policy = SecurityPolicy(call_rate=RateLimit(burst=2, per_s=0.01), join_rate=RateLimit(burst=1, per_s=0.01))
    client = await _client(tmp_path, policy)
    try:
        for _ in range(2):
            assert (await client.post("/api/calls", json={"scenario": "late_order"})).status == 201
        resp = await client.post("/api/calls", json={"scenario": "late_order"})
        assert "too many calls started" in await error_of(resp, 429)
        assert int(resp.headers["Retry-After"]) >= 1
        assert len(FakeCall.made) == 2
        assert (await client.get("/api/calls")).status == 200  # reading is not limited

        call_id = FakeCall.made[0].id
        first = await client.post(
            f"/api/calls/{call_id}/join", data=b"v=0", headers={"Content-Type": "application/sdp"}
        )
        assert first.status != 429
        again = await client.post(
            f"/api/calls/{call_id}/join", data=b"v=0", headers={"Content-Type": "application/sdp"}
        )
        assert "too many joins" in await error_of(again, 429)
    finally:
        await client.close()


async def test_cors_is_same_origin_or_allow_listed_never_a_wildcard(guarded: TestClient[Any, Any]) -> None:
    own = f"http://127.0.0.1:{guarded.port}"
    resp = await guarded.get("/api/calls", headers={**AUTH, "Origin": own})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers

    for evil in ("https://evil.example", "null", "http://127.0.0.1:1", "*"):
        resp = await guarded.post("/api/calls", json={"scenario": "late_order"}, headers={**AUTH, "Origin": evil})
        assert "cross-origin" in await error_of(resp, 403)
        assert "Access-Control-Allow-Origin" not in resp.headers
    assert FakeCall.made == []  # a blind cross-site POST started nothing
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await guarded.ws_connect(
            "/api/calls/x/events?access_token=" + ADMIN, headers={"Origin": "https://evil.example"}
        )
    assert info.value.status == 403

    pre = await guarded.options(
        "/api/calls",
        headers={
            "Origin": PARTNER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status == 204 and pre.headers["Access-Control-Allow-Origin"] == PARTNER
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    resp = await guarded.get("/api/calls", headers={**AUTH, "Origin": PARTNER})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == PARTNER
    assert "Origin" in resp.headers.getall("Vary")
    denied = await guarded.get("/api/calls", headers={"Origin": PARTNER})  # allowed origin, no token
    await error_of(denied, 401)
    assert denied.headers["Access-Control-Allow-Origin"] == PARTNER  # so its page can read the error


async def test_readyz_checks_the_backend_and_shutdown_refuses_new_work(tmp_path: Path) -> None:
    backend = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    client = await _client(tmp_path, SecurityPolicy(), base_url=f"http://127.0.0.1:{port}/v1")
    try:
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["ready"] is True
        backend.close()
        await backend.wait_closed()
        down = await client.get("/readyz")
        body = await down.json()
        assert down.status == 503 and "cannot connect to 127.0.0.1" in body["failing"]["realtime_backend"]

        resp = await client.post("/api/calls", json={"scenario": "late_order"})
        assert resp.status == 201
        call = FakeCall.made[0]
        call.go_live.set()
        app = client.app
        assert app is not None
        runner_closed = asyncio.Event()

        class _Runner:  # graceful_shutdown closes the runner last; the TestServer owns the real one
            async def cleanup(self) -> None:
                runner_closed.set()

        app[LIFECYCLE].shutting_down = True  # as graceful_shutdown sets it first
        refused = await client.post("/api/calls", json={"scenario": "late_order"})
        assert "shutting down" in await error_of(refused, 503) and refused.headers["Retry-After"]
        join = await client.post(f"/api/calls/{call.id}/join", data=b"v=0", headers={"Content-Type": "application/sdp"})
        await error_of(join, 503)
        assert "shutdown" in (await (await client.get("/readyz")).json())["failing"]
        assert (await client.get(f"/api/calls/{call.id}")).status == 200  # reading still works

        await graceful_shutdown(app, _Runner(), timeout_s=5)  # type: ignore[arg-type]
        assert call.end_reason == "shutdown" and runner_closed.is_set()
        assert not app[MANAGER].live()
    finally:
        await client.close()


async def test_backend_probe_reports_what_is_wrong() -> None:
    assert "no Realtime base URL" in (await backend_reachable("") or "")
    assert "has no host" in (await backend_reachable("not a url") or "")
    assert "cannot connect" in (await backend_reachable("http://127.0.0.1:1/v1") or "")


async def test_sigterm_ends_live_calls_with_shutdown_and_exits_0(tmp_path: Path) -> None:
    """`voicebridge serve` as a process: a live call, SIGTERM, the call ends `shutdown`, artifacts, exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in (ADMIN_TOKEN_ENV, "OPENAI_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebridge.cli", "serve", "--port", "0", "--artifacts", str(tmp_path),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.search(r"console at (http://127\.0\.0\.1:\d+)/", line)
        assert match, line
        base = match.group(1)
        async with aiohttp.ClientSession(base) as http:
            resp = await http.post("/api/calls", json={"scenario": "late_order"})
            assert resp.status == 201, await resp.text()
            call_id = (await resp.json())["id"]
            async with http.ws_connect(f"/api/calls/{call_id}/events") as ws:

                async def until(pred: Any) -> dict[str, Any]:
                    while True:
                        msg = await ws.receive_json()
                        if pred(msg):
                            return dict(msg)

                await asyncio.wait_for(until(lambda m: m["kind"] == "turn"), 60)  # live and talking
                proc.send_signal(signal.SIGTERM)
                ending = await asyncio.wait_for(until(lambda m: m["kind"] == "state" and m["data"] == "ending"), 20)
                assert ending
                ended = await asyncio.wait_for(until(lambda m: m["kind"] == "ended"), 30)
                assert ended["data"]["end_reason"] == "shutdown" and ended["data"]["ended_by"] == "server"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        folder = tmp_path / call_id
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["end_reason"] == "shutdown" and summary["state"] == "ended"
        events = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
        assert len(events) == summary["events"] > 0
        assert json.loads((folder / "transcript.json").read_text())  # the greeting at least
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

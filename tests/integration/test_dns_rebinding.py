"""DNS rebinding: a page on a name the attacker points at 127.0.0.1 is "same origin" to the browser, so only
the Host header tells it apart. Both servers answer only to the names they were started for, on every route
(enumerated from the routers, so a new endpoint is covered without touching this file), WebSocket upgrades,
CORS preflights and static files included; other names get 421 in the server's API error shape and nothing
happens."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.test_signaling_api import FakeCall
from voicebridge.config import Settings
from voicebridge.edge.hosts import LOOPBACK_NAMES, HostConfigError, host_name, host_policy
from voicebridge.emulator.server import Emulator
from voicebridge.signaling.app import create_app
from voicebridge.signaling.security import ADMIN_TOKEN_ENV, SecurityConfigError, SecurityPolicy, policy_for_serve

pytestmark = pytest.mark.integration
EVIL = "evil.example"


def routes(app: web.Application) -> list[tuple[str, str]]:
    """(method, path) of every route, path parameters filled with `x` (the static route with a real file)."""
    out = []
    for resource in app.router.resources():
        path = re.sub(r"\{path[^}]*\}", "app.js", resource.canonical)
        path = re.sub(r"\{[^}]+\}", "x", path)
        for route in resource:
            for method in ("GET", "POST") if route.method == "*" else (route.method,):
                if method != "HEAD":
                    out.append((method, path))
    return sorted(set(out))


async def _serve_client(tmp_path: Path, policy: SecurityPolicy) -> TestClient[Any, Any]:
    FakeCall.made = []
    settings = Settings(base_url="http://127.0.0.1:1/v1", api_key="sk-test", artifacts_dir=tmp_path)
    app = await create_app(settings, call_factory=FakeCall, security=policy)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    client = await _serve_client(tmp_path, SecurityPolicy())  # loopback, no admin token: the exposed case
    try:
        yield client
    finally:
        await client.close()


def _foreign(port: int, name: str = EVIL) -> dict[str, str]:
    return {"Host": f"{name}:{port}", "Origin": f"http://{name}:{port}"}


async def _misdirected(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.status == 421, (resp.status, await resp.text())
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]


async def test_serve_refuses_a_rebound_name_on_every_route(serve: TestClient[Any, Any]) -> None:
    app = serve.app
    assert app is not None
    live = await serve.post("/api/calls", json={"scenario": "late_order"})
    assert live.status == 201
    call_id = FakeCall.made[0].id
    paths = routes(app)
    assert ("POST", "/api/calls") in paths and ("GET", "/api/calls/x/events") in paths and ("GET", "/") in paths
    for method, path in paths:
        path = path.replace("/x/", f"/{call_id}/").replace("/x", f"/{call_id}")
        resp = await serve.request(method, path, json={"scenario": "late_order", "role": "takeover"},
                                   headers=_foreign(serve.port))  # fmt: skip
        err = await _misdirected(resp)
        assert err["type"] == "misdirected_request" and EVIL in err["message"] and "--allowed-host" in err["message"]
    assert len(FakeCall.made) == 1 and FakeCall.made[0].state == "connecting"  # nothing started, nothing hung up

    # The events WebSocket: the upgrade itself is refused, before any message.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await serve.ws_connect(f"/api/calls/{call_id}/events", headers=_foreign(serve.port))
    assert info.value.status == 421
    # A CORS preflight and a name without a port are refused the same way; so is a malformed Host.
    pre = await serve.options("/api/calls", headers={**_foreign(serve.port), "Access-Control-Request-Method": "POST"})
    await _misdirected(pre)
    await _misdirected(await serve.get("/api/calls", headers={"Host": EVIL}))
    await _misdirected(await serve.get("/", headers={"Host": "127.0.0.1:80:80"}))


async def test_serve_still_answers_its_own_names(serve: TestClient[Any, Any]) -> None:
    for name in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST."):
        resp = await serve.post(
            "/api/calls", json={"scenario": "late_order"},
            headers={"Host": f"{name}:{serve.port}", "Origin": f"http://{name}:{serve.port}"},
        )  # fmt: skip
        assert resp.status == 201, (name, await resp.text())
        assert (await serve.get("/", headers={"Host": name})).status == 200
    async with serve.ws_connect(f"/api/calls/{FakeCall.made[0].id}/events") as ws:  # Host 127.0.0.1:port
        assert (await asyncio.wait_for(ws.receive_json(), 30))["kind"] == "hello"


async def test_serve_allowed_host_adds_a_name(tmp_path: Path) -> None:
    policy = policy_for_serve("127.0.0.1", {}, allowed_hosts=["voicebridge.test"])
    client = await _serve_client(tmp_path, policy)
    try:
        named = _foreign(client.port, "voicebridge.test")
        ok = await client.post("/api/calls", json={"scenario": "late_order"}, headers=named)
        assert ok.status == 201, await ok.text()
        await _misdirected(await client.get("/api/calls", headers=_foreign(client.port)))
    finally:
        await client.close()


def test_which_names_a_server_answers_to() -> None:
    assert host_policy("127.0.0.1").names == LOOPBACK_NAMES
    assert host_policy("127.0.0.2").names == LOOPBACK_NAMES | {"127.0.0.2"}
    assert host_policy("::1").names == LOOPBACK_NAMES
    lan = host_policy("192.168.1.20", ["console.lan"])
    assert lan.names == {"192.168.1.20", "console.lan"} and not lan.any_ip
    assert lan.allows("console.lan:8080") and lan.allows("192.168.1.20") and not lan.allows("127.0.0.1:8080")
    every = host_policy("0.0.0.0")
    assert every.any_ip and every.allows("10.1.2.3:8080") and every.allows("[fe80::1]:8080")
    assert every.allows("localhost") and not every.allows(f"{EVIL}:8080")
    assert host_policy("127.0.0.1").allows(None)  # no Host header: not a browser
    assert [host_name(h) for h in ("A.Example.:80", "[::1]:1", "::1", "a b", "x:99999", "u@h", "")] == [
        "a.example", "::1", None, None, None, None, None,
    ]  # fmt: skip
    for bad in ("*.example", "http://x.example", "x.example:8080", "x/y", ""):
        with pytest.raises(HostConfigError, match="not a host name"):
            host_policy("127.0.0.1", [bad])
    with pytest.raises(SecurityConfigError, match="--allowed-host"):
        policy_for_serve("127.0.0.1", {}, allowed_hosts=["*"])
    assert policy_for_serve("0.0.0.0", {ADMIN_TOKEN_ENV: "t" * 20}).hosts.any_ip


# ---- the emulator ----------------------------------------------------------------------------------------


async def test_emulator_refuses_a_rebound_name_on_every_route(emulator: Emulator) -> None:
    port = int(emulator.base_url.rsplit(":", 1)[1].split("/")[0])
    paths = routes(emulator.app)
    assert ("POST", "/v1/realtime/client_secrets") in paths and ("GET", "/v1/realtime") in paths
    foreign = {**_foreign(port), "Authorization": "Bearer sk-x"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        for method, path in paths:
            async with http.request(method, path, json={}, headers=foreign) as r:
                err = await _misdirected(r)
                assert set(err) == {"message", "type", "code", "param"} and err["code"] == "misdirected_request"
                assert "--allowed-host" in err["message"]
        preflight = {**_foreign(port), "Access-Control-Request-Method": "POST"}
        async with http.options("/v1/realtime/calls", headers=preflight) as r:
            await _misdirected(r)
            assert "Access-Control-Allow-Origin" not in r.headers
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect("/v1/realtime?model=gpt-realtime", headers=foreign)
        assert info.value.status == 421
        assert not len(emulator.keys) and not emulator.sessions  # no ek_ key minted, no session made
        async with http.post("/v1/realtime/client_secrets", json={}, headers={"Authorization": "Bearer sk-x"}) as r:
            assert r.status == 200  # Host 127.0.0.1:port, as the openai SDK sends it


async def test_emulator_allowed_host_adds_a_name() -> None:
    emu = Emulator(load_builtin=False, allowed_hosts=["emu.test"])
    url = await emu.start()
    try:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            auth = {"Authorization": "Bearer sk-x"}
            async with http.post("/v1/realtime/client_secrets", json={}, headers={**auth, "Host": "emu.test"}) as r:
                assert r.status == 200
            async with http.post("/v1/realtime/client_secrets", json={}, headers={**auth, "Host": "localhost"}) as r:
                assert r.status == 200
            async with http.post("/v1/realtime/client_secrets", json={}, headers={**auth, "Host": EVIL}) as r:
                await _misdirected(r)
    finally:
        await emu.stop()


def test_allowed_host_on_the_command_lines(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (ADMIN_TOKEN_ENV, "OPENAI_API_KEY")}
    for command in ("serve", "emulator"):
        proc = subprocess.run(
            [sys.executable, "-m", "voicebridge.cli", command, "--port", "0", "--allowed-host", "http://x.example/"],
            env=env, capture_output=True, text=True, timeout=300,  # a hang's bound: it exits at once with 2
        )  # fmt: skip
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "--allowed-host 'http://x.example/' is not a host name" in proc.stdout + proc.stderr

"""The openai SDK's own environment is honoured: with OPENAI_API_KEY and OPENAI_BASE_URL set, `voicebridge call`
goes to the server named there (here a gateway on loopback that is not the emulator: it records every request
and forwards it to an emulator behind it), sends the SDK's organisation and project headers, and hangs up there.
VOICEBRIDGE_BASE_URL, when set, wins over OPENAI_BASE_URL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartEmulator
from tests.integration.test_call_cli import run_cli
from tests.integration.test_call_failure import SHORT

pytestmark = pytest.mark.integration

TEST_KEY = "sk-" + "gateway-test-key"  # built from two parts: no key-shaped literal in the source


@dataclass
class Gateway:
    """An OpenAI-compatible gateway: forwards /v1/* to an upstream and records what it was asked."""

    upstream: str
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append((request.method, request.path, headers))
        forward = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        query = f"?{request.query_string}" if request.query_string else ""
        target = self.upstream + request.path.removeprefix("/v1") + query
        async with aiohttp.ClientSession() as session, session.request(
            request.method, target, data=await request.read(), headers=forward
        ) as upstream:
            body = await upstream.read()
            keep = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "location")}
            return web.Response(status=upstream.status, body=body, headers=keep)

    def paths(self, method: str) -> list[str]:
        return [path for m, path, _ in self.seen if m == method]


@pytest.fixture
async def gateway(tmp_path: Path, start_emulator: StartEmulator) -> AsyncIterator[Gateway]:
    scenario = tmp_path / "short_call.toml"
    scenario.write_text(SHORT)
    emulator = await start_emulator(scenarios=[scenario], load_builtin=False)
    gw = Gateway(emulator.base_url)
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", gw.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    gw.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield gw
    finally:
        await runner.cleanup()


async def test_openai_base_url_and_key_reach_the_server_named_there(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "short_call.toml").write_text(SHORT)
    env = {
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": gateway.url,
        "OPENAI_ORG_ID": "org-voicebridge-test",
        "OPENAI_PROJECT_ID": "proj_voicebridge_test",
    }
    code, out, err = await run_cli(
        "--scenario", str(tmp_path / "short_call.toml"), "--json", "--out", str(tmp_path / "out"), env=env
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["end_reason"] == "caller_hangup"
    creates = [h for m, path, h in gateway.seen if m == "POST" and path == "/v1/realtime/calls"]
    assert len(creates) == 2  # one per leg, both through the gateway
    for headers in creates:
        assert headers["authorization"] == f"Bearer {TEST_KEY}"
        assert headers["openai-organization"] == "org-voicebridge-test"
        assert headers["openai-project"] == "proj_voicebridge_test"
    hangups = [p for p in gateway.paths("POST") if p.endswith("/hangup")]
    assert len(hangups) == 2, gateway.seen
    assert f"{gateway.url} (from OPENAI_BASE_URL)" in err  # the user is told where the calls went
    assert TEST_KEY not in err and TEST_KEY not in out


async def test_voicebridge_base_url_wins_over_openai_base_url(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "short_call.toml").write_text(SHORT)
    env = {
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # nothing listens there: using it would fail the call
        "VOICEBRIDGE_BASE_URL": gateway.url,
    }
    code, _, err = await run_cli("--scenario", str(tmp_path / "short_call.toml"), "--out", str(tmp_path / "o"), env=env)
    assert code == 0, err
    assert len([p for p in gateway.paths("POST") if p == "/v1/realtime/calls"]) == 2
    assert "(from VOICEBRIDGE_BASE_URL)" in err

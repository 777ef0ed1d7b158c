"""The openai SDK's own environment is honoured: with OPENAI_API_KEY and OPENAI_BASE_URL set, `voicebridge call`
goes to the server named there (here a gateway on loopback that is not the emulator: it records every request
and forwards it to an emulator behind it), sends the SDK's organisation and project headers, and hangs up there;
the scenario's `judge` criteria are asked there too (the gateway answers Chat Completions itself,
tests/openai_chat.py). VOICEBRIDGE_BASE_URL, when set, wins over OPENAI_BASE_URL."""

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
from tests.openai_chat import FakeChat, fake_chat

pytestmark = pytest.mark.integration

TEST_KEY = "sk-" + "gateway-test-key"  # built from two parts: no key-shaped literal in the source


@dataclass
class Gateway:
    """An OpenAI-compatible gateway: forwards /v1/* to an upstream and records what it was asked."""

    upstream: str
    chat: FakeChat
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
    app = web.Application()
    async with fake_chat(app=app) as chat:  # its route first: the gateway forwards everything else
        gw = Gateway(emulator.base_url, chat)
        app.router.add_route("*", "/v1/{tail:.*}", gw.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        gw.url = chat.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        try:
            yield gw
        finally:
            await runner.cleanup()


JUDGED = SHORT + """
[[expect]]
name = "the caller said goodbye"
judge = "Did the caller say goodbye?"
"""


async def test_openai_base_url_and_key_reach_the_server_named_there(gateway: Gateway, tmp_path: Path) -> None:
    (tmp_path / "short_call.toml").write_text(JUDGED)
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
    # The judge asked the same endpoint with the same key, over the call's own transcript, and it said yes.
    ((headers, body),) = gateway.chat.seen
    assert headers["authorization"] == f"Bearer {TEST_KEY}" and body["model"] == "gpt-4.1-mini"
    assert "caller: Thank you, goodbye." in body["messages"][-1]["content"]
    (verdict,) = summary["criteria"]
    assert (verdict["kind"], verdict["passed"], verdict["skipped"]) == ("judge", True, False)
    assert verdict["evidence"]["reason"] == "the transcript says: Thank you, goodbye."
    assert summary["passed"] is True
    assert TEST_KEY not in err and TEST_KEY not in out
    written = [p for p in (tmp_path / "out").iterdir() if p.suffix in (".json", ".jsonl", ".txt", ".svg")]
    assert written and not any(TEST_KEY in p.read_text() for p in written)


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

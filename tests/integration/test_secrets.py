"""The API key never leaves: a recognisable fake key is planted in the environment (OPENAI_API_KEY, with
VOICEBRIDGE_BASE_URL at the emulator, so it really is sent to the Realtime API), a whole call runs through the
signaling server, and every HTTP response (bodies and headers, errors included), every event WebSocket message,
every log record of every logger at DEBUG (unredacted: this checks that nothing logs the key, not that a
filter hides it) and every artifact file is scanned for it."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from tests.conftest import StartEmulator
from voicebridge.config import Settings
from voicebridge.emulator.keys import Keys
from voicebridge.signaling.app import create_app

pytestmark = pytest.mark.integration
SECRET_PART = secrets.token_hex(16)
KEY = f"sk-leaktest-{SECRET_PART}"
CALL_TIMEOUT = 60.0


class Capture(logging.Handler):
    """Every record, rendered in full (message, arguments, traceback, stack), nothing redacted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + " " + repr(vars(record)))


@pytest.fixture
def captured_logs() -> Iterator[Capture]:
    root = logging.getLogger()
    cap = Capture()
    level = root.level
    root.addHandler(cap)
    root.setLevel(logging.DEBUG)
    try:
        yield cap
    finally:
        root.removeHandler(cap)
        root.setLevel(level)


def leaks(text: str) -> bool:
    # The random part alone catches a key cut short, re-quoted or with its prefix masked.
    return KEY in text or SECRET_PART[:12] in text


async def test_the_api_key_appears_in_no_response_message_log_or_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, captured_logs: Capture, start_emulator: StartEmulator
) -> None:
    emulator = await start_emulator()
    url = emulator.base_url
    keys_seen: list[str] = []
    original_key = Keys.bearer

    def spy(self: Keys, request: web.Request) -> str:
        key = original_key(self, request)
        keys_seen.append(key)
        return key

    monkeypatch.setattr(Keys, "bearer", spy)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("VOICEBRIDGE_BASE_URL", url)
    settings = Settings.from_env(artifacts_dir=tmp_path / "calls")
    assert (settings.api_key, settings.base_url) == (KEY, url)
    assert KEY not in repr(settings)

    seen: list[str] = []  # everything a client received

    async def fetch(client: TestClient[Any, Any], method: str, path: str, **kw: Any) -> Any:
        resp = await client.request(method, path, **kw)
        body = await resp.text()
        seen.append(f"{method} {path} {resp.status} {dict(resp.headers)!r} {body}")
        return resp, body

    async with TestClient(TestServer(await create_app(settings))) as client:
        resp, _ = await fetch(client, "POST", "/api/calls", json={"scenario": "quick_bye"})
        assert resp.status == 201
        call_id = (await resp.json())["id"]
        ws = await client.ws_connect(f"/api/calls/{call_id}/events")
        kinds: list[str] = []

        async def read_until_ended() -> None:
            async for msg in ws:
                assert msg.type == WSMsgType.TEXT
                seen.append(msg.data)
                kinds.append(msg.json()["kind"])
                if kinds[-1] == "ended":
                    return

        await asyncio.wait_for(read_until_ended(), CALL_TIMEOUT)
        await ws.close()
        assert "event" in kinds and "turn" in kinds

        for path in (
            "/api/calls",
            f"/api/calls/{call_id}",
            f"/api/calls/{call_id}/sdp",
            f"/api/calls/{call_id}/debug",
            f"/api/calls/{call_id}/stats",
            f"/api/calls/{call_id}/participants",
            "/api/scenarios",
            "/healthz",
            "/metrics",
            "/api/calls/no_such_call",
        ):
            await fetch(client, "GET", path)
        for path, body in (
            ("/api/calls", b"{not json"),
            ("/api/calls", b'{"scenario": "no_such_scenario"}'),
            (f"/api/calls/{call_id}/hangup", b""),  # 409: it has ended
            (f"/api/calls/{call_id}/tokens", b'{"role": "listen"}'),
        ):
            await fetch(client, "POST", path, data=body, headers={"Content-Type": "application/json"})
        # The same call, measured through the server's real wiring (observed factory -> GET /metrics).
        _, metrics = await fetch(client, "GET", "/metrics")
        assert 'voicebridge_calls_ended_total{end_reason="caller_hangup"} 1.0' in metrics
        assert "voicebridge_active_calls 0.0" in metrics
        assert re.search(r'voicebridge_relay_packets_total\{party="cs"\} [1-9]', metrics)

    # The key was really in use: every Realtime request of the call carried it.
    assert keys_seen and set(keys_seen) == {KEY}
    assert len(seen) > 20
    assert not [s[:200] for s in seen if leaks(s)]
    assert captured_logs.lines, "no log records were captured: the scan would prove nothing"
    assert not [line[:300] for line in captured_logs.lines if leaks(line)]
    files = [p for p in (tmp_path / "calls").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"events.jsonl", "summary.json", "transcript.json"} <= names
    assert not [str(p) for p in files if leaks(p.read_bytes().decode("utf-8", "replace"))]

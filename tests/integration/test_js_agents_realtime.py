"""The official JavaScript client, @openai/agents-realtime (npm, tests/js), in node against the emulator.

Its WebSocket transport with its DEFAULT session config (semantic_vad, noise_reduction null, input transcription)
must open without an `error`, take a session.update round trip (a new agent) and answer a text message. It
authenticates with `Authorization: Bearer <apiKey>` (node) and takes the server URL as `connect({url})`; it reads
no base-URL environment variable. `make install` runs `npm ci` in tests/js.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import strict_validate
from voicebridge.config import EMULATOR_KEY
from voicebridge.emulator.server import Emulator

pytestmark = pytest.mark.integration

JS_DIR = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS_DIR / "agents_realtime_session.mjs"


async def test_agents_realtime_default_session_opens_updates_and_answers(emulator: Emulator) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Node.js 20+ runs the official JavaScript client)")
    if not (JS_DIR / "node_modules" / "@openai" / "agents-realtime").is_dir():
        pytest.fail(f"@openai/agents-realtime is not installed: run `make install` (npm ci in {JS_DIR})")
    url = emulator.base_url.replace("http://", "ws://") + "/realtime?model=gpt-realtime"
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        url,
        cwd=JS_DIR,
        env={**os.environ, "VOICEBRIDGE_TEST_API_KEY": EMULATOR_KEY},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Bounds for a hang only: node's start and the four steps take seconds; each step's own bound is 60 s.
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert out, f"node printed nothing (exit {proc.returncode}): {err.decode()[-2000:]}"
    result = json.loads(out.decode().strip().splitlines()[-1])
    events, steps = result["events"], result["steps"]
    errors = [e for e in events if e["type"] == "error"]
    assert not errors, errors
    assert proc.returncode == 0 and "failure" not in result, (result.get("failure"), steps, err.decode()[-2000:])
    assert [s["step"] for s in steps] == [
        "connected", "initial session.updated", "agent session.updated", "response.done",
    ]
    assert steps[-1]["status"] == "completed"
    for event in events:
        strict_validate(event)
    assert events[0]["type"] == "session.created"
    first = next(e for e in events if e["type"] == "session.updated")["session"]["audio"]["input"]
    assert first["noise_reduction"] is None and first["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert first["turn_detection"]["type"] == "semantic_vad"
    assert first["turn_detection"]["eagerness"] == "auto"

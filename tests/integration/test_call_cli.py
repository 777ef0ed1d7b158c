"""`voicebridge call` as a user runs it: a whole call on the embedded emulator, `--json` as stdout's last line,
live progress on stderr, and clear errors for a bad scenario, an unreachable endpoint and a refused key."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import StartEmulator
from tests.integration.test_call_failure import SHORT

pytestmark = pytest.mark.integration


async def run_cli(*args: str, env: dict[str, str] | None = None, limit_s: float = 90) -> tuple[int, str, str]:
    # Only what the test gives: none of the developer's own OPENAI_* or VOICEBRIDGE_BASE_URL settings.
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith("OPENAI_") and k != "VOICEBRIDGE_BASE_URL"
    }
    environment.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebridge.cli",
        "call",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_call_json_on_the_embedded_emulator(tmp_path: Path) -> None:
    scenario = tmp_path / "short_call.toml"
    scenario.write_text(SHORT)
    code, out, err = await run_cli("--scenario", str(scenario), "--json", "--out", str(tmp_path / "out"))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["end_reason"] == "caller_hangup"
    assert {"call_id", "duration_s", "turns", "tool_calls", "legs"} <= set(summary)
    assert [t["speaker"] for t in summary["turns"]] == ["cs", "caller"]
    assert summary["tool_calls"][0]["name"] == "hangup"
    assert "cs: Hello, this is the help desk." in err and "call ended" in err  # live progress
    assert (tmp_path / "out" / "events.jsonl").stat().st_size > 0


async def test_bad_scenario_is_named(tmp_path: Path) -> None:
    code, _, err = await run_cli("--scenario", "no_such_scenario")
    assert code == 2 and "no scenario named 'no_such_scenario'" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('first_speaker = "nobody"\n[caller]\ninstructions="x"\n[cs]\ninstructions="y"\n')
    code, _, err = await run_cli("--scenario", str(bad))
    assert code == 2 and "first_speaker" in err


async def test_unreachable_endpoint_and_refused_key(tmp_path: Path, start_emulator: StartEmulator) -> None:
    code, out, err = await run_cli(
        "--emulator-url", "http://127.0.0.1:9/v1", "--json", "--out", str(tmp_path / "a")
    )
    assert code == 1 and "cannot reach http://127.0.0.1:9/v1" in err
    assert json.loads(out.strip().splitlines()[-1])["end_reason"] == "error"

    emulator = await start_emulator(load_builtin=True)

    url = emulator.base_url
    code, _, err = await run_cli(
        "--emulator-url", url, "--out", str(tmp_path / "b"), env={"OPENAI_API_KEY": "not-a-key"}
    )
    assert code == 1 and "401" in err and "OPENAI_API_KEY" in err
    assert "not-a-key" not in err  # the key itself is never printed

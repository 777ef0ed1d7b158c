"""Faults mid-call on real WebRTC legs against the emulator, each with its defined outcome:

| fault                                   | outcome                                                         |
|-----------------------------------------|-----------------------------------------------------------------|
| a leg's data channel closes             | leg_failed, ended_by that leg, the other leg hung up            |
| a leg's media stops (channel still up)  | idle_timeout after the scenario's idle_timeout_s (bounded)      |
| the emulator PROCESS is killed          | leg_failed within peer_silence_timeout_s (+ a few s), not ~30 s |
| the remote sends junk on the channel    | recorded as invalid, the call carries on to the caller's hangup |
| hang-up while a CS tool is running      | operator_hangup, the tool is cancelled, nothing left running    |
| double (and triple) hang-up             | one end, every hangup() returns, artifacts written once         |

After each: summary.json, events.jsonl (every line) and the transcript parse; every peer connection is
closed; no asyncio task is left and no socket is left open. Call-creation failures are in
test_faults_create.py; a tool that raises or hangs is test_call_tools.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartEmulator
from tests.integration.test_call_demo import assert_no_tasks_left
from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.call import _ACTIVITY, Call
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import load_scenario
from voicebridge.tools import ToolRegistry

pytestmark = pytest.mark.integration

SCENARIO = """
name = "fault_call"
first_speaker = "cs"
max_duration_s = 60
idle_timeout_s = {idle}

[caller]
instructions = "You are a caller in the fault test."
[[caller.script]]
hear = "hello this is the help desk"
say = "Please check my order."
[[caller.script]]
hear = "one moment please goodbye"
say = "Goodbye."
hangup = true

[cs]
instructions = "You are the help desk in the fault test."
[[cs.script]]
on = "start"
say = "Hello, this is the help desk."
[[cs.script]]
hear = "please check my order"
call = {{ name = "wait_here", arguments = {{}} }}
[[cs.script]]
after_tool = "wait_here"
say = "One moment please. Goodbye."
[[cs.script]]
hear = "goodbye"
"""


def write_scenario(folder: Path, idle: float = 30) -> Path:
    path = folder / "fault_call.toml"
    path.write_text(SCENARIO.format(idle=idle))
    return path


def sockets_open() -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def check_artifacts(folder: Path, end_reason: str) -> dict[str, Any]:
    """Everything a finished call leaves behind is there and parses; returns summary.json."""
    summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    assert summary["end_reason"] == end_reason, summary.get("error")
    assert summary["state"] == "ended"
    lines = (folder / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == summary["events"] > 0
    assert all({"t", "leg", "direction", "event"} <= set(r) for r in records)
    assert isinstance(json.loads((folder / "transcript.json").read_text()), list)
    assert (folder / "transcript.txt").is_file()
    return summary


async def check_nothing_left(call: Call, sockets_before: int) -> None:
    for leg in call.legs.values():
        pc = getattr(leg, "pc", None)
        assert pc is None or pc.connectionState == "closed", leg.role
        assert leg.state in ("closed", "failed")
    await assert_no_tasks_left()
    assert sockets_open() <= sockets_before


def on_event(call: Call, leg: str, type_: str) -> asyncio.Future[dict[str, Any]]:
    """A future for the first event of this type on this leg."""
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def seen(rec: dict[str, Any]) -> None:
        if rec["leg"] == leg and rec["event"].get("type") == type_ and not fut.done():
            fut.set_result(rec["event"])

    call.on("event", seen)
    return fut


def tools(
    gate: asyncio.Event | None = None, started: asyncio.Event | None = None, cancelled: asyncio.Event | None = None
) -> ToolRegistry:
    reg = ToolRegistry(timeout_s=60)

    async def wait_here() -> str:
        """Waits until the test lets it go."""
        if started is not None:
            started.set()
        try:
            if gate is not None:
                await gate.wait()
        except asyncio.CancelledError:
            if cancelled is not None:
                cancelled.set()
            raise
        return "done"

    reg.register(wait_here)
    return reg


@pytest.fixture
async def emulator(tmp_path: Path, start_emulator: StartEmulator) -> Emulator:
    return await start_emulator(scenarios=[write_scenario(tmp_path)], load_builtin=False)


async def test_a_closed_data_channel_ends_the_call_with_leg_failed(emulator: Emulator, tmp_path: Path) -> None:
    before = sockets_open()
    scenario = load_scenario(write_scenario(tmp_path))
    call = Call(scenario, Settings(base_url=emulator.base_url), tmp_path / "call", tools=tools())
    greeting = on_event(call, "cs", "output_audio_buffer.started")
    await call.start()
    await asyncio.wait_for(greeting, 30)
    cs_id = call.legs["cs"].call_id
    assert cs_id is not None
    emulator.sessions[cs_id].channel.close()  # only the channel: the peer connection stays up
    await call.wait_ended(20)
    summary = check_artifacts(tmp_path / "call", "leg_failed")
    assert summary["ended_by"] == "cs" and "data channel closed" in summary["error"]
    legs = {leg["role"]: leg["state"] for leg in summary["legs"]}
    assert legs == {"cs": "failed", "caller": "closed"}
    assert not emulator.sessions  # the caller leg was hung up through the API
    await check_nothing_left(call, before)


async def test_media_that_stops_ends_the_call_at_the_idle_timeout(emulator: Emulator, tmp_path: Path) -> None:
    """Defined outcome: the data channel is alive, so the call waits for speech until idle_timeout_s."""
    before = sockets_open()
    idle = 3.0
    emulator.load_scenario(write_scenario(tmp_path, idle=idle))
    scenario = load_scenario(write_scenario(tmp_path, idle=idle))
    settings = Settings(base_url=emulator.base_url, hangup_drain_timeout_s=1.0)
    call = Call(scenario, settings, tmp_path / "call", tools=tools())
    state_at: dict[str, float] = {}
    call.on("state", lambda s: state_at.setdefault(s, call.now()))
    greeting = on_event(call, "cs", "output_audio_buffer.started")
    await call.start()
    await asyncio.wait_for(greeting, 30)
    cs_id = call.legs["cs"].call_id
    assert cs_id is not None
    session = emulator.sessions[cs_id]
    relay = call.relay
    assert relay is not None
    session.mouth.stop()  # the CS side's RTP stops mid-greeting; its channel and peer connection stay up
    # Bounded: idle timeout + drain (1 s) + hearing confirmation (3 s) + slack.
    await call.wait_ended(idle + 1 + 3 + 10)
    summary = check_artifacts(tmp_path / "call", "idle_timeout")
    assert summary["ended_by"] == "bridge"
    # It did wait for the idle timeout: the end began idle_timeout_s after the last activity (the call going live
    # or an activity event), on the call's own clock. Event times are kept to 0.1 ms, hence the 1 ms.
    ending = state_at["ending"]
    events = read_events(tmp_path / "call")
    activity = [r["t"] for r in events if r["direction"] == "in" and r["event"]["type"] in _ACTIVITY]
    last_activity = max([state_at["live"], *(t for t in activity if t <= ending)])
    assert ending - last_activity >= idle - 0.001
    assert not [t for t in summary["heard"]["caller"] if t.get("text")]  # the cut greeting was never heard
    await check_nothing_left(call, before)


async def test_a_killed_emulator_process_ends_the_call_with_leg_failed_quickly(tmp_path: Path) -> None:
    scenario_path = write_scenario(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voicebridge.cli",
        "emulator",
        "--port",
        "0",
        "--scenario",
        str(scenario_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert "serving the Realtime GA API at " in line, line
        base_url = line.rsplit(" ", 1)[-1].strip()
        before = sockets_open()
        settings = Settings(base_url=base_url, peer_silence_timeout_s=3.0)
        call = Call(load_scenario(scenario_path), settings, tmp_path / "call", tools=tools())
        greeting = on_event(call, "cs", "output_audio_buffer.started")
        await call.start()
        await asyncio.wait_for(greeting, 30)
        killed_at = call.now()
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        await call.wait_ended(60)  # a bound for a hang only: what ended the call is checked below
        summary = check_artifacts(tmp_path / "call", "leg_failed")
        # The bridge's watchdog ended it (aiortc alone notices a dead peer only after ~30 s of ICE consent), and
        # only once the peer had been silent for peer_silence_timeout_s: the silence it measured is in the error.
        silent = re.search(r"nothing received from the remote peer for ([0-9.]+) s", summary["error"])
        assert silent is not None, summary["error"]
        assert float(silent.group(1)) >= settings.peer_silence_timeout_s
        assert summary["duration_s"] > killed_at
        await check_nothing_left(call, before)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_junk_from_the_remote_is_recorded_and_the_call_goes_on(emulator: Emulator, tmp_path: Path) -> None:
    before = sockets_open()
    scenario = load_scenario(write_scenario(tmp_path))
    call = Call(scenario, Settings(base_url=emulator.base_url), tmp_path / "call", tools=tools())
    greeting = on_event(call, "cs", "output_audio_buffer.started")
    await call.start()
    await asyncio.wait_for(greeting, 30)
    cs_id = call.legs["cs"].call_id
    assert cs_id is not None
    channel = emulator.sessions[cs_id].channel
    channel.send("this is not json {")
    channel.send(b"\x00\x01binary")
    channel.send('["an", "array"]')
    channel.send('{"type": "made.up.event", "event_id": "x"}')
    channel.send('{"no_type": true}')
    channel.send(json.dumps({"type": "huge.event", "blob": "x" * 200_000}))  # under the 256 KiB SCTP limit
    await call.wait_ended(60)
    summary = check_artifacts(tmp_path / "call", "caller_hangup")
    assert [t["text"] for t in summary["turns"]][-1].lower().startswith("goodbye")
    invalid = call.legs["cs"].invalid_events
    problems = " | ".join(p["problem"] for p in invalid)
    assert "not JSON" in problems and "not a JSON object" in problems and "made.up.event" in problems
    assert len(json.dumps(invalid)) < 50_000  # a huge bad event is not kept whole in memory
    await check_nothing_left(call, before)


async def test_hangup_during_a_tool_call_cancels_the_tool(emulator: Emulator, tmp_path: Path) -> None:
    before = sockets_open()
    started = asyncio.Event()
    gate = asyncio.Event()  # never set: the tool would wait forever
    cancelled = asyncio.Event()
    scenario = load_scenario(write_scenario(tmp_path))
    registry = tools(gate, started, cancelled)
    call = Call(scenario, Settings(base_url=emulator.base_url), tmp_path / "call", tools=registry)
    await call.start()
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.wait_for(call.hangup(), 20)
    assert cancelled.is_set()  # the running tool was cancelled, not left waiting
    summary = check_artifacts(tmp_path / "call", "operator_hangup")
    assert summary["ended_by"] == "operator"
    assert not [tc for tc in summary["tool_calls"] if tc["name"] == "wait_here" and tc.get("ok")]
    await check_nothing_left(call, before)


async def test_double_hangup_is_idempotent(emulator: Emulator, tmp_path: Path) -> None:
    before = sockets_open()
    scenario = load_scenario(write_scenario(tmp_path))
    call = Call(scenario, Settings(base_url=emulator.base_url), tmp_path / "call", tools=tools())
    ended: list[dict[str, Any]] = []
    call.on("ended", ended.append)
    greeting = on_event(call, "cs", "output_audio_buffer.started")
    await call.start()
    await asyncio.wait_for(greeting, 30)
    await asyncio.wait_for(asyncio.gather(call.hangup(), call.hangup("max_duration", "bridge"), call.hangup()), 20)
    await asyncio.wait_for(call.hangup(), 5)  # after the end: returns at once, changes nothing
    assert len(ended) == 1
    summary = check_artifacts(tmp_path / "call", "operator_hangup")
    assert summary["ended_by"] == "operator"
    await check_nothing_left(call, before)

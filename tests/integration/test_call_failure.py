"""A leg the emulator drops mid-call ends the call with leg_failed, hangs up the other leg and still writes
complete artifacts; and five calls run at once in one process, each to its own caller hang-up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import StartEmulator
from tests.integration.test_call_demo import assert_no_tasks_left
from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import load_scenario, normalize_phrase

pytestmark = pytest.mark.integration
# What is asserted is that the last words were played out and heard before the legs closed: the hang-up waits on
# those events, and its time limits (for a broken peer) must not decide the outcome on a slow or loaded machine.
PATIENT = {"hangup_drain_timeout_s": 30.0, "hangup_hear_timeout_s": 30.0}

SHORT = """
name = "short_call"
first_speaker = "cs"
max_duration_s = 60
idle_timeout_s = 30

[caller]
instructions = "You are a caller in the short call test."
[[caller.script]]
hear = "hello this is the help desk"
say = "Thank you, goodbye."
hangup = true

[cs]
instructions = "You are the help desk in the short call test."
[[cs.script]]
on = "start"
say = "Hello, this is the help desk."
[[cs.script]]
hear = "thank you goodbye"
"""


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "short_call.toml"
    path.write_text(SHORT)
    return path


@pytest.fixture
async def emulator(scenario_file: Path, start_emulator: StartEmulator) -> Emulator:
    return await start_emulator(scenarios=[scenario_file], load_builtin=False)


async def test_a_dropped_leg_ends_the_call_with_leg_failed(
    emulator: Emulator, scenario_file: Path, tmp_path: Path
) -> None:
    call = Call(load_scenario(scenario_file), Settings(base_url=emulator.base_url), tmp_path / "call")
    cs_speaks: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_event(rec: dict[str, object]) -> None:
        event = rec["event"]
        assert isinstance(event, dict)
        if rec["leg"] == "cs" and event["type"] == "output_audio_buffer.started" and not cs_speaks.done():
            cs_speaks.set_result(None)

    call.on("event", on_event)
    await call.start()
    await asyncio.wait_for(cs_speaks, 30)  # mid-call: the greeting is playing
    caller_call_id = call.legs["caller"].call_id
    cs_call_id = call.legs["cs"].call_id
    assert caller_call_id in emulator.sessions and cs_call_id in emulator.sessions
    await emulator.sessions[caller_call_id].close("dropped by the test")  # the emulator drops the caller leg
    await call.wait_ended(30)

    summary = call.summary()
    assert summary.end_reason == "leg_failed" and summary.ended_by == "caller" and not summary.succeeded
    assert "caller leg" in (summary.error or "")
    legs = {leg.role: leg for leg in summary.legs}
    assert legs["caller"].state == "failed" and legs["cs"].state == "closed"
    assert cs_call_id not in emulator.sessions  # the CS leg was hung up through the REST endpoint
    folder = tmp_path / "call"
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk["end_reason"] == "leg_failed" and on_disk["events"] == len(read_events(folder))
    transcript = json.loads((folder / "transcript.json").read_text())
    assert [normalize_phrase(t["text"]) for t in transcript] == ["hello this is the help desk"]
    assert (folder / "transcript.txt").read_text().strip()
    for leg in call.legs.values():
        assert leg.pc.connectionState == "closed"  # type: ignore[attr-defined]
    await assert_no_tasks_left()


async def test_five_calls_at_once(emulator: Emulator, scenario_file: Path, tmp_path: Path) -> None:
    scenario = load_scenario(scenario_file)
    settings = Settings(base_url=emulator.base_url, **PATIENT)
    calls = [Call(scenario, settings, tmp_path / f"call{i}") for i in range(5)]
    await asyncio.gather(*(c.start() for c in calls))
    await asyncio.wait_for(asyncio.gather(*(c.wait_ended() for c in calls)), 60)
    for c in calls:
        s = c.summary()
        assert s.end_reason == "caller_hangup", (c.id, s.error)
        assert [normalize_phrase(t.text) for t in s.heard["cs"]] == ["thank you goodbye"]
        assert [normalize_phrase(t.text) for t in s.heard["caller"]] == ["hello this is the help desk"]
    assert len({c.id for c in calls}) == 5
    assert not emulator.sessions  # every leg of every call was hung up
    await assert_no_tasks_left()


async def test_operator_hangup_lets_the_current_words_finish_and_arrive(
    emulator: Emulator, scenario_file: Path, tmp_path: Path
) -> None:
    call = Call(load_scenario(scenario_file), Settings(base_url=emulator.base_url, **PATIENT), tmp_path / "call")
    greeting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    closed_at: dict[str, float] = {}

    def on_event(rec: dict[str, object]) -> None:
        event = rec["event"]
        assert isinstance(event, dict)
        if rec["leg"] == "cs" and event["type"] == "output_audio_buffer.started" and not greeting.done():
            greeting.set_result(None)

    call.on("event", on_event)
    await call.start()
    for leg in call.legs.values():
        leg.on("closed", lambda leg=leg: closed_at.setdefault(leg.role, call.now()))
    await asyncio.wait_for(greeting, 30)
    await asyncio.wait_for(call.hangup(), 30)  # mid-sentence
    s = call.summary()
    assert s.end_reason == "operator_hangup" and s.ended_by == "operator"
    heard = s.heard["caller"]
    assert [normalize_phrase(t.text) for t in heard] == ["hello this is the help desk"]
    assert heard[0].end <= min(closed_at.values())  # heard in full before either leg closed

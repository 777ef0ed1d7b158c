"""Function calls over real WebRTC against the emulator: a caller function other than hangup() is refused and
never executed; CS tools that raise, time out or get bad arguments produce error outputs and the call goes on
to the caller's hang-up. The scenario is written by the test."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import StartEmulator
from tests.integration.test_call_demo import assert_no_response_create_while_active
from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import load_scenario, normalize_phrase
from voicebridge.tools import ToolRegistry

pytestmark = pytest.mark.integration

SCENARIO = """
name = "tool_trouble"
first_speaker = "cs"
max_duration_s = 90
idle_timeout_s = 30

[caller]
instructions = "You are a caller in the tool trouble test."
[[caller.script]]
hear = "hello this is the help desk"
say = "Please check my order."
call = { name = "lookup_order", arguments = { order_id = "1" } }
[[caller.script]]
after_tool = "lookup_order"
[[caller.script]]
hear = "sorry our system is down goodbye"
say = "Goodbye."
hangup = true

[cs]
instructions = "You are the help desk in the tool trouble test."
[[cs.script]]
on = "start"
say = "Hello, this is the help desk."
[[cs.script]]
hear = "please check my order"
call = { name = "explode", arguments = {} }
[[cs.script]]
after_tool = "explode"
call = { name = "slow", arguments = { seconds = 60 } }
[[cs.script]]
after_tool = "slow"
call = { name = "lookup_order", arguments = { order_id = 5, order = 5 } }
[[cs.script]]
after_tool = "lookup_order"
say = "Sorry, our system is down. Goodbye."
[[cs.script]]
hear = "goodbye"
"""


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tool_trouble.toml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture
async def emulator(scenario_file: Path, start_emulator: StartEmulator) -> Emulator:
    return await start_emulator(scenarios=[scenario_file])


def trouble_tools(executed: list[str]) -> ToolRegistry:
    reg = ToolRegistry(timeout_s=5)

    @reg.register
    def lookup_order(order_id: str) -> dict[str, str]:
        """Look an order up."""
        executed.append(f"lookup_order {order_id}")
        return {"order_id": order_id}

    @reg.register
    def explode() -> None:
        """Always fails."""
        executed.append("explode")
        raise RuntimeError("the order database is on fire")

    async def slow(seconds: float) -> str:
        """Takes too long."""
        executed.append("slow")
        await asyncio.sleep(seconds)
        return "too late"

    reg.register(slow, timeout_s=0.3)
    return reg


async def test_refused_caller_function_and_failing_tools_do_not_end_the_call(
    emulator: Emulator, scenario_file: Path, tmp_path: Path
) -> None:
    executed: list[str] = []
    scenario = load_scenario(scenario_file)
    # The hang-up waits for the goodbye to be heard (asserted below); its limits are for a broken peer only.
    settings = Settings(base_url=emulator.base_url, hangup_drain_timeout_s=30.0, hangup_hear_timeout_s=30.0)
    call = Call(scenario, settings, tmp_path / "call", tools=trouble_tools(executed))
    await call.start()
    await call.wait_ended(80)
    summary = call.summary()
    assert summary.end_reason == "caller_hangup", summary.error

    by_name = {f"{c.leg}.{c.name}": c for c in summary.tool_calls}
    refused = by_name["caller.lookup_order"]
    assert not refused.ok and json.loads(refused.output)["error"]["type"] == "refused"
    # The CS registry has a lookup_order too: the caller's call must not have reached it.
    assert "lookup_order 1" not in executed
    assert executed == ["explode", "slow"]  # the bad-arguments call never ran either

    kinds = {
        name: json.loads(by_name[name].output)["error"]["type"]
        for name in ("cs.explode", "cs.slow", "cs.lookup_order")
    }
    assert kinds == {"cs.explode": "tool_error", "cs.slow": "timeout", "cs.lookup_order": "invalid_arguments"}
    assert "on fire" in json.loads(by_name["cs.explode"].output)["error"]["message"]
    bad_arguments = (
        "bad arguments for lookup_order: order_id: expected a string, got 5 (an integer); "
        "order: unknown field (known: order_id)"
    )
    assert json.loads(by_name["cs.lookup_order"].output)["error"]["message"] == bad_arguments
    assert by_name["caller.hangup"].ok

    # The call went on after each error: the CS said its last line and the caller heard it.
    said_cs = [normalize_phrase(t.text) for t in summary.turns if t.speaker == "cs"]
    assert said_cs == ["hello this is the help desk", "sorry our system is down goodbye"]
    heard_by_cs = [normalize_phrase(t.text) for t in summary.heard["cs"]]
    assert heard_by_cs == ["please check my order", "goodbye"]

    events = read_events(tmp_path / "call")
    assert_no_response_create_while_active(events)
    # Every error output was followed by a response.create on the CS leg (four function calls in all).
    cs_out = [r["event"]["type"] for r in events if r["leg"] == "cs" and r["direction"] == "out"]
    assert cs_out.count("response.create") == 1 + 3
    # The model itself is told which argument was wrong and why, in the function_call_output it gets.
    outputs = [
        r["event"]["item"]["output"]
        for r in events
        if r["leg"] == "cs" and r["direction"] == "out" and r["event"]["type"] == "conversation.item.create"
        and r["event"]["item"].get("type") == "function_call_output"
    ]
    assert any(bad_arguments in json.loads(o)["error"]["message"] for o in outputs), outputs

"""Per-turn latency on a real demo call (real WebRTC, Opus and espeak speech against the emulator).

Checks that summary.json carries one turn per change of speaker, that the fields are positive and consistent
(the bridge's share never exceeds the total, and is the sum of its parts), that the turns line up with the
transcript, that tool time lands in the turn where the CS agent used its tools, and that `voicebridge call`
prints them.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pytest

from voicebridge.bridge.call import Call
from voicebridge.bridge.runner import print_summary
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration

SLACK_S = 0.3  # transcript times come from the legs' events; packet times from the relay tap


async def test_turn_latency_of_a_demo_call(emulator: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "call"
    call = Call(load_scenario("late_order"), Settings(base_url=emulator.base_url, hangup_drain_timeout_s=8.0), folder)
    await call.start()
    await call.wait_ended(90)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["end_reason"] == "caller_hangup"
    latency = summary["turn_latency"]
    said = sorted(summary["turns"], key=lambda t: t["start"])
    turns = latency["turns"]
    assert latency["count"] == len(turns) == len(said) - 1 == 3

    for turn, (before, after) in zip(turns, itertools.pairwise(said), strict=True):
        assert (turn["from"], turn["to"]) == (before["speaker"], after["speaker"])
        assert before["start"] < turn["speech_end"] <= before["end"] + SLACK_S
        assert after["start"] - SLACK_S <= turn["reply_start"] < after["end"]
        assert turn["total_ms"] == pytest.approx((turn["reply_start"] - turn["speech_end"]) * 1000, abs=0.5)
        assert 0 < turn["relay_ms"] <= turn["bridge_ms"] <= turn["total_ms"]
        assert turn["tools_ms"] >= 0 and turn["gating_ms"] >= 0
        parts = turn["relay_ms"] + turn["tools_ms"] + turn["gating_ms"]
        assert turn["bridge_ms"] == pytest.approx(parts, abs=0.01)
        assert turn["other_ms"] == pytest.approx(turn["total_ms"] - turn["bridge_ms"], abs=0.01)

    # The CS agent looked up the order and refunded it between the caller's request and its answer.
    tool_turn = turns[1]
    assert (tool_turn["from"], tool_turn["to"]) == ("caller", "cs")
    cs_tools = [c for c in summary["tool_calls"] if c["leg"] == "cs"]
    assert {c["name"] for c in cs_tools} == {"lookup_order", "issue_refund"}
    assert tool_turn["tools_ms"] >= max(c["duration_ms"] for c in cs_tools)
    assert turns[0]["tools_ms"] == 0 and turns[2]["tools_ms"] == 0  # the caller's hangup() came after its line

    assert latency["total_ms"]["max"] == max(t["total_ms"] for t in turns)
    assert latency["bridge_ms"]["max"] == max(t["bridge_ms"] for t in turns)

    out = io.StringIO()
    print_summary(summary, out)
    printed = [line for line in out.getvalue().splitlines() if line.strip().startswith("turn ")]
    assert len(printed) == 3 and "caller -> cs" in printed[1] and "tools" in printed[1]

"""Per-turn latency on a real demo call (real WebRTC, Opus and espeak speech against the emulator).

Checks that summary.json carries one turn per change of speaker, that the fields are consistent (the bridge's
share never exceeds the total, and is the sum of its parts), that the turns line up with the transcript, that tool
time lands in the turn where the CS agent used its tools, and that `voicebridge call` prints them.

Nothing here depends on how fast the machine is: the alignment with the transcript is checked by causal order (a
reply can only begin after the speech it answers ended), not by a time tolerance, and tool time is compared with
the tools' own durations and events from the same call. The exact arithmetic (relay share included) is pinned on
a controlled clock in tests/unit/test_turns.py.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pytest

from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.call import Call
from voicebridge.commands.call import print_summary
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.results import CallSummary
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration

# Event times in events.jsonl (and so in TurnLatency's tool windows) are kept to 0.1 ms: an interval measured
# between two of them may come out up to 0.1 ms shorter than the work it encloses.
EVENT_CLOCK_MS = 0.1


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
        # The last speech packet of a line arrived after the line began and before the reply began (the reply
        # answers the end of that speech); the reply's first speech packet arrived before the reply's line ended.
        assert before["start"] < turn["speech_end"] < after["start"]
        assert turn["speech_end"] < turn["reply_start"] < after["end"]
        assert turn["total_ms"] == pytest.approx((turn["reply_start"] - turn["speech_end"]) * 1000, abs=0.5)
        # >= 0, not > 0: two packets' forwarding can round to 0.000 ms on a fast machine.
        assert 0 <= turn["relay_ms"] <= turn["bridge_ms"] <= turn["total_ms"]
        assert turn["tools_ms"] >= 0 and turn["gating_ms"] >= 0
        parts = turn["relay_ms"] + turn["tools_ms"] + turn["gating_ms"]
        assert turn["bridge_ms"] == pytest.approx(parts, abs=0.01)
        assert turn["other_ms"] == pytest.approx(turn["total_ms"] - turn["bridge_ms"], abs=0.01)

    # The CS agent looked up the order and refunded it between the caller's request and its answer.
    tool_turn = turns[1]
    assert (tool_turn["from"], tool_turn["to"]) == ("caller", "cs")
    cs_tools = [c for c in summary["tool_calls"] if c["leg"] == "cs"]
    assert {c["name"] for c in cs_tools} == {"lookup_order", "issue_refund"}
    assert tool_turn["tools_ms"] >= max(c["duration_ms"] for c in cs_tools) - EVENT_CLOCK_MS
    assert turns[0]["tools_ms"] == 0  # the caller agent called nothing before its first line
    # The caller's hangup() comes with its goodbye, as that line starts playing: whether it is seen just before or
    # just after the line's first packet is a race, so its share of the last turn is bounded by its own span.
    events = read_events(folder)
    hangup_id = next(c["call_id"] for c in summary["tool_calls"] if c["name"] == "hangup")
    asked = next(
        r["t"]
        for r in events
        if r["direction"] == "in" and r["event"].get("call_id") == hangup_id and r["event"]["type"].endswith(".done")
    )
    answered = next(
        r["t"]
        for r in events
        if r["direction"] == "out" and (r["event"].get("item") or {}).get("call_id") == hangup_id
    )
    assert 0 <= turns[2]["tools_ms"] <= (answered - asked) * 1000 + 0.01

    assert latency["total_ms"]["max"] == max(t["total_ms"] for t in turns)
    assert latency["bridge_ms"]["max"] == max(t["bridge_ms"] for t in turns)

    out = io.StringIO()
    print_summary(CallSummary.model_validate(summary), out)
    printed = [line for line in out.getvalue().splitlines() if line.strip().startswith("turn ")]
    assert len(printed) == 3 and "caller -> cs" in printed[1] and "tools" in printed[1]

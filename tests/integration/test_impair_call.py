"""A whole call with network impairment (real WebRTC legs against the emulator): the summary says what was applied
per direction, and each agent's receiver reports, as the bridge's legs last saw them, count no more loss than the
stage applied in that direction in the same run (a report can only lag: packets dropped after it are not in it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration


async def test_an_impaired_call_records_what_was_applied(emulator: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "call"
    scenario = load_scenario("quick_bye").model_copy(update={"impair": "caller>cs: loss=5%; cs>caller: good"})
    call = Call(scenario, Settings(base_url=emulator.base_url, hangup_drain_timeout_s=8.0), folder)
    await call.start()
    await call.wait_ended(90)
    summary = json.loads((folder / "summary.json").read_text())
    applied = summary["impairment"]
    assert applied == summary["relay"]["impairment"]
    to_cs, to_caller = applied["caller_to_cs"], applied["cs_to_caller"]
    assert (to_cs["spec"], to_caller["spec"]) == ("loss=5%", "none")
    assert to_cs["packets_in"] > 0 and to_caller["packets_in"] > 0
    assert to_cs["dropped"] == to_cs["lost_random"] > 0
    assert to_caller["dropped"] == 0 and to_caller["forwarded"] == to_caller["packets_in"]
    # The relay forwarded what the stage let through (less what it sent before the leg could: none here).
    assert summary["relay"]["caller_to_cs"]["packets"] == to_cs["forwarded"]

    legs = {leg["role"]: leg["stats"]["rtc"] for leg in summary["legs"]}
    lost = {
        role: next(s["packetsLost"] for s in rtc.values() if s["type"] == "remote-inbound-rtp")
        for role, rtc in legs.items()
    }
    # The CS agent receives caller_to_cs: its reports count real loss, at most what the stage dropped.
    assert lost["cs"] <= to_cs["dropped"]
    assert lost["caller"] == 0

"""Barge-in offline: the built-in `barge_in` scenario against the emulator. The caller's persona cuts into the CS
agent's long greeting (`interrupt_after_ms`); the CS agent's server VAD hears it and does what the Realtime GA API
does on WebRTC with `interrupt_response` (its playing item truncated to what was sent, then
`output_audio_buffer.cleared`); the bridge's talk-over analysis shows one interruption by the caller with its time to
yield, and the scenario's criteria pass. One call proves all of it; no figure is compared with a fixed time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_call_cli import run_cli
from voicebridge.results import CallSummary

pytestmark = pytest.mark.integration


async def test_the_caller_barges_in_the_agent_yields_and_the_analysis_shows_it(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    code, _, err = await run_cli("--scenario", "barge_in", "--out", str(out_dir))
    assert code == 0, err
    summary = CallSummary.model_validate_json((out_dir / "summary.json").read_text())
    assert summary.end_reason == "caller_hangup" and summary.passed is True
    assert all(v.passed for v in summary.criteria) and len(summary.criteria) == 6
    timing = summary.timing
    assert timing is not None
    (cut,) = timing.interruptions
    assert (cut.by, cut.of) == ("caller", "cs")
    assert cut.time_to_yield_ms == round((cut.yielded_at - cut.at) * 1000, 1) and cut.time_to_yield_ms > 0
    assert timing.time_to_yield_ms == cut.time_to_yield_ms
    # The cut is where the caller's line starts and the greeting's stretch ends.
    assert cut.at in [s.start for s in timing.speech["caller"]] and cut.yielded_at == timing.speech["cs"][0].end
    assert any(o.by == "caller" and o.start == cut.at for o in timing.overlaps)
    # The interrupted side, as the CS leg received it: speech started, the greeting truncated, the buffer cleared.
    cs_events = [
        json.loads(line)["event"] for line in (out_dir / "events.jsonl").read_text().splitlines()
        if json.loads(line)["leg"] == "cs" and json.loads(line)["direction"] == "in"
    ]
    kinds = [e["type"] for e in cs_events]
    first = kinds.index("input_audio_buffer.speech_started")
    assert kinds[first + 1 : first + 3] == ["conversation.item.truncated", "output_audio_buffer.cleared"]
    truncated = cs_events[first + 1]
    assert truncated["audio_end_ms"] > 0 and summary.turns[0].speaker == "cs"
    # The transcript keeps the greeting's whole text and says how much of it played before the cut.
    greeting = summary.turns[0]
    assert greeting.item_id == truncated["item_id"] and greeting.played_ms == truncated["audio_end_ms"]
    assert all(line.played_ms is None for line in summary.turns[1:])
    # No turn for the barge-in itself: it is the interruption above, not a reply a few ms after the greeting.
    assert all(t.reply_start != pytest.approx(cut.at, abs=1e-3) for t in summary.turn_latency.turns)
    assert "interruption at" in err and "caller cut in on cs" in err

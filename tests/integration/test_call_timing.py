"""The timing and talk-over analysis on a real call: an emulator call's summary.json has a `timing` section whose
speech stretches hold its turns (each reply starts a stretch of the replying party, each turn's last packet ends
one of the other's), whose figures agree with one another, and the talk-over criteria are judged on it. Nothing
here depends on the machine's speed: every figure is compared with another of the same call."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tests.integration.test_call_cli import run_cli
from tests.integration.test_call_failure import SHORT
from voicebridge.bridge.turns import FRAME_S
from voicebridge.lab.timing import analyze, format_timing
from voicebridge.results import CallSummary

pytestmark = pytest.mark.integration

TALK_OVER = SHORT + """
[[expect]]
name = "overlaps"
max_overlap_s = 1000

[[expect]]
name = "silences"
max_silence_s = 1000

[[expect]]
name = "interruptions"
max_interruptions = 1000
"""


async def test_an_emulator_calls_timing_holds_its_turns_and_its_criteria_are_judged_on_it(tmp_path: Path) -> None:
    scenario = tmp_path / "short_call.toml"
    scenario.write_text(TALK_OVER)
    out_dir = tmp_path / "out"
    code, out, err = await run_cli("--scenario", str(scenario), "--json", "--out", str(out_dir))
    assert code == 0, err
    summary = CallSummary.model_validate_json((out_dir / "summary.json").read_text())
    assert json.loads(out.strip().splitlines()[-1])["timing"] == summary.model_dump(mode="json")["timing"]
    timing = summary.timing
    assert timing is not None
    speech = {p: [(s.start, s.end) for s in spans] for p, spans in timing.speech.items()}
    assert speech["caller"] and speech["cs"]  # both spoke: the greeting and the goodbye
    for spans in speech.values():
        assert all(a < b for a, b in spans)
        assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
        assert 0 <= spans[0][0] and spans[-1][1] - FRAME_S <= summary.duration_s  # a last packet came before the end
    turns = summary.turn_latency.turns
    assert turns and [(t.from_, t.to, t.at, t.gap_ms) for t in timing.turns] == [
        (t.from_, t.to, t.reply_start, t.total_ms) for t in turns
    ]
    for t in turns:
        assert t.reply_start in [a for a, _ in speech[t.to]]
        assert min(abs(b - (t.speech_end + FRAME_S)) for _, b in speech[t.from_]) < 1e-3
    # The summary's figures are the analysis of its own stretches and turns.
    assert analyze(speech, turns) == timing
    assert timing.speech_s <= round(sum(b - a for spans in speech.values() for a, b in spans), 4)
    assert timing.overlap_ratio == round(timing.overlap_s / timing.speech_s, 4)
    assert format_timing(timing)[0] in err  # the console's summary shows the same analysis
    verdicts = {v.name: v for v in summary.criteria}
    assert [verdicts[n].kind for n in ("overlaps", "silences", "interruptions")] == [
        "max_overlap_s", "max_silence_s", "max_interruptions"
    ]
    assert all(v.passed for v in verdicts.values())
    silence = verdicts["silences"].evidence
    assert isinstance(silence, dict) and silence["max_silence_s"] == timing.max_silence_s
    interruptions = verdicts["interruptions"].evidence
    assert interruptions == {"interruptions": [c.model_dump(mode="json") for c in timing.interruptions]}

"""The timing and talk-over analysis (voicebridge/lab/timing.py): exact figures on synthetic timelines with known
overlaps, interruptions and silences, the edge cases (touching, nested, simultaneous starts, no speech), the
talk-over criteria passing and failing on them, and the speech stretches bridge/turns.py records off packets."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebridge.bridge.turns import FRAME_S, TurnLatency
from voicebridge.lab.criteria import evaluate
from voicebridge.lab.timing import analyze, format_timing, interruptions, merge, overlaps, silences
from voicebridge.media.passthrough import RtpAudio
from voicebridge.results import (
    CallSummary,
    CallTiming,
    Interruption,
    Overlap,
    Silence,
    TurnLatencySummary,
    TurnRecord,
)
from voicebridge.scenarios.expect import Expectation

pytestmark = pytest.mark.unit

# cs greets 0-3; the caller answers 3.5-6; cs replies 6.4-10 and the caller cuts in at 9 (cs stops 1 s later, the
# caller goes on to 12); a 4 s silence; cs 16-18 with a caller "mm-hm" inside it (17-17.5) that cs talks over.
CALL = {
    "cs": [(0.0, 3.0), (6.4, 10.0), (16.0, 18.0)],
    "caller": [(3.5, 6.0), (9.0, 12.0), (17.0, 17.5)],
}


def turn(frm: str, to: str, end: float, start: float) -> TurnRecord:
    total = round((start - end) * 1000, 2)
    return TurnRecord(
        from_=frm, to=to, speech_end=end, reply_start=start, total_ms=total, bridge_ms=0.1, relay_ms=0.1,
        tools_ms=0.0, gating_ms=0.0, other_ms=total - 0.1,
    )


def test_a_call_with_one_interruption_one_backchannel_and_one_long_silence_has_exact_figures() -> None:
    timing = analyze(CALL, [turn("cs", "caller", 2.98, 3.5), turn("caller", "cs", 5.98, 6.4)])
    assert timing.overlaps == [
        Overlap(start=9.0, end=10.0, duration_s=1.0, by="caller"),
        Overlap(start=17.0, end=17.5, duration_s=0.5, by="caller"),
    ]
    assert timing.overlap_s == 1.5
    # Anybody talking: 0-3, 3.5-6, 6.4-12, 16-18 = 3 + 2.5 + 5.6 + 2 = 13.1 s.
    assert timing.speech_s == 13.1
    assert timing.overlap_ratio == round(1.5 / 13.1, 4)
    # The 17 s "mm-hm" ends before cs stops: an overlap, no interruption.
    assert timing.interruptions == [
        Interruption(by="caller", of="cs", at=9.0, yielded_at=10.0, time_to_yield_ms=1000.0)
    ]
    assert timing.time_to_yield_ms == 1000.0
    assert timing.silences == [Silence(start=12.0, end=16.0, duration_s=4.0)]
    assert timing.max_silence_s == 4.0
    assert [(t.from_, t.to, t.at, t.gap_ms) for t in timing.turns] == [
        ("cs", "caller", 3.5, 520.0), ("caller", "cs", 6.4, 420.0)
    ]
    assert timing.turn_gap_ms is not None and (timing.turn_gap_ms.p50, timing.turn_gap_ms.p95) == (420.0, 520.0)
    assert [(s.start, s.end) for s in timing.speech["cs"]] == CALL["cs"]


def test_no_speech_gives_empty_figures_and_no_ratio() -> None:
    timing = analyze({})
    assert timing.speech == {"caller": [], "cs": []}
    assert (timing.speech_s, timing.overlap_s, timing.overlap_ratio) == (0.0, 0.0, None)
    assert (timing.overlaps, timing.interruptions, timing.silences, timing.turns) == ([], [], [], [])
    assert (timing.time_to_yield_ms, timing.max_silence_s, timing.turn_gap_ms) == (None, 0.0, None)


def test_one_party_only_has_no_overlap_and_a_ratio_of_zero() -> None:
    timing = analyze({"cs": [(1.0, 2.0), (5.0, 6.0)]})
    assert (timing.overlap_s, timing.overlap_ratio, timing.max_silence_s) == (0.0, 0.0, 3.0)
    assert timing.silences == [Silence(start=2.0, end=5.0, duration_s=3.0)]


def test_touching_intervals_neither_overlap_nor_leave_a_silence() -> None:
    speech = {"cs": [(0.0, 2.0)], "caller": [(2.0, 4.0)]}
    assert overlaps(speech) == []
    assert interruptions(speech) == []
    assert silences(speech) == []
    timing = analyze(speech)
    assert (timing.speech_s, timing.max_silence_s, timing.overlap_ratio) == (4.0, 0.0, 0.0)


def test_a_partys_own_touching_or_overlapping_stretches_are_one() -> None:
    assert merge([(2.0, 3.0), (0.0, 1.0), (1.0, 2.0), (2.5, 4.0), (5.0, 5.0)]) == [(0.0, 4.0)]


def test_a_nested_stretch_is_an_overlap_by_the_inner_party_but_no_interruption() -> None:
    speech = {"cs": [(0.0, 10.0)], "caller": [(2.0, 3.0)]}
    assert overlaps(speech) == [Overlap(start=2.0, end=3.0, duration_s=1.0, by="caller")]
    assert interruptions(speech) == []


def test_simultaneous_starts_overlap_with_nobody_coming_in_and_no_interruption() -> None:
    speech = {"cs": [(1.0, 2.0)], "caller": [(1.0, 3.0)]}
    assert overlaps(speech) == [Overlap(start=1.0, end=2.0, duration_s=1.0, by=None)]
    assert interruptions(speech) == []


def test_stopping_together_is_no_interruption_the_interrupter_must_outlast() -> None:
    assert interruptions({"cs": [(0.0, 2.0)], "caller": [(1.0, 2.0)]}) == []


def test_the_yield_window_decides_between_an_interruption_and_talking_over() -> None:
    speech = {"cs": [(0.0, 5.0)], "caller": [(2.0, 6.0)]}  # cs keeps talking 3 s after the caller came in
    assert interruptions(speech) == []
    assert interruptions(speech, yield_window_s=3.0) == [
        Interruption(by="caller", of="cs", at=2.0, yielded_at=5.0, time_to_yield_ms=3000.0)
    ]
    # Exactly at the window's edge still counts.
    assert len(interruptions(speech, yield_window_s=3.0)) == 1


def test_interruptions_both_ways_are_in_time_order_with_the_median_time_to_yield() -> None:
    speech = {"cs": [(0.0, 2.0), (2.5, 5.0), (9.0, 11.0)], "caller": [(1.5, 3.0), (4.0, 9.4)]}
    timing = analyze(speech)
    # caller at 1.5 (cs yields at 2.0), cs at 2.5 (caller yields at 3.0), caller at 4.0 (cs yields at 5.0);
    # cs at 9.0 (caller yields at 9.4).
    assert [(c.by, c.at, c.time_to_yield_ms) for c in timing.interruptions] == [
        ("caller", 1.5, 500.0), ("cs", 2.5, 500.0), ("caller", 4.0, 1000.0), ("cs", 9.0, 400.0)
    ]
    assert timing.time_to_yield_ms == 500.0
    assert timing.overlap_s == 0.5 + 0.5 + 1.0 + 0.4


def test_silences_are_listed_from_the_threshold_but_the_longest_is_always_measured() -> None:
    speech = {"cs": [(0.0, 1.0), (2.5, 3.0)], "caller": [(5.0, 6.0)]}
    timing = analyze(speech, silence_threshold_s=2.0)
    assert timing.silences == [Silence(start=3.0, end=5.0, duration_s=2.0)]
    assert timing.max_silence_s == 2.0
    assert analyze(speech, silence_threshold_s=2.5).silences == []
    assert analyze(speech, silence_threshold_s=1.5).max_silence_s == 2.0


def summary_with(timing: CallTiming | None) -> CallSummary:
    return CallSummary(
        call_id="c1", scenario="s", title="S", state="ended", end_reason="caller_hangup", ended_by="caller",
        error=None, started_at=0.0, duration_s=20.0, turns=[], heard={}, tool_calls=[], legs=[], relay=None,
        turn_latency=TurnLatencySummary(turns=[], count=0, total_ms=None, bridge_ms=None, relay_ms=None),
        artifacts={}, events=0, out_dir="x", timing=timing,
    )


def verdict(entry: dict[str, object], timing: CallTiming | None) -> tuple[bool, str, object]:
    exp = Expectation.model_validate({"name": "n", **entry})
    (v,) = evaluate([exp], summary_with(timing), call_dir=Path("."))
    assert v.kind == next(k for k in entry if k.startswith(("max_", "min_")))
    return v.passed, v.detail, v.evidence


def test_max_overlap_s_judges_the_longest_overlap_with_it_as_evidence() -> None:
    timing = analyze(CALL)
    passed, detail, evidence = verdict({"max_overlap_s": 1.0}, timing)
    assert passed and detail == "longest overlap 1.000 s at 9.000 s (<= 1 s)"
    assert evidence == {
        "overlap": {"start": 9.0, "end": 10.0, "duration_s": 1.0, "by": "caller"}, "overlaps": 2, "overlap_s": 1.5
    }
    passed, detail, _ = verdict({"max_overlap_s": 0.9}, timing)
    assert not passed and detail == "longest overlap 1.000 s at 9.000 s (> 0.9 s)"
    passed, detail, evidence = verdict({"max_overlap_s": 0}, analyze({"cs": [(0.0, 1.0)]}))
    assert passed and evidence == {"overlaps": 0, "overlap_s": 0.0}


def test_max_silence_s_judges_the_longest_silence_with_it_as_evidence() -> None:
    timing = analyze(CALL)
    passed, detail, evidence = verdict({"max_silence_s": 4}, timing)
    assert passed and detail == "longest silence 4.000 s at 12.000 s (<= 4 s)"
    assert evidence == {"max_silence_s": 4.0, "silence": {"start": 12.0, "end": 16.0, "duration_s": 4.0}}
    passed, detail, _ = verdict({"max_silence_s": 3.5}, timing)
    assert not passed and detail == "longest silence 4.000 s at 12.000 s (> 3.5 s)"


def test_max_interruptions_counts_all_or_one_partys() -> None:
    timing = analyze(CALL)
    passed, detail, evidence = verdict({"max_interruptions": 0}, timing)
    assert not passed and detail == "1 interruptions (> 0): caller cut in on cs at 9.000 s, who yielded 1000 ms later"
    assert evidence == {"interruptions": [
        {"by": "caller", "of": "cs", "at": 9.0, "yielded_at": 10.0, "time_to_yield_ms": 1000.0}
    ]}
    assert verdict({"max_interruptions": 1}, timing)[0]
    passed, detail, evidence = verdict({"max_interruptions": 0, "by": "cs"}, timing)
    assert passed and detail == "0 interruptions by cs (<= 0)" and evidence == {"interruptions": []}


def test_min_interruptions_asks_for_at_least_so_many_with_them_as_evidence() -> None:
    timing = analyze(CALL)
    passed, detail, evidence = verdict({"min_interruptions": 1, "by": "caller"}, timing)
    assert passed
    assert detail == "1 interruptions by caller (>= 1): caller cut in on cs at 9.000 s, who yielded 1000 ms later"
    assert evidence == {"interruptions": [
        {"by": "caller", "of": "cs", "at": 9.0, "yielded_at": 10.0, "time_to_yield_ms": 1000.0}
    ]}
    passed, detail, evidence = verdict({"min_interruptions": 2}, timing)
    assert not passed and detail.startswith("1 interruptions (< 2): ")
    passed, detail, evidence = verdict({"min_interruptions": 1, "by": "cs"}, timing)
    assert not passed and detail == "0 interruptions by cs (< 1)" and evidence == {"interruptions": []}


def test_talk_over_criteria_fail_on_a_call_without_a_timeline() -> None:
    for entry in ({"max_overlap_s": 1.0}, {"max_silence_s": 1.0}, {"max_interruptions": 0}, {"min_interruptions": 1}):
        passed, detail, evidence = verdict(entry, None)
        assert not passed and evidence is None
        assert detail == "the call has no timing analysis (its relay has no packet timeline)"


def test_the_bridge_records_speech_stretches_off_speech_packets_only() -> None:
    clock = {"now": 0.0}
    obs = TurnLatency(now=lambda: clock["now"], perf=lambda: 100.0)

    def packet(party: str, t: float, size: int) -> None:
        clock["now"] = t
        obs.on_packet(party, RtpAudio(b"x" * size, 0, 0, False, 100.0))

    for i in range(10):  # cs speaks 1.00-1.18 (packets), then a 0.2 s pause (kept inside), then 1.40-1.46
        packet("cs", 1.0 + i * 0.02, 40)
    for i in range(4):
        packet("cs", 1.4 + i * 0.02, 40)
    packet("cs", 1.6, 3)  # silence packets are not speech
    packet("human", 2.0, 40)  # a human who took over speaks for the caller; 0.54 s after cs: a new stretch
    packet("cs", 2.0, 40)  # over it: one overlap frame
    speech = obs.speech()
    assert [(round(a, 4), round(b, 4)) for a, b in speech["cs"]] == [(1.0, 1.46 + FRAME_S), (2.0, 2.0 + FRAME_S)]
    assert [(round(a, 4), round(b, 4)) for a, b in speech["caller"]] == [(2.0, 2.0 + FRAME_S)]
    timing = obs.timing()
    assert timing.overlaps == [Overlap(start=2.0, end=2.02, duration_s=0.02, by=None)]
    assert [(t.from_, t.to) for t in timing.turns] == [(t.from_, t.to) for t in obs.turns]


def test_the_console_lines_give_the_headline_figures_each_interruption_and_each_long_silence() -> None:
    timing = analyze(CALL, [turn("cs", "caller", 2.98, 3.5), turn("caller", "cs", 5.98, 6.4)])
    assert format_timing(timing) == [
        "timing: speech 13.10 s, overlap 1.50 s (11.5%) in 2 overlaps, 1 interruptions (time to yield 1000 ms), "
        "longest silence 4.00 s, turn gap p50 420 ms, p95 520 ms",
        "  interruption at   9.00: caller cut in on cs, who stopped 1000 ms later",
        "  silence  12.00- 16.00: 4.00 s",
    ]
    assert format_timing(analyze({})) == [
        "timing: speech 0.00 s, overlap 0.00 s (-) in 0 overlaps, 0 interruptions, longest silence 0.00 s, no turns"
    ]

"""The timeline figure of a call, drawn from a synthetic summary whose every mark's place is known: each lane's
speech, the overlaps across both lanes, the interruption's mark and its yield bar, the tool calls, the blackout
window; well-formed standalone SVG whatever the text in it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tests.summaries import make_summary
from voicebridge.lab.timeline_figure import LABEL_W, LANES, RIGHT_PAD, WIDTH, render_timeline
from voicebridge.lab.timing import analyze

pytestmark = pytest.mark.unit
NS = "{http://www.w3.org/2000/svg}"
SPEECH = {
    "cs": [(0.0, 3.0), (6.4, 10.0), (16.0, 18.0)],
    "caller": [(3.5, 6.0), (9.0, 12.0), (17.0, 17.5)],
}
PLOT_W = WIDTH - LABEL_W - RIGHT_PAD  # 820 px for 20 s: 41 px a second


def x(t: float) -> float:
    return LABEL_W + t / 20.0 * PLOT_W


def tool(name: str, t: float, ok: bool, duration_ms: float = 200.0) -> dict[str, Any]:
    return {
        "leg": "cs", "call_id": f"c_{name}", "name": name, "arguments": {}, "output": "{}", "ok": ok,
        "error": None if ok else "no such order", "duration_ms": duration_ms, "sent": True, "t": t,
    }


def impair(blackout: dict[str, float] | None) -> dict[str, Any]:
    return {
        "spec": "blackout=2s@1.5s" if blackout else "loss=1%", "seed": 0, "packets_in": 100, "dropped": 0,
        "lost_random": 0, "lost_burst": 0, "lost_blackout": 0, "duplicated": 0, "reordered": 0, "forwarded": 100,
        "applied_loss": 0.0, "delay_ms": {"count": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}, "blackout": blackout,
    }


def figure(**fields: Any) -> ET.Element:
    summary = make_summary(duration_s=20.0, timing=analyze(SPEECH).model_dump(mode="json"), **fields)
    return ET.fromstring(render_timeline(summary))  # well-formed XML, or this raises


def marks(root: ET.Element, cls: str, tag: str = "rect") -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}{tag}") if e.get("class") == cls]


def test_each_partys_speech_is_drawn_in_its_lane_at_its_times() -> None:
    root = figure()
    assert root.tag == f"{NS}svg" and root.get("data-span-s") == "20"
    for party, spans in SPEECH.items():
        rects = marks(root, f"speech {party}")
        assert [(float(r.get("data-start", "")), float(r.get("data-end", ""))) for r in rects] == spans
        for r, (a, b) in zip(rects, spans, strict=True):
            assert float(r.get("x", "")) == pytest.approx(x(a), abs=0.01)
            assert float(r.get("width", "")) == pytest.approx(x(b) - x(a), abs=0.01)
            assert LANES[party] <= float(r.get("y", "")) < LANES[party] + 22


def test_overlaps_span_both_lanes_and_the_interruption_is_marked_where_the_caller_came_in() -> None:
    root = figure()
    overlaps = marks(root, "overlap")
    assert [(float(r.get("x", "")), float(r.get("width", ""))) for r in overlaps] == [
        pytest.approx((x(9.0), x(10.0) - x(9.0)), abs=0.01), pytest.approx((x(17.0), x(17.5) - x(17.0)), abs=0.01),
    ]
    assert all(float(r.get("y", "")) == LANES["caller"] and float(r.get("height", "")) == 52 for r in overlaps)
    (cut,) = marks(root, "interruption", "g")
    assert (cut.get("data-by"), cut.get("data-of"), cut.get("data-at")) == ("caller", "cs", "9.0")
    assert cut.get("data-time-to-yield-ms") == "1000.0"
    line = cut.find(f"{NS}line")
    assert line is not None and float(line.get("x1", "")) == pytest.approx(x(9.0), abs=0.01)
    (bar,) = [e for e in cut.iter(f"{NS}line") if e.get("class") == "yield"]
    assert float(bar.get("x2", "")) == pytest.approx(x(10.0), abs=0.01)  # the CS agent yielded at 10 s
    title = cut.find(f"{NS}title")
    assert title is not None and title.text == "caller cut in on cs at 9.00 s; cs yielded 1000 ms later"


def test_tool_calls_are_dots_where_their_result_came_with_their_run_before_it() -> None:
    root = figure(tool_calls=[tool("lookup_order", 5.0, True), tool("issue_refund", 12.0, False, 500.0)])
    ok, failed = marks(root, "tool ok", "g"), marks(root, "tool failed", "g")
    assert [g.get("data-name") for g in ok] == ["lookup_order"] and [g.get("data-name") for g in failed] == [
        "issue_refund"
    ]
    dot = failed[0].find(f"{NS}circle")
    run = failed[0].find(f"{NS}rect")
    assert dot is not None and float(dot.get("cx", "")) == pytest.approx(x(12.0), abs=0.01)
    assert run is not None and float(run.get("x", "")) == pytest.approx(x(11.5), abs=0.01)


def test_a_blackout_is_hatched_over_the_lane_of_the_party_whose_packets_it_drops() -> None:
    root = figure(impairment={"caller_to_cs": impair({"start": 2.0, "end": 4.0}), "cs_to_caller": impair(None)})
    (rect,) = marks(root, "blackout caller_to_cs")
    assert float(rect.get("x", "")) == pytest.approx(x(2.0), abs=0.01)
    assert float(rect.get("width", "")) == pytest.approx(x(4.0) - x(2.0), abs=0.01)
    assert float(rect.get("y", "")) < LANES["caller"] + 22 < LANES["cs"]  # the caller's lane, not the CS agent's
    assert not marks(root, "blackout cs_to_caller") and not marks(figure(), "blackout caller_to_cs")


def test_the_axis_has_round_ticks_and_text_from_the_call_is_escaped() -> None:
    root = figure(tool_calls=[tool("<script>alert(1)</script>", 1.0, True)], scenario='a "quoted" & <odd> name')
    ticks = [e for e in root.iter(f"{NS}line") if e.get("class") == "tick"]
    assert [round(float(t.get("x1", "")), 2) for t in ticks] == [round(x(t), 2) for t in range(0, 21, 2)]
    assert not list(root.iter(f"{NS}script")) and not list(root.iter("script"))
    assert [g.get("data-name") for g in marks(root, "tool ok", "g")] == ["<script>alert(1)</script>"]


def test_a_call_without_a_speech_timeline_still_gets_a_figure_saying_so() -> None:
    summary = make_summary(duration_s=4.0, tool_calls=[tool("lookup_order", 1.0, True)])
    root = ET.fromstring(render_timeline(summary))
    assert not marks(root, "speech caller") and marks(root, "tool ok", "g")
    assert any("no speech timeline" in (t.text or "") for t in root.iter(f"{NS}text"))

"""`voicebridge sdp explain FILE [--other FILE2] [--expect-loopback] [--json]` through the real CLI parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicebridge.cli import main

pytestmark = pytest.mark.unit
SDP = Path(__file__).resolve().parents[1] / "fixtures" / "sdp"
OFFER, ANSWER = str(SDP / "aiortc_offer.sdp"), str(SDP / "openai_answer.sdp")


def test_pair_as_json_with_and_without_expect_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sdp", "explain", OFFER, "--other", ANSWER, "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert ex["role"] == "offer" and ex["counterpart"]["role"] == "answer"
    assert ex["counterpart"]["session"]["ice_lite"] is True
    assert "non_loopback_candidate" not in {w["code"] for w in ex["counterpart"]["warnings"]}
    assert main(["sdp", "explain", OFFER, "--other", ANSWER, "--expect-loopback", "--json"]) == 0
    ex = json.loads(capsys.readouterr().out)
    (w,) = [w for w in ex["counterpart"]["warnings"] if w["code"] == "non_loopback_candidate"]
    assert "192.0.2.10" in w["message"]


def test_text_shows_both_sides_and_the_counterpart_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sdp", "explain", ANSWER, "--other", OFFER, "--expect-loopback"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SDP answer: 2 media section(s), BUNDLE 0 1, ice-lite")
    assert "counterpart SDP offer" in out and "fmtp minptime=10;useinbandfec=1" in out
    assert "! non_loopback_candidate" in out  # the answer's own warning, at the end


def test_unreadable_counterpart_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.sdp"
    assert main(["sdp", "explain", OFFER, "--other", str(missing)]) == 2
    assert f"{missing}: cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.sdp"
    bad.write_text("v=0\r\nthis is not sdp\r\n")
    assert main(["sdp", "explain", OFFER, "--other", str(bad)]) == 2
    assert "counterpart SDP: line 2" in capsys.readouterr().err

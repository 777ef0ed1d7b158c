"""`voicebridge test`: real calls against the emulator (a child), judged by their criteria, with the verdict in the
exit status, report.json, JUnit XML and report.html. One run of two scenarios at once: the built-in
`unknown_order` (its tool fails; it must pass offline) and the short call of test_call_criteria whose
expectations are deliberately wrong (it must fail, naming the criteria)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.integration.test_call_criteria import WRONG
from voicebridge.lab.report import LabReport
from voicebridge.scenarios.model import BUILTIN_DIR

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
_BACKEND_ENV = ("OPENAI_API_KEY", "VOICEBRIDGE_BASE_URL")


def voicebridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicebridge.cli", *args],
        capture_output=True, text=True, timeout=110, cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in _BACKEND_ENV},  # the emulator, as a child
    )


def test_a_matrix_run_passes_one_scenario_and_fails_the_other_naming_its_criterion(tmp_path: Path) -> None:
    wrong = tmp_path / "short_call.toml"
    wrong.write_text(WRONG)
    out, junit = tmp_path / "out", tmp_path / "ci" / "junit.xml"
    p = voicebridge("test", "unknown_order", str(wrong), "--out", str(out), "--junit", str(junit), "--json")
    assert p.returncode == 1, p.stderr[-3000:]  # 1 of 2 passed, below the default --min-pass-rate 1.0

    report = LabReport.model_validate_json(p.stdout.strip().splitlines()[-1])
    assert LabReport.model_validate_json((out / "report.json").read_text()) == report
    assert (report.total, report.passed, report.failed, report.errors, report.pass_rate) == (2, 1, 1, 0, 0.5)
    assert report.ok is False and report.backend == "emulator"
    runs = {r.scenario: r for r in report.runs}
    good, bad = runs["unknown_order"], runs["short_call"]
    assert (good.name, good.passed, good.end_reason) == ("unknown_order[good]#1", True, "caller_hangup")
    # unknown_order: the lookup failed, the agent apologised, nothing was refunded.
    assert [(c.name, c.passed) for c in good.criteria] == [
        ("the agent apologises for the order", True), ("the lookup failed", True), ("no refund", True),
        ("the caller hung up", True),
    ]
    assert good.tool_errors == 1 and good.timing is not None and good.timing.turn_gap_ms.p50 is not None
    assert [c.name for c in bad.failed_criteria] == ["the agent offers a refund", "nobody hangs up"]
    assert [(c.name, c.skipped) for c in bad.criteria if c.skipped] == [("judged politeness", True)]
    assert "FAIL the agent offers a refund [said]: no line cs said contains 'refund'" in p.stderr
    assert re.search(r"\[\d/2\] short_call\[good\]#1 test_\w+ FAILED caller_hangup", p.stderr)  # progress lines

    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"unknown_order[good]#1", "short_call[good]#1"}
    assert cases["unknown_order[good]#1"].find("failure") is None
    failures = cases["short_call[good]#1"].findall("failure")
    assert [f.get("message", "").split(":")[0] for f in failures] == ["the agent offers a refund", "nobody hangs up"]
    assert json.loads(failures[1].text or "")["name"] == "hangup"  # the evidence: the offending tool call

    # report.html: both scenarios, the failing criterion, a player per recording; links still work once moved.
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    page = (moved / "report.html").read_text()
    assert "unknown_order" in page and "the agent offers a refund" in page
    sources = re.findall(r"<audio [^>]*src='([^']*)'", page)
    figures = re.findall(r"<img [^>]*src='([^']*timeline.svg)'", page)
    assert len(sources) == 2 and len(figures) == 2
    for href in [*sources, *figures, *re.findall(r"href='([^'#]+)'", page)]:
        assert not Path(href).is_absolute() and (moved / href).is_file(), href


def test_bad_criteria_are_reported_before_any_call(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    late = (BUILTIN_DIR / "late_order.toml").read_text()
    bad.write_text(late.replace('name = "late_order"', 'name = "bad"') + '[[expect]]\nname = "x"\ntool = "teleport"\n')
    p = voicebridge("test", "quick_bye", str(bad), "--out", str(tmp_path / "out"))
    assert p.returncode == 2
    assert "bad scenario" in p.stderr and "expect[6] ('x'): `tool` = 'teleport' is not one of" in p.stderr
    assert not (tmp_path / "out").exists()  # no call was placed
    p = voicebridge("test", "quick_bye", "--impair", "good", "--impair", "loss=5", "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and "--impair: impairment field 'loss': '5' is a fraction above 1" in p.stderr
    assert not (tmp_path / "out").exists()

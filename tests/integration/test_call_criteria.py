"""Pass criteria on a real call: a short emulator call whose expectations are deliberately wrong ends well but
fails, naming each failed criterion with its evidence (console, --json, summary.json, exit code); a scenario with a
bad criterion is refused before any call is placed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_call_cli import run_cli
from tests.integration.test_call_failure import SHORT

pytestmark = pytest.mark.integration

WRONG = SHORT + """
[[expect]]
name = "the caller hung up"
end_reason = "caller_hangup"

[[expect]]
name = "the agent offers a refund"
said = "cs"
contains = "refund"

[[expect]]
name = "nobody hangs up"
no_tool = "hangup"

[[expect]]
name = "judged politeness"
judge = "Was the agent polite?"
"""


async def test_a_call_with_wrong_expectations_fails_naming_the_criteria(tmp_path: Path) -> None:
    scenario = tmp_path / "short_call.toml"
    scenario.write_text(WRONG)
    out_dir = tmp_path / "out"
    code, out, err = await run_cli("--scenario", str(scenario), "--json", "--out", str(out_dir))
    assert code == 1, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["end_reason"] == "caller_hangup"  # the call itself went well
    assert summary["passed"] is False
    verdicts = {v["name"]: v for v in summary["criteria"]}
    assert list(verdicts) == ["the caller hung up", "the agent offers a refund", "nobody hangs up", "judged politeness"]
    assert verdicts["the caller hung up"]["passed"] is True
    refund = verdicts["the agent offers a refund"]
    assert (refund["passed"], refund["evidence"]) == (False, None)
    assert refund["detail"] == "no line cs said contains 'refund' (1 lines)"
    hangup = verdicts["nobody hangs up"]
    assert hangup["passed"] is False and hangup["evidence"]["name"] == "hangup"
    assert hangup["evidence"]["leg"] == "caller"
    assert (verdicts["judged politeness"]["skipped"], verdicts["judged politeness"]["passed"]) == (True, False)
    assert "criteria: 1/3 passed" in err
    assert "FAIL the agent offers a refund [said]: no line cs said contains 'refund' (1 lines)" in err
    assert "voicebridge call: criteria failed: the agent offers a refund, nobody hangs up" in err
    written = json.loads((out_dir / "summary.json").read_text())
    assert written["criteria"] == summary["criteria"] and written["passed"] is False


async def test_a_bad_criterion_is_refused_before_any_call(tmp_path: Path) -> None:
    scenario = tmp_path / "short_call.toml"
    scenario.write_text(SHORT + '\n[[expect]]\nname = "refunded"\ntool = "issue_refund"\n')
    out_dir = tmp_path / "out"
    code, _, err = await run_cli("--scenario", str(scenario), "--out", str(out_dir))
    assert code == 2
    assert (
        f"voicebridge call: bad scenario: {scenario}: expect[0] ('refunded'): `tool` = 'issue_refund' is not one "
        "of the scenario's tools (hangup)"
    ) in err
    assert not out_dir.exists()  # no call was placed

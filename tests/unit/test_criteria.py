"""Pass criteria (voicebridge/lab/criteria.py): every kind of `[[expect]]` entry, passing and failing, on hand-built
call results, each verdict with its exact evidence; and every kind of bad entry refused when the scenario is
loaded, naming the file, the entry and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voicebridge.lab.criteria import check_scenario, evaluate, percentile
from voicebridge.results import (
    CallSummary,
    CriterionVerdict,
    ToolCallRecord,
    TranscriptLine,
    TurnLatencySummary,
    TurnRecord,
    criteria_passed,
)
from voicebridge.scenarios.expect import Expectation
from voicebridge.scenarios.model import ScenarioError, load_scenario, parse_scenario
from voicebridge.scenarios.shop import DB_NAME, Shop, seed_database

pytestmark = pytest.mark.unit


def tool_call(name: str, t: float, ok: bool = True, leg: str = "cs", **arguments: Any) -> ToolCallRecord:
    return ToolCallRecord(
        leg=leg, call_id=f"fc_{name}_{t}", name=name, arguments=arguments, output="{}", ok=ok,
        error=None if ok else "it failed", duration_ms=1.0, sent=True, t=t,
    )


def line(speaker: str, text: str, start: float, kind: str = "said") -> TranscriptLine:
    leg = speaker if kind == "said" else ("cs" if speaker == "caller" else "caller")
    return TranscriptLine(
        gap_s=None, speaker=speaker, text=text, start=start, end=start + 1.0, kind=kind,  # type: ignore[arg-type]
        leg=leg, item_id=f"item_{start}",
    )


def turn(from_: str, to: str, total_ms: float) -> TurnRecord:
    return TurnRecord(
        from_=from_, to=to, speech_end=1.0, reply_start=1.0 + total_ms / 1000, total_ms=total_ms, bridge_ms=0.5,
        relay_ms=0.5, tools_ms=0.0, gating_ms=0.0, other_ms=total_ms - 0.5,
    )


LOOKUP = tool_call("lookup_order", 4.0, order_id="4217")
REFUND = tool_call("issue_refund", 5.0, order_id="4217", reason="late delivery")
HANGUP = tool_call("hangup", 9.0, leg="caller")
GREETING = line("cs", "Thank you for calling the help desk.", 0.5)
REFUNDED = line("cs", "I have issued a Refund of forty two dollars.", 6.0)
BYE = line("caller", "Thank you, goodbye.", 8.0)
HEARD = line("cs", "I have issued a refund of 42 dollars", 6.1, kind="heard")
TURNS = [turn("cs", "caller", ms) for ms in (100.0, 300.0, 500.0)] + [turn("caller", "cs", 900.0)]


def summary(**changes: Any) -> CallSummary:
    base = CallSummary(
        call_id="call_1", scenario="late_order", title="t", state="ended", end_reason="caller_hangup",
        ended_by="caller", error=None, started_at=1.0, duration_s=12.5, turns=[GREETING, REFUNDED, BYE],
        heard={"caller": [HEARD], "cs": []}, tool_calls=[LOOKUP, REFUND, HANGUP], legs=[], relay=None,
        turn_latency=TurnLatencySummary(turns=TURNS, count=4, total_ms=None, bridge_ms=None, relay_ms=None),
        artifacts={}, events=0, out_dir="out",
    )
    return base.model_copy(update=changes)


def judge(
    entry: dict[str, Any], result: CallSummary | None = None, folder: Path = Path("."), **kw: Any
) -> CriterionVerdict:
    [verdict] = evaluate([Expectation.model_validate({"name": "c", **entry})], result or summary(), folder, **kw)
    assert verdict.name == "c"
    return verdict


def dump(record: ToolCallRecord | TranscriptLine) -> Any:
    return record.model_dump(mode="json")


# -- tools -------------------------------------------------------------------------------------------------------


def test_a_tool_call_matching_arguments_values_and_regexes_passes_with_the_call_as_evidence() -> None:
    v = judge({"tool": "issue_refund", "args": {"order_id": "4217", "reason": {"regex": "^late"}}, "count": 1,
               "ok": True, "before": "hangup", "after": "lookup_order"})  # fmt: skip
    assert (v.kind, v.passed, v.skipped, v.evidence) == ("tool", True, False, dump(REFUND))
    assert "called 1 times, first at 5.000 s" in v.detail


@pytest.mark.parametrize(
    ("entry", "detail", "evidence"),
    [
        ({"tool": "issue_refund", "args": {"order_id": "4218"}},
         'issue_refund with arguments matching {"order_id": "4218"}: never called (1 other calls of issue_refund)',
         [dump(REFUND)]),
        ({"tool": "issue_refund", "args": {"reason": {"regex": "^lost"}}},
         'issue_refund with arguments matching {"reason": {"regex": "^lost"}}: never called '
         "(1 other calls of issue_refund)", [dump(REFUND)]),
        ({"tool": "issue_refund", "ok": False},
         "issue_refund that failed: never called (1 other calls of issue_refund)", [dump(REFUND)]),
        ({"tool": "issue_refund", "count": 2}, "issue_refund: called 1 times, expected 2", [dump(REFUND)]),
        ({"tool": "lookup_order", "count": 0}, "lookup_order: called 1 times, expected 0", [dump(LOOKUP)]),
        ({"tool": "issue_refund", "before": "lookup_order"},
         "issue_refund: first at 5.000 s, after lookup_order at 4.000 s",
         {"call": dump(REFUND), "other": dump(LOOKUP)}),
        ({"tool": "lookup_order", "after": "issue_refund"},
         "lookup_order: first at 4.000 s, not after issue_refund (issue_refund at 5.000 s)",
         {"call": dump(LOOKUP), "other": dump(REFUND)}),
        ({"tool": "lookup_order", "args": {"order_id": 4217}},  # a number is not the string the model sent
         'lookup_order with arguments matching {"order_id": 4217}: never called (1 other calls of lookup_order)',
         [dump(LOOKUP)]),
    ],
)  # fmt: skip
def test_a_tool_criterion_fails_naming_what_it_found(entry: dict[str, Any], detail: str, evidence: Any) -> None:
    v = judge(entry)
    assert (v.passed, v.detail, v.evidence) == (False, detail, evidence)


def test_a_tool_never_called_fails_with_no_evidence() -> None:
    v = judge({"tool": "issue_refund"}, summary(tool_calls=[LOOKUP, HANGUP]))
    assert (v.passed, v.detail, v.evidence) == (False, "issue_refund: never called", None)
    assert judge({"tool": "issue_refund", "count": 0}, summary(tool_calls=[LOOKUP])).passed


def test_no_tool_passes_when_never_called_and_fails_with_the_offending_call() -> None:
    v = judge({"no_tool": "issue_refund", "args": {"order_id": "4218"}})
    assert (v.kind, v.passed, v.evidence) == ("no_tool", True, None)
    v = judge({"no_tool": "issue_refund"})
    assert (v.passed, v.detail, v.evidence) == (False, "issue_refund: called at 5.000 s", dump(REFUND))


# -- state -------------------------------------------------------------------------------------------------------


@pytest.fixture
def shop_dir(tmp_path: Path) -> Path:
    seed_database(tmp_path / DB_NAME)
    return tmp_path


REFUNDS = "SELECT COUNT(*) FROM refunds WHERE order_id = '4217'"


def test_a_query_on_the_real_tool_database_passes_or_fails_with_its_value(shop_dir: Path) -> None:
    v = judge({"query": REFUNDS, "equals": 1}, folder=shop_dir)
    assert (v.kind, v.passed, v.detail, v.evidence) == ("query", False, "gave 0, expected 1", {"value": 0, "rows": 1})
    Shop(shop_dir / DB_NAME).issue_refund("4217", "late delivery")
    v = judge({"query": REFUNDS, "equals": 1}, folder=shop_dir)
    assert (v.passed, v.detail, v.evidence) == (True, "gave 1, expected 1", {"value": 1, "rows": 1})
    v = judge({"query": "SELECT status FROM orders WHERE order_id = '4217'", "equals": "refunded"}, folder=shop_dir)
    assert (v.passed, v.evidence) == (True, {"value": "refunded", "rows": 1})
    v = judge({"query": "SELECT status FROM orders WHERE order_id = '9'", "equals": "x"}, folder=shop_dir)
    assert (v.passed, v.detail, v.evidence) == (False, "gave no row, expected 'x'", {"value": None, "rows": 0})
    v = judge({"query": "SELECT 1", "equals": True}, folder=shop_dir)  # true is not 1
    assert not v.passed


def test_a_query_reads_only_and_fails_without_a_database(shop_dir: Path, tmp_path: Path) -> None:
    v = judge({"query": "DELETE FROM orders", "equals": 0}, folder=shop_dir)
    assert (v.passed, v.detail) == (False, "the query failed: not authorized")
    empty = tmp_path / "empty"
    empty.mkdir()
    v = judge({"query": REFUNDS, "equals": 1}, folder=empty)
    assert (v.passed, v.detail, v.evidence) == (
        False, "the query failed: name the tool database with `database` (the tools write none)", None
    )


def hook_refunded(result: CallSummary) -> tuple[bool, str]:
    refunds = [c for c in result.tool_calls if c.name == "issue_refund" and c.ok]
    return len(refunds) == 1, f"{len(refunds)} refunds"


def hook_raises(result: CallSummary) -> bool:
    raise RuntimeError("no idea")


def hook_asserts(result: CallSummary) -> bool:
    assert result.duration_s < 1, "too long"
    return True


def hook_says_maybe(result: CallSummary) -> str:
    return "maybe"


def test_a_check_hook_gets_the_typed_call_result() -> None:
    v = judge({"check": f"{__name__}:hook_refunded"})
    assert (v.kind, v.passed, v.detail, v.evidence) == ("check", True, f"{__name__}:hook_refunded: 1 refunds",
                                                        {"returned": True})  # fmt: skip
    v = judge({"check": f"{__name__}:hook_refunded"}, summary(tool_calls=[LOOKUP]))
    assert (v.passed, v.detail, v.evidence) == (False, f"{__name__}:hook_refunded: 0 refunds", {"returned": False})
    v = judge({"check": f"{__name__}:hook_raises"})
    assert (v.passed, v.detail) == (False, f"{__name__}:hook_raises raised RuntimeError: no idea")
    v = judge({"check": f"{__name__}:hook_asserts"})
    assert (v.passed, v.detail) == (False, f"{__name__}:hook_asserts: too long")
    v = judge({"check": f"{__name__}:hook_says_maybe"})
    assert (v.passed, v.detail) == (False, f"{__name__}:hook_says_maybe returned str, not true or false")


# -- speech ------------------------------------------------------------------------------------------------------


def test_said_and_heard_pass_with_the_transcript_line() -> None:
    v = judge({"said": "cs", "contains": "REFUND"})  # any case
    assert (v.kind, v.passed, v.evidence) == ("said", True, dump(REFUNDED))
    v = judge({"said": "cs", "regex": r"Refund of \w+ two"})
    assert (v.passed, v.evidence) == (True, dump(REFUNDED))
    v = judge({"heard": "caller", "regex": r"\b42\b"})  # what the caller's leg transcribed of the CS agent
    assert (v.kind, v.passed, v.evidence) == ("heard", True, dump(HEARD))
    v = judge({"said": "caller", "not_contains": "refund"})
    assert (v.passed, v.detail, v.evidence) == (True, "no line caller said contains 'refund' (1 lines)", None)


def test_said_and_heard_fail_naming_the_line_or_its_absence() -> None:
    v = judge({"said": "caller", "contains": "refund"})
    assert (v.passed, v.detail, v.evidence) == (False, "no line caller said contains 'refund' (1 lines)", None)
    v = judge({"said": "cs", "regex": "^Refund"})  # case-sensitive unless the regex says (?i)
    assert (v.passed, v.detail, v.evidence) == (False, "no line cs said matches /^Refund/ (2 lines)", None)
    v = judge({"said": "cs", "not_contains": "refund"})
    assert (v.passed, v.evidence) == (False, dump(REFUNDED))
    assert v.detail == "cs said 'refund' at 6.000 s: 'I have issued a Refund of forty two dollars.'"
    v = judge({"heard": "cs", "contains": "refund"})
    assert (v.passed, v.detail) == (False, "no line cs heard contains 'refund' (0 lines)")


# -- the call ----------------------------------------------------------------------------------------------------


def test_end_reason_and_duration() -> None:
    v = judge({"end_reason": "caller_hangup"})
    assert (v.kind, v.passed, v.evidence) == ("end_reason", True, {"end_reason": "caller_hangup"})
    v = judge({"end_reason": "caller_hangup"}, summary(end_reason="idle_timeout"))
    assert (v.passed, v.detail, v.evidence) == (
        False, "end_reason idle_timeout (expected caller_hangup)", {"end_reason": "idle_timeout"}
    )
    v = judge({"max_duration_s": 12.5})
    assert (v.kind, v.passed, v.evidence) == ("max_duration_s", True, {"duration_s": 12.5})
    v = judge({"max_duration_s": 12})
    assert (v.passed, v.detail, v.evidence) == (False, "lasted 12.500 s (> 12 s)", {"duration_s": 12.5})


def test_turn_gaps_at_p50_and_p95_from_the_turn_records() -> None:
    # gaps 100, 300, 500, 900 ms: nearest rank p50 = 300, p95 = 900; the CS agent's replies alone: 900.
    assert (percentile([500.0, 100.0, 900.0, 300.0], 50), percentile([500.0, 100.0, 900.0, 300.0], 95)) == (300, 900)
    v = judge({"max_turn_gap_ms": {"p50": 300, "p95": 900}})
    assert (v.kind, v.passed, v.evidence) == ("max_turn_gap_ms", True, {"turns": 4, "p50_ms": 300.0, "p95_ms": 900.0})
    v = judge({"max_turn_gap_ms": {"p95": 899}})
    assert (v.passed, v.detail) == (False, "turn gaps: p95 900.0 ms > 899 ms")
    v = judge({"max_turn_gap_ms": {"p50": 299.5}, "by": "caller"})  # the caller's replies: 100, 300, 500
    assert (v.passed, v.detail, v.evidence) == (
        False, "turn gaps of caller's replies: p50 300.0 ms > 299.5 ms", {"turns": 3, "p50_ms": 300.0, "p95_ms": 500.0}
    )
    empty = TurnLatencySummary(turns=[], count=0, total_ms=None, bridge_ms=None, relay_ms=None)
    v = judge({"max_turn_gap_ms": {"p95": 1000}}, summary(turn_latency=empty))
    assert (v.passed, v.detail, v.evidence) == (False, "no turn gap was measured", {"turns": 0})


# -- judge, and the call's verdict ----------------------------------------------------------------------------


def test_a_judge_is_skipped_never_passed_without_a_model() -> None:
    v = judge({"judge": "Did the agent apologise?"})
    assert (v.kind, v.passed, v.skipped, v.detail) == ("judge", False, True, "skipped (offline: no OPENAI_API_KEY)")
    v = judge({"judge": "Did the agent apologise?"}, judge="the Realtime endpoint (x) is not OpenAI's")
    assert (v.passed, v.skipped, v.detail) == (False, True, "skipped (the Realtime endpoint (x) is not OpenAI's)")


def test_a_call_passes_when_every_criterion_that_ran_passed() -> None:
    entries = [{"name": "refund", "tool": "issue_refund"}, {"name": "polite", "judge": "Was the agent polite?"}]
    verdicts = evaluate([Expectation.model_validate(e) for e in entries], summary(), Path("."))
    assert [(v.passed, v.skipped) for v in verdicts] == [(True, False), (False, True)]
    assert criteria_passed(verdicts) is True and criteria_passed([]) is None
    good = summary(criteria=verdicts, passed=criteria_passed(verdicts))
    assert good.succeeded
    failed = evaluate([Expectation.model_validate({"name": "x", "no_tool": "hangup"})], summary(), Path("."))
    assert criteria_passed(failed) is False
    assert not summary(criteria=failed, passed=False).succeeded  # it hung up well, but a criterion failed
    assert not summary(end_reason="idle_timeout", criteria=verdicts, passed=True).succeeded


# -- bad criteria are scenario errors at load time -------------------------------------------------------------

SCENARIO = """
tools = "voicebridge.scenarios.shop:build_tools"
[caller]
instructions = "You are a caller."
[cs]
instructions = "You are the help desk."

[[expect]]
name = "fine"
tool = "lookup_order"

[[expect]]
name = "the entry"
"""


def error_of(tmp_path: Path, entry: str) -> str:
    path = tmp_path / "lab.toml"
    path.write_text(SCENARIO + entry + "\n")
    with pytest.raises(ScenarioError) as info:
        check_scenario(load_scenario(path))
    message = str(info.value)
    assert message.startswith(f"{path}: expect[1]")
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        # needs the scenario's tools: checked against a registry built in a temporary folder
        ('tool = "refund"',
         "expect[1] ('the entry'): `tool` = 'refund' is not one of the scenario's tools "
         "(hangup, issue_refund, lookup_order)"),
        ('no_tool = "cancel_order"',
         "expect[1] ('the entry'): `no_tool` = 'cancel_order' is not one of the scenario's tools "
         "(hangup, issue_refund, lookup_order)"),
        ('tool = "issue_refund"\nbefore = "hang_up"',
         "expect[1] ('the entry'): `before` = 'hang_up' is not one of the scenario's tools "
         "(hangup, issue_refund, lookup_order)"),
        ('tool = "issue_refund"\nargs = { order = "1" }',
         "expect[1] ('the entry'): `args`: issue_refund has no parameter 'order' (its parameters: order_id, reason)"),
        ('query = "SELEC 1"\nequals = 1', """expect[1] ('the entry'): `query`: near "SELEC": syntax error"""),
        ('query = "SELECT refunded FROM orders"\nequals = 1',
         "expect[1] ('the entry'): `query`: no such column: refunded"),
        ('query = "UPDATE orders SET status = 1"\nequals = 1',
         "expect[1] ('the entry'): `query`: it may only read (SELECT)"),
        ('query = "SELECT 1; SELECT 2"\nequals = 1',
         "expect[1] ('the entry'): `query`: You can only execute one statement at a time."),
        ('query = "SELECT 1"\nequals = 1\ndatabase = "crm.sqlite"',
         "expect[1] ('the entry'): `query`: the tools write no database 'crm.sqlite' in the call's folder"),
        ('check = "no_such_module:hook"',
         "expect[1] ('the entry'): `check`: 'no_such_module:hook' cannot be loaded: No module named 'no_such_module'"),
        # the entry itself
        ('said = "cs"\nregex = "refund("',
         "expect[1].regex: bad regex 'refund(': missing ), unterminated subpattern at position 6"),
        ('tool = "issue_refund"\nargs = { reason = { regex = "[" } }',
         "expect[1].args: `reason`: bad regex '[': unterminated character set at position 0"),
        ('said = "agent"\ncontains = "hi"', "expect[1].said: expected 'caller' or 'cs', got 'agent' (a string)"),
        ('heard = "cs"', "expect[1]: 'the entry': `heard` needs exactly one of `contains`, `regex`, `not_contains` "
         "(got none)"),
        ('end_reason = "hungup"',
         "expect[1].end_reason: expected 'caller_hangup', 'human_hangup', 'operator_hangup', 'leg_failed', "
         "'max_duration', 'idle_timeout', 'error', 'shutdown' or 'worker_lost', got 'hungup' (a string)"),
        ("max_overlap_s = -1.5", "expect[1].max_overlap_s: expected a number at least 0, got -1.5 (a number)"),
        ("max_silence_s = 0", "expect[1].max_silence_s: expected a number greater than 0, got 0 (an integer)"),
        ("max_interruptions = 1.5", "expect[1].max_interruptions: expected an integer, got 1.5 (a number)"),
        ("min_interruptions = 0", "expect[1].min_interruptions: expected a number at least 1, got 0 (an integer)"),
        ('max_overlap_s = 1\nby = "cs"',
         "expect[1]: 'the entry': `by` does not go with `max_overlap_s` (`max_overlap_s` takes nothing else)"),
        ('tool = "issue_refund"\nsaid = "cs"',
         "expect[1]: 'the entry': needs exactly one of `tool`, `no_tool`, `query`, `check`, `said`, `heard`, "
         "`end_reason`, `max_duration_s`, `max_turn_gap_ms`, `max_overlap_s`, `max_silence_s`, "
         "`max_interruptions`, `min_interruptions`, `judge` (got tool, said)"),
        ('tool = "issue_refund"\nequals = 1',
         "expect[1]: 'the entry': `equals` does not go with `tool` (with `tool`: args, count, ok, before, after)"),
        ('query = "SELECT 1"', "expect[1]: 'the entry': `query` needs `equals` (the value of the first column of the "
         "first row)"),
        ("max_turn_gap_ms = {}", "expect[1].max_turn_gap_ms: needs `p50`, `p95` or both"),
        ('check = "a hook"', """expect[1].check: 'a hook' is not "module:function\""""),
        ('tool = "issue_refund"\ncount = -1', "expect[1].count: expected a number at least 0, got -1 (an integer)"),
        ('tool = "issue_refund"\nwhen = "early"',
         "expect[1].when: unknown field (known: after, args, before, by, check, contains, count, database, end_reason, "
         "equals, heard, judge, max_duration_s, max_interruptions, max_overlap_s, max_silence_s, max_turn_gap_ms, "
         "min_interruptions, name, no_tool, not_contains, ok, query, regex, said, tool)"),
    ],
)  # fmt: skip
def test_each_bad_criterion_is_a_scenario_error_naming_the_file_the_entry_and_the_problem(
    tmp_path: Path, entry: str, message: str
) -> None:
    assert error_of(tmp_path, entry) == message


def test_several_bad_criteria_are_listed_together_and_good_ones_pass(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'tool = "refund"\n\n[[expect]]\nname = "second"\nno_tool = "x"')
    assert message == (
        "expect[1] ('the entry'): `tool` = 'refund' is not one of the scenario's tools (hangup, issue_refund, "
        "lookup_order); expect[2] ('second'): `no_tool` = 'x' is not one of the scenario's tools (hangup, "
        "issue_refund, lookup_order)"
    )
    path = tmp_path / "good.toml"
    path.write_text(SCENARIO + f'query = "{REFUNDS}"\nequals = 1\n')
    check_scenario(load_scenario(path))


def test_the_built_in_scenarios_criteria_check() -> None:
    late = load_scenario("late_order")
    check_scenario(late)
    assert [e.kind for e in late.expect] == ["tool", "tool", "no_tool", "said", "query", "end_reason"]
    check_scenario(load_scenario("quick_bye"))  # no criteria: nothing to check
    scenario = parse_scenario(
        {"caller": {"instructions": "c"}, "cs": {"instructions": "s"}, "expect": [{"name": "x", "tool": "hangup"}]}
    )
    check_scenario(scenario)  # no tools: the caller's hangup is still a tool


def test_a_batch_counts_a_call_whose_criteria_failed_as_failed(tmp_path: Path) -> None:
    from voicebridge.batch.report import build_report
    from voicebridge.batch.runner import BatchResult
    from voicebridge.config import Settings
    from voicebridge.results import BatchCall

    refund = Expectation.model_validate({"name": "refund", "tool": "issue_refund"})
    calls = []
    for i, tools in enumerate(([LOOKUP, REFUND, HANGUP], [LOOKUP, HANGUP])):
        result = summary(call_id=f"call_{i}", tool_calls=tools, out_dir=str(tmp_path))
        verdicts = evaluate([refund], result, tmp_path)
        judged = result.model_copy(update={"criteria": verdicts, "passed": criteria_passed(verdicts)})
        calls.append(BatchCall(summary=judged, setup_s=1.0))
    batch = BatchResult("batch_1", load_scenario("late_order"), Settings(), tmp_path, 1, calls)
    report = build_report(batch)
    assert (report.total, report.succeeded, report.failed) == (2, 1, 1)
    assert [row.ok for row in report.calls] == [True, False]
    assert [(e.call_id, e.end_reason, e.error) for e in report.errors] == [
        ("call_1", "caller_hangup", "criteria failed: refund")
    ]

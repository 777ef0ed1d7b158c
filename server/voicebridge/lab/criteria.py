"""Pass criteria: a scenario's `[[expect]]` entries checked before any call is placed, then turned into verdicts
with their evidence once a call has ended.

`check_scenario` refuses what would make a criterion meaningless (a tool the scenario does not have, SQL that does
not prepare against the tool database, a `check` hook that does not import): it runs the scenario's tool factory
in a temporary folder, so a query is prepared against the very schema a call's database will have. `evaluate`
works on the typed call result (voicebridge/results.py CallSummary) and the call's folder, where the tools keep
their database; it never raises: a criterion that cannot be evaluated fails, saying why.
"""

from __future__ import annotations

import importlib
import json
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from voicebridge.results import CallSummary, CriterionVerdict, ToolCallRecord, TranscriptLine
from voicebridge.scenarios.expect import Expectation
from voicebridge.scenarios.model import Scenario, ScenarioError, load_tools

from .judge import Judge, JudgeEndpoint, JudgeError
from .timing import percentile, silences

# The caller's own tool: always there, though no scenario registers it.
HANGUP = "hangup"
DATABASE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
# What a criterion's query may do when SQLite prepares it: read, nothing else (the database is also opened
# read-only; this makes a write a scenario error at load time instead of a failed verdict after the call).
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_SHOWN = 80


# -- before the call ---------------------------------------------------------------------------------------------


def check_scenario(scenario: Scenario) -> None:
    """Raise ScenarioError naming the file, the entry and the problem for each criterion that cannot be checked."""
    if not scenario.expect:
        return
    where = str(scenario.path or scenario.name)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="voicebridge-expect-") as tmp:
        try:
            registry = load_tools(scenario, Path(tmp), 10.0)
        except ScenarioError:
            raise
        except Exception as e:
            raise ScenarioError(f"{where}: `tools` = {scenario.tools!r} failed: {type(e).__name__}: {e}") from e
        try:
            known = {name: _parameters(registry.get(name)) for name in registry.names()}
            known.setdefault(HANGUP, set())
            for i, exp in enumerate(scenario.expect):
                for problem in _problems(exp, known, Path(tmp)):
                    problems.append(f"expect[{i}] ({exp.name!r}): {problem}")
        finally:
            registry.close()
    if problems:
        raise ScenarioError(f"{where}: " + "; ".join(problems))


def _parameters(tool: Any) -> set[str]:
    return set((tool.parameters.get("properties") or {}) if tool is not None else ())


def _problems(exp: Expectation, known: dict[str, set[str]], folder: Path) -> Iterable[str]:
    tools = ", ".join(sorted(known))
    for key in ("tool", "no_tool", "before", "after"):
        name = getattr(exp, key)
        if name is not None and name not in known:
            yield f"`{key}` = {name!r} is not one of the scenario's tools ({tools})"
    named = exp.tool or exp.no_tool
    if exp.args and named in known:
        unknown = sorted(set(exp.args) - known[named])
        if unknown:
            params = ", ".join(sorted(known[named])) or "none"
            yield f"`args`: {named} has no parameter {unknown[0]!r} (its parameters: {params})"
    if exp.query is not None:
        try:
            with _open(_database(exp, folder)) as db:
                db.execute(f"EXPLAIN {exp.query}")
        except sqlite3.DatabaseError as e:
            # The authorizer refused something: SQLite only says "not authorized".
            yield f"`query`: {'it may only read (SELECT)' if str(e) == 'not authorized' else e}"
        except (sqlite3.Error, ValueError) as e:
            yield f"`query`: {e}"
    if exp.check is not None:
        try:
            _hook(exp.check)
        except ValueError as e:
            yield f"`check`: {e}"


def _database(exp: Expectation, folder: Path) -> Path:
    """The tool database a query reads: `database`, else the one SQLite file in the folder."""
    if exp.database is not None:
        path = folder / exp.database
        if Path(exp.database).name != exp.database or not path.is_file():
            raise ValueError(f"the tools write no database {exp.database!r} in the call's folder")
        return path
    found = sorted(p.name for p in folder.iterdir() if p.suffix in DATABASE_SUFFIXES and p.is_file())
    if len(found) != 1:
        which = ", ".join(found) if found else "none"
        raise ValueError(f"name the tool database with `database` (the tools write {which})")
    return folder / found[0]


def _deny_writes(action: int, *args: object) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db.set_authorizer(_deny_writes)
    return db


def _hook(spec: str) -> Callable[[CallSummary], Any]:
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise ValueError(f"{spec!r} is not a function")
    checked: Callable[[CallSummary], Any] = fn
    return checked


# -- after the call ----------------------------------------------------------------------------------------------


def evaluate(
    expectations: Iterable[Expectation],
    summary: CallSummary,
    call_dir: Path,
    *,
    judge: JudgeEndpoint | str | None = None,
) -> list[CriterionVerdict]:
    """Each criterion's verdict on an ended call (its summary, its folder). `judge`: where `judge` criteria are
    asked (judge.judge_endpoint), or why they are skipped (None: offline)."""
    expectations = list(expectations)
    asker: Judge | str = judge if isinstance(judge, str) else "offline: no OPENAI_API_KEY"
    if isinstance(judge, JudgeEndpoint) and any(e.kind == "judge" for e in expectations):
        asker = Judge(judge)
    try:
        verdicts = []
        for exp in expectations:
            try:
                verdicts.append(_evaluate(exp, summary, call_dir, asker))
            except Exception as e:  # a criterion that cannot be evaluated fails; the others still run
                verdicts.append(_verdict(exp, False, f"could not be evaluated: {type(e).__name__}: {e}", None))
        return verdicts
    finally:
        if isinstance(asker, Judge):
            asker.close()


def _verdict(
    exp: Expectation, passed: bool, detail: str, evidence: JsonValue, skipped: bool = False
) -> CriterionVerdict:
    return CriterionVerdict(
        name=exp.name, kind=exp.kind, passed=passed, skipped=skipped, detail=detail, evidence=evidence
    )


def _evaluate(exp: Expectation, summary: CallSummary, call_dir: Path, judge: Judge | str) -> CriterionVerdict:
    kind = exp.kind
    if kind == "tool":
        return _tool(exp, summary.tool_calls)
    if kind == "no_tool":
        return _no_tool(exp, summary.tool_calls)
    if kind == "query":
        return _query(exp, call_dir)
    if kind == "check":
        return _check(exp, summary)
    if kind in ("said", "heard"):
        return _speech(exp, summary)
    if kind == "end_reason":
        ok = summary.end_reason == exp.end_reason
        return _verdict(
            exp, ok, f"end_reason {summary.end_reason} ({'as expected' if ok else f'expected {exp.end_reason}'})",
            {"end_reason": summary.end_reason},
        )
    if kind == "max_duration_s":
        assert exp.max_duration_s is not None
        ok = summary.duration_s <= exp.max_duration_s
        return _verdict(
            exp, ok, f"lasted {summary.duration_s:.3f} s ({'<=' if ok else '>'} {exp.max_duration_s:g} s)",
            {"duration_s": summary.duration_s},
        )
    if kind == "max_turn_gap_ms":
        return _turn_gap(exp, summary)
    if kind in ("max_overlap_s", "max_silence_s", "max_interruptions", "min_interruptions"):
        return _talk_over(exp, summary)
    return _judge(exp, summary, judge)


def _judge(exp: Expectation, summary: CallSummary, judge: Judge | str) -> CriterionVerdict:
    """A yes/no rubric question for the model (lab/judge.py): yes passes, no fails with the model's reason as
    evidence; offline it is skipped, never passed; a judge that cannot answer fails, saying why."""
    assert exp.judge is not None
    if isinstance(judge, str):
        return _verdict(exp, False, f"skipped ({judge})", None, skipped=True)
    try:
        answer = judge.ask(exp.judge, summary)
    except JudgeError as e:
        return _verdict(exp, False, f"the judge could not answer: {e}", None)
    said = "yes" if answer.answer else "no"
    evidence: JsonValue = {"answer": said, "reason": answer.reason, "model": answer.model}
    return _verdict(exp, answer.answer, f"{answer.model} answered {said}: {_short(answer.reason)}", evidence)


def _record(call: ToolCallRecord) -> JsonValue:
    data: JsonValue = call.model_dump(mode="json")
    return data


def _line(line: TranscriptLine) -> JsonValue:
    data: JsonValue = line.model_dump(mode="json")
    return data


def _same(expected: Any, got: Any) -> bool:
    # TOML and JSON both tell true from 1: so does the match.
    return bool(expected == got) and isinstance(expected, bool) == isinstance(got, bool)


def _args_match(expected: dict[str, Any] | None, got: JsonValue) -> bool:
    if not expected:
        return True
    if not isinstance(got, dict):
        return False
    for key, want in expected.items():
        if key not in got:
            return False
        value = got[key]
        if isinstance(want, dict) and set(want) == {"regex"}:
            text = value if isinstance(value, str) else json.dumps(value)
            if re.search(want["regex"], text) is None:
                return False
        elif not _same(want, value):
            return False
    return True


def _described(exp: Expectation, name: str) -> str:
    parts = [name]
    if exp.args:
        parts.append(f"with arguments matching {json.dumps(exp.args)}")
    if exp.ok is not None:
        parts.append("that succeeded" if exp.ok else "that failed")
    return " ".join(parts)


def _tool(exp: Expectation, calls: list[ToolCallRecord]) -> CriterionVerdict:
    assert exp.tool is not None
    what = _described(exp, exp.tool)
    matching = [
        c for c in calls
        if c.name == exp.tool and _args_match(exp.args, c.arguments) and (exp.ok is None or c.ok == exp.ok)
    ]
    if exp.count is not None and len(matching) != exp.count:
        return _verdict(
            exp, False, f"{what}: called {len(matching)} times, expected {exp.count}", [_record(c) for c in matching]
        )
    if not matching:
        if exp.count == 0:
            return _verdict(exp, True, f"{what}: never called, as expected", None)
        others = [c for c in calls if c.name == exp.tool]
        detail = f"{what}: never called" + (f" ({len(others)} other calls of {exp.tool})" if others else "")
        return _verdict(exp, False, detail, [_record(c) for c in others] or None)
    first = matching[0]
    at = f"first at {first.t:.3f} s"
    if exp.before is not None:
        later = next((c for c in calls if c.name == exp.before), None)
        if later is not None and later.t < first.t:
            return _verdict(
                exp, False, f"{what}: {at}, after {exp.before} at {later.t:.3f} s",
                {"call": _record(first), "other": _record(later)},
            )
    if exp.after is not None:
        earlier = next((c for c in calls if c.name == exp.after), None)
        if earlier is None or earlier.t > first.t:
            found = f"{exp.after} at {earlier.t:.3f} s" if earlier is not None else f"{exp.after} never called"
            return _verdict(
                exp, False, f"{what}: {at}, not after {exp.after} ({found})",
                {"call": _record(first), "other": _record(earlier) if earlier is not None else None},
            )
    return _verdict(exp, True, f"{what}: called {len(matching)} times, {at}", _record(first))


def _no_tool(exp: Expectation, calls: list[ToolCallRecord]) -> CriterionVerdict:
    assert exp.no_tool is not None
    what = _described(exp, exp.no_tool)
    found = next((c for c in calls if c.name == exp.no_tool and _args_match(exp.args, c.arguments)), None)
    if found is None:
        return _verdict(exp, True, f"{what}: never called", None)
    return _verdict(exp, False, f"{what}: called at {found.t:.3f} s", _record(found))


def _query(exp: Expectation, call_dir: Path) -> CriterionVerdict:
    assert exp.query is not None
    try:
        with _open(_database(exp, call_dir)) as db:
            row = db.execute(exp.query).fetchone()
    except (sqlite3.Error, ValueError, OSError) as e:
        return _verdict(exp, False, f"the query failed: {e}", None)
    value = row[0] if row else None
    ok = row is not None and _same(exp.equals, value)
    shown = "no row" if row is None else repr(value)
    evidence: JsonValue = {"value": value, "rows": 0 if row is None else 1}
    return _verdict(exp, ok, f"gave {shown}, expected {exp.equals!r}", evidence)


def _check(exp: Expectation, summary: CallSummary) -> CriterionVerdict:
    assert exp.check is not None
    try:
        result = _hook(exp.check)(summary)
    except AssertionError as e:
        # The assertion's own message (its first line: pytest-style rewriting appends the expression's values).
        said = str(e).splitlines()[0] if str(e) else "assertion failed"
        return _verdict(exp, False, f"{exp.check}: {said}", None)
    except Exception as e:
        return _verdict(exp, False, f"{exp.check} raised {type(e).__name__}: {e}", None)
    detail = ""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result, detail = result
    if not isinstance(result, bool):
        return _verdict(exp, False, f"{exp.check} returned {type(result).__name__}, not true or false", None)
    return _verdict(exp, result, f"{exp.check}: {detail or ('true' if result else 'false')}", {"returned": result})


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _speech(exp: Expectation, summary: CallSummary) -> CriterionVerdict:
    if exp.said is not None:
        role, lines = exp.said, [t for t in summary.turns if t.speaker == exp.said]
        whose = f"{role} said"
    else:
        assert exp.heard is not None
        role, lines = exp.heard, list(summary.heard.get(exp.heard, []))
        whose = f"{role} heard"
    if exp.regex is not None:
        pattern = re.compile(exp.regex)
        hit = next((t for t in lines if pattern.search(t.text)), None)
        if hit is None:
            return _verdict(exp, False, f"no line {whose} matches /{exp.regex}/ ({len(lines)} lines)", None)
        return _verdict(exp, True, f"{whose} at {hit.start:.3f} s: {_short(hit.text)!r}", _line(hit))
    # Case-insensitive: transcripts differ in capitals from run to run, never in meaning.
    needle = (exp.contains if exp.contains is not None else exp.not_contains) or ""
    hit = next((t for t in lines if needle.casefold() in t.text.casefold()), None)
    if exp.contains is not None:
        if hit is None:
            return _verdict(exp, False, f"no line {whose} contains {needle!r} ({len(lines)} lines)", None)
        return _verdict(exp, True, f"{whose} at {hit.start:.3f} s: {_short(hit.text)!r}", _line(hit))
    if hit is not None:
        return _verdict(exp, False, f"{whose} {needle!r} at {hit.start:.3f} s: {_short(hit.text)!r}", _line(hit))
    return _verdict(exp, True, f"no line {whose} contains {needle!r} ({len(lines)} lines)", None)


def _turn_gap(exp: Expectation, summary: CallSummary) -> CriterionVerdict:
    limit = exp.max_turn_gap_ms
    assert limit is not None
    gaps = [t.total_ms for t in summary.turn_latency.turns if exp.by is None or t.to == exp.by]
    whose = f" of {exp.by}'s replies" if exp.by else ""
    if not gaps:
        return _verdict(exp, False, f"no turn gap{whose} was measured", {"turns": 0})
    figures = {"p50": percentile(gaps, 50), "p95": percentile(gaps, 95)}
    measured: JsonValue = {"turns": len(gaps), "p50_ms": figures["p50"], "p95_ms": figures["p95"]}
    limits = [(name, value) for name, value in (("p50", limit.p50), ("p95", limit.p95)) if value is not None]
    over = [f"{name} {figures[name]:.1f} ms > {value:g} ms" for name, value in limits if figures[name] > value]
    if over:
        return _verdict(exp, False, f"turn gaps{whose}: " + ", ".join(over), measured)
    within = ", ".join(f"{name} {figures[name]:.1f} ms <= {value:g} ms" for name, value in limits)
    return _verdict(exp, True, f"turn gaps{whose} ({len(gaps)}): {within}", measured)


def _talk_over(exp: Expectation, summary: CallSummary) -> CriterionVerdict:
    """max_overlap_s (the longest overlap), max_silence_s (the longest silence), max_interruptions and
    min_interruptions (how many, by whom): against the call's timing analysis, with the offending (or longest)
    interval, or the interruptions, as evidence."""
    timing = summary.timing
    if timing is None:
        return _verdict(exp, False, "the call has no timing analysis (its relay has no packet timeline)", None)
    if exp.max_overlap_s is not None:
        longest = max(timing.overlaps, key=lambda o: o.duration_s, default=None)
        if longest is None:
            return _verdict(exp, True, "no overlap", {"overlaps": 0, "overlap_s": 0.0})
        ok = longest.duration_s <= exp.max_overlap_s
        evidence: JsonValue = {"overlap": longest.model_dump(mode="json"), "overlaps": len(timing.overlaps),
                               "overlap_s": timing.overlap_s}
        return _verdict(
            exp, ok, f"longest overlap {longest.duration_s:.3f} s at {longest.start:.3f} s "
            f"({'<=' if ok else '>'} {exp.max_overlap_s:g} s)", evidence,
        )
    if exp.max_silence_s is not None:
        # The longest gap itself (timing.silences lists only those above its threshold).
        gaps = silences({p: [(i.start, i.end) for i in spans] for p, spans in timing.speech.items()})
        silence = max(gaps, key=lambda g: g.duration_s, default=None)
        ok = timing.max_silence_s <= exp.max_silence_s
        at = f" at {silence.start:.3f} s" if silence is not None else ""
        evidence = {"max_silence_s": timing.max_silence_s,
                    "silence": silence.model_dump(mode="json") if silence is not None else None}
        return _verdict(
            exp, ok, f"longest silence {timing.max_silence_s:.3f} s{at} ({'<=' if ok else '>'} "
            f"{exp.max_silence_s:g} s)", evidence,
        )
    cuts = [c for c in timing.interruptions if exp.by is None or c.by == exp.by]
    whose = f" by {exp.by}" if exp.by else ""
    if exp.max_interruptions is not None:
        ok = len(cuts) <= exp.max_interruptions
        bound = f"{'<=' if ok else '>'} {exp.max_interruptions}"
    else:
        assert exp.min_interruptions is not None
        ok = len(cuts) >= exp.min_interruptions
        bound = f"{'>=' if ok else '<'} {exp.min_interruptions}"
    shown = "; ".join(
        f"{c.by} cut in on {c.of} at {c.at:.3f} s, who yielded {c.time_to_yield_ms:.0f} ms later" for c in cuts[:3]
    )
    return _verdict(
        exp, ok, f"{len(cuts)} interruptions{whose} ({bound})" + (f": {shown}" if shown else ""),
        {"interruptions": [c.model_dump(mode="json") for c in cuts]},
    )

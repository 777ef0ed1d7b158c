"""Scenario files validated by their pydantic models: every mistake is one message naming the file, the field
(its full path in the file), what was expected and what was given. The built-in scenarios keep loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebridge.lab.criteria import check_scenario
from voicebridge.scenarios.model import ScenarioError, builtin_names, load_scenario

pytestmark = pytest.mark.unit

GOOD = """
first_speaker = "cs"
max_duration_s = 90

[caller]
instructions = "You are a caller."
context = [ { role = "system", text = "The call has just connected." } ]
[[caller.script]]
hear = "Hello there!"
say = "Goodbye."
hangup = true

[cs]
instructions = "You are the help desk."
[[cs.script]]
on = "start"
say = "Hello there."
[[cs.script]]
hear = "goodbye"
call = { name = "lookup_order", arguments = { order_id = "1" } }
"""


def write(tmp_path: Path, text: str, name: str = "shop_call.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return str(info.value)


def test_builtin_scenarios_load() -> None:
    assert {"barge_in", "late_order", "quick_bye", "unknown_order"} <= set(builtin_names())
    for name in builtin_names():
        scenario = load_scenario(name)
        assert scenario.name == name and scenario.path is not None and scenario.path.stem == name
        assert scenario.caller.instructions and scenario.cs.script
        check_scenario(scenario)  # its criteria name real tools and prepare their SQL


def test_a_good_file_and_its_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    s = load_scenario(path)
    assert (s.name, s.title, s.path) == ("shop_call", "shop_call", path)  # name from the file, title from name
    assert (s.max_duration_s, s.idle_timeout_s, s.tools) == (90.0, 60.0, "")
    assert s.caller.voice == "marin" and s.caller.espeak_speed == 165
    assert s.caller.script[0].hear == "hello there" and s.caller.script[0].hangup and s.caller.script[0].once
    rule = s.cs.script[1]
    assert rule.call is not None and rule.call.arguments == {"order_id": "1"} and not rule.silent
    assert s.persona("cs") is s.cs and s.caller.context[0].role == "system"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # an unknown field: which one, in which table, and the known ones
        ('instructions = "You are a caller."', 'instructions = "You are a caller."\nvoise = "cedar"',
         "caller.voise: unknown field (known: context, espeak_speed, espeak_voice, instructions, "
         "response_delay_ms, script, voice)"),
        ('first_speaker = "cs"', 'first_speaker = "cs"\nmax_duraton_s = 5',
         "max_duraton_s: unknown field (known: caller, cs, expect, first_speaker, idle_timeout_s, impair, "
         "impair_seed, max_duration_s, name, title, tools)"),
        ('arguments = { order_id = "1" }', 'arguments = { order_id = "1" }, args = 1',
         "cs.script[1].call.args: unknown field (known: arguments, name)"),
        # a wrong type: what was expected and what was given
        ('say = "Hello there."', 'say = "Hello there."\nonce = "no"',
         "cs.script[0].once: expected true or false, got 'no' (a string)"),
        ("max_duration_s = 90", 'max_duration_s = "90"', "max_duration_s: expected a number, got '90' (a string)"),
        ("max_duration_s = 90", "max_duration_s = -5",
         "max_duration_s: expected a number greater than 0, got -5 (an integer)"),
        ('first_speaker = "cs"', 'first_speaker = "agent"',
         "first_speaker: expected 'caller' or 'cs', got 'agent' (a string)"),
        ('role = "system"', 'role = "assistant"',
         "caller.context[0].role: expected 'system' or 'user', got 'assistant' (a string)"),
        ('arguments = { order_id = "1" }', "arguments = [1]",
         "cs.script[1].call.arguments: expected a table, got an array"),
        ('context = [ { role = "system", text = "The call has just connected." } ]', 'context = "hi"',
         "caller.context: expected an array, got 'hi' (a string)"),
        # rules of the format
        ('hear = "goodbye"\n', "", "cs.script[1]: needs exactly one of `on`, `hear`, `after_tool` (got none)"),
        ('on = "start"', 'on = "start"\nhear = "hi"',
         "cs.script[0]: needs exactly one of `on`, `hear`, `after_tool` (got on, hear)"),
        ('hear = "Hello there!"', 'hear = "!?"', "caller.script[0].hear: has no words"),
        # barge-in rules: alone or with `hear`, with an action, a positive delay
        ('on = "start"', 'on = "start"\ninterrupt_after_ms = 500',
         "cs.script[0]: `interrupt_after_ms` goes alone or with `hear`, not with `on`"),
        ('hear = "goodbye"\ncall', 'after_tool = "x"\ninterrupt_after_ms = 500\ncall',
         "cs.script[1]: `interrupt_after_ms` goes alone or with `hear`, not with `after_tool`"),
        ('hear = "goodbye"\ncall = { name = "lookup_order", arguments = { order_id = "1" } }',
         'interrupt_after_ms = 500', "cs.script[1]: `interrupt_after_ms` needs an action (`say`, `call` or `hangup`): "
         "it cuts in"),
        ('hear = "Hello there!"', 'hear = "Hello there!"\ninterrupt_after_ms = 0',
         "caller.script[0].interrupt_after_ms: expected a number greater than 0, got 0 (an integer)"),
        ('instructions = "You are a caller."', 'instructions = "   "', "caller.instructions: is empty"),
    ],
)  # fmt: skip
def test_each_mistake_names_the_file_the_field_and_what_was_expected(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    assert error_of(path) == f"{path}: {message}"


def test_a_missing_table_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[: GOOD.index("[cs]")])
    assert error_of(path) == f"{path}: cs: required but missing (expected a table)"


def test_several_mistakes_are_listed_together(tmp_path: Path) -> None:
    text = GOOD.replace('first_speaker = "cs"', 'first_speaker = 1\nname = 2\ntitel = "x"\ntools = false')
    path = write(tmp_path, text)
    assert error_of(path) == (
        f"{path}: name: expected a string, got 2 (an integer); first_speaker: expected 'caller' or 'cs', "
        "got 1 (an integer); tools: expected a string, got false (a boolean); and 1 more"
    )


def test_where_a_scenario_came_from_is_not_a_field_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'path = "/etc/passwd"\n' + GOOD)
    assert error_of(path).startswith(f"{path}: path: unknown field (known: caller, cs,")

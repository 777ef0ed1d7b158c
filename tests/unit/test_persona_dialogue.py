"""Two emulated personas of a built-in scenario talking, line by line: the script engine alone, no audio and no
clock, so a lost line is lost by choice, not by chance. A line is heard as the recognizer hears it (its words when
the hearer's grammar has them, nothing otherwise) unless the test loses it or has it taken for another phrase (as
the recognizer forces garbled audio onto its grammar); a barge-in rule cuts into the line it waits for; the CS
agent's tools are the scenario's real ones on a fresh database (each call run once per test and its result kept:
a dialogue calls each tool once, as the tests check, so it gets what a fresh database gives).

What it shows: a line lost is asked for and said again, whoever lost it (the question included), and no
conversation loops: every one ends with the caller hanging up, by the scenario's goodbye or, when a line never
gets through, by giving up after MAX_REPEATS replies that got nowhere."""

from __future__ import annotations

import itertools
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from voicebridge.emulator.persona import (
    ASK_AGAIN_REPLY,
    GENERIC_REPLY,
    GIVE_UP_REPLY,
    MAX_REPEATS,
    Action,
    Script,
)
from voicebridge.scenarios import load_scenario, normalize_phrase
from voicebridge.scenarios.model import Role, Scenario, load_tools
from voicebridge.tools import ToolResult

pytestmark = pytest.mark.unit

BUILTIN = ("late_order", "unknown_order", "barge_in", "quick_bye")
MAX_LINES = 80  # the "max_duration" of a dialogue: none of them should get near it
OTHER: dict[Role, Role] = {"caller": "cs", "cs": "caller"}


@dataclass
class Dialogue:
    lines: list[tuple[Role, str]] = field(default_factory=list)  # who said what, in order
    heard: list[str] = field(default_factory=list)  # what the other party heard of each line
    tools: list[tuple[str, dict[str, object], bool]] = field(default_factory=list)  # name, arguments, ok
    end: str = "max_duration"

    @property
    def said(self) -> list[str]:
        return [text for _, text in self.lines]


scenario = cache(load_scenario)


class Tools:
    """The scenario's tools on one fresh database, each distinct call run once and its result kept."""

    def __init__(self, name: str, folder: Path) -> None:
        self.registry = load_tools(scenario(name), folder, timeout_s=10.0)
        self.results: dict[str, ToolResult] = {}

    async def run(self, name: str, arguments: dict[str, object]) -> ToolResult:
        key = json.dumps([name, arguments], sort_keys=True)
        if key not in self.results:
            self.results[key] = await self.registry.run(name, json.dumps(arguments))
        return self.results[key]


async def converse(
    name: str, lost: Collection[int], tools: Tools, misheard: dict[int, str] | None = None
) -> Dialogue:
    """Play the scenario's two personas against each other; `lost`: indexes of lines the hearer does not
    recognise (garbled on the way); `misheard`: lines it takes for another phrase of its grammar (index -> that
    phrase). Ends when the caller hangs up, a persona stays silent, or at MAX_LINES."""
    sc: Scenario = scenario(name)
    scripts: dict[Role, Script] = {"caller": Script(sc.caller), "cs": Script(sc.cs)}
    grammar = {role: set(script.phrases) for role, script in scripts.items()}
    d = Dialogue()
    speaker: Role = sc.first_speaker
    action: Action | None = scripts[speaker].on_start()
    while len(d.lines) < MAX_LINES:
        if action is None:
            d.end = f"{speaker} silent"
            return d
        if action.say is not None:
            index = len(d.lines)
            d.lines.append((speaker, action.say))
            hearer = OTHER[speaker]
            words = normalize_phrase(action.say)
            heard = words if words in grammar[hearer] and index not in lost else ""
            heard = (misheard or {}).get(index, heard)
            d.heard.append(heard)
            if action.hangup:
                d.end = f"{speaker} hangup"
                return d
            scripts[hearer].note_heard(heard)
            # A barge-in rule cuts into the line (its VAD hears speech whether or not it is understood); that turn
            # is then not answered again.
            cut = scripts[hearer].cut_in(10**6) if scripts[hearer].interrupts else None
            speaker, action = hearer, cut if cut is not None else scripts[hearer].respond([], [heard], [])
            continue
        if action.hangup:
            d.end = f"{speaker} hangup"
            return d
        assert action.call is not None, f"{speaker}: {action}"
        result = await tools.run(action.call.name, dict(action.call.arguments))
        d.tools.append((action.call.name, dict(action.call.arguments), result.ok))
        scripts[speaker].record_output(action.call.name, result.output)
        action = scripts[speaker].respond([action.call.name], [], [])
    return d


def _happy_path(name: str) -> list[tuple[Role, str]]:
    return {
        "late_order": [
            ("cs", "Thank you for calling the help desk, how can I help you today?"),
            ("caller", "Hello, my order has not arrived. The order number is four two one seven."),
            ("cs", "I am sorry, your order four two one seven is late. I have issued a refund of forty-two dollars. "
             "Is there anything else?"),
            ("caller", "No, that is all. Thank you so much, goodbye."),
        ],
        "unknown_order": [
            ("cs", "Thank you for calling the help desk, how can I help you today?"),
            ("caller", "Hi, I am calling about my order. The order number is seven seven seven one."),
            ("cs", "I am sorry, I could not find that order. Please check the number on your confirmation email. "
             "Is there anything else?"),
            ("caller", "Thank you, I will check the number. Goodbye."),
        ],
        "barge_in": [
            ("cs", scenario("barge_in").cs.script[0].say or ""),
            ("caller", "Sorry to cut in. My order four two one seven has not arrived."),
            ("cs", "Your order four two one seven is delayed. It will arrive next week. Is there anything else?"),
            ("caller", "No, thank you. Goodbye."),
        ],
        "quick_bye": [("cs", "Hello there."), ("caller", "Goodbye now.")],
    }[name]


@pytest.mark.parametrize("name", BUILTIN)
async def test_nothing_lost_each_scenario_runs_its_script_and_nothing_else(name: str, tmp_path: Path) -> None:
    d = await converse(name, (), Tools(name, tmp_path))
    assert d.lines == _happy_path(name) and d.end == "caller hangup"
    # Every line was recognised as said, the greeting of barge_in aside (the caller only cuts into it).
    assert [h for h in d.heard if not h] == ([""] if name == "barge_in" else [])


async def test_the_barge_in_loop_a_lost_cut_in_then_a_lost_question_converges(tmp_path: Path) -> None:
    """The lab's failure (barge_in under `lossy`): the CS agent did not understand the caller's cut-in, and the
    caller did not understand the agent asking it to repeat. It used to loop until max_duration, the agent
    repeating its greeting (outside the caller's grammar) to every "did not catch that"."""
    greeting, cut_in = (line for _, line in _happy_path("barge_in")[:2])
    d = await converse("barge_in", {1, 2}, Tools("barge_in", tmp_path))
    assert d.lines == [
        ("cs", greeting),
        ("caller", cut_in),  # lost
        ("cs", GENERIC_REPLY),  # lost
        ("caller", GENERIC_REPLY),
        ("cs", ASK_AGAIN_REPLY),  # the agent asked first: it asks again, it does not restart its script
        ("caller", cut_in),  # told so, the caller says its last line again
        *_happy_path("barge_in")[2:],
    ]
    assert d.end == "caller hangup" and d.tools == [("lookup_order", {"order_id": "4217"}, True)]


async def test_a_line_taken_for_the_question_converges(tmp_path: Path) -> None:
    """The lab's failure of unknown_order under `lossy`, seed 4: the caller took the agent's apology ("I am sorry,
    I could not find ...") for "Sorry, I did not catch that" and said its line again, which the agent had already
    answered; the agent asked to repeat, the caller repeated, and so on until max_duration. Having asked, the agent
    now answers a line it already answered with its answer again."""
    happy = _happy_path("unknown_order")
    d = await converse("unknown_order", (), Tools("unknown_order", tmp_path), {2: normalize_phrase(GENERIC_REPLY)})
    assert d.lines == [
        *happy[:3],  # the apology, taken for the question
        happy[1],
        ("cs", GENERIC_REPLY),  # a line it answered already, out of the blue: it asks
        happy[1],
        happy[2],  # having asked, the same line again: its answer again
        happy[3],
    ]
    assert d.end == "caller hangup" and [t[0] for t in d.tools] == ["lookup_order"]


async def test_a_line_that_never_gets_through_ends_with_the_caller_giving_up(tmp_path: Path) -> None:
    # The agent's greeting is heard, then nothing.
    d = await converse("late_order", range(1, MAX_LINES), Tools("late_order", tmp_path))
    assert d.end == "caller hangup" and d.lines[-1] == ("caller", GIVE_UP_REPLY)
    # The caller said its line, then, hearing nothing, asked MAX_REPEATS times, then gave up.
    caller = [line for role, line in d.lines if role == "caller"]
    assert caller[0] == _happy_path("late_order")[1][1] and len(caller) == MAX_REPEATS + 2
    assert not d.tools


@pytest.mark.parametrize("name", BUILTIN)
async def test_whatever_lines_are_lost_every_dialogue_ends_with_the_caller_hanging_up(
    name: str, tmp_path: Path
) -> None:
    """Every pattern of lost lines among the first ten: the caller hangs up, by the scenario's goodbye (its tools
    then ran as on a good line) or by giving up; never at MAX_LINES, and never with the script restarted."""
    first = 10
    tools = Tools(name, tmp_path)
    good = await converse(name, (), tools)
    endings: set[str] = set()
    for pattern in itertools.product((False, True), repeat=first):
        lost = {i for i, gone in enumerate(pattern) if gone}
        d = await converse(name, lost, tools)
        assert d.end == "caller hangup", (lost, d.lines)
        last = d.lines[-1][1]
        endings.add(last)
        if last == GIVE_UP_REPLY:
            # Only a line lost more than MAX_REPEATS times gives up: fewer lost lines always get through.
            assert len([i for i in lost if i < len(d.lines)]) > MAX_REPEATS, (lost, d.lines)
            continue
        assert last == _happy_path(name)[-1][1], (lost, d.lines)
        assert d.tools == good.tools, (lost, d.lines)
        # What is said is the script in order, with repeats and the two questions between.
        said = [line for _, line in d.lines if line not in (GENERIC_REPLY, ASK_AGAIN_REPLY)]
        assert sorted(set(said), key=said.index) == [line for _, line in _happy_path(name)], (lost, d.lines)
        if name == "barge_in":  # the greeting the caller cuts into, once: never restarted
            assert said.count(said[0]) == 1, (lost, d.lines)
    assert endings == {GIVE_UP_REPLY, _happy_path(name)[-1][1]}


@pytest.mark.parametrize("name", BUILTIN)
async def test_whatever_lines_are_lost_or_taken_for_a_question_every_dialogue_ends_with_the_caller_hanging_up(
    name: str, tmp_path: Path
) -> None:
    """Every pattern of the first five lines heard, lost, or taken for one of the two questions (the recognizer
    forcing garbled audio onto a phrase of its grammar): the caller hangs up, never at MAX_LINES; no single
    disturbed line makes it give up; a dialogue that ends with the goodbye ran the tools of a good line."""
    questions = (normalize_phrase(GENERIC_REPLY), normalize_phrase(ASK_AGAIN_REPLY))
    tools = Tools(name, tmp_path)
    good = await converse(name, (), tools)
    for pattern in itertools.product(("heard", "lost", *questions), repeat=5):
        lost = {i for i, fate in enumerate(pattern) if fate == "lost"}
        misheard = {i: fate for i, fate in enumerate(pattern) if fate in questions}
        d = await converse(name, lost, tools, misheard)
        assert d.end == "caller hangup", (pattern, d.lines)
        disturbed = len([i for i, fate in enumerate(pattern) if fate != "heard" and i < len(d.lines)])
        if d.lines[-1][1] == GIVE_UP_REPLY:
            assert disturbed > 1, (pattern, d.lines)
        else:
            assert d.lines[-1][1] == _happy_path(name)[-1][1] and d.tools == good.tools, (pattern, d.lines)

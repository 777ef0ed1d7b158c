"""The script engine: what an emulated persona does when it starts, hears something, or gets a tool's output.

A session finds its persona by its `instructions` (the real API has no field to name a persona, and real
clients
must stay unmodified). Matching rules, in short (README "Scenario files" has the long form):
- `hear`: the transcript may hold several phrases; the LAST one in transcript order picks the rule.
- a rule with no action means "heard it, stay silent"; a `once` rule fires at most once per session.
- anything heard but unscripted, or not recognised at all, gets a polite generic reply (GENERIC_REPLY: "say it
  again"), never an exception.
- asked to say it again (the other side's generic reply), the persona says its last line again, the line it was
  going to say if that one was cut off: one line lost to a bad network is asked for and repeated, as people do. Its
  last line is the one it said last, never an older one: a persona that asked and is asked back (the other side
  missed the question) does not restart its script but asks again in other words (ASK_AGAIN_REPLY: "I was asking
  you"), and hearing that, the other side says its own last line again. Having asked, a phrase it already
  answered heard again (the other side missed the answer) gets the answer again. It repeats only a line the other
  persona of the scenario can recognise (`understood`: the barge_in greeting, which the caller only cuts into, is
  not one), except once when first asked (the other side may react to it otherwise); else it asks in other words.
- replies that get nowhere (asking, or repeating when asked) are counted; after MAX_REPEATS in a row a persona that
  can hang up (a rule with `hangup`) says GIVE_UP_REPLY and hangs up. So a line that never gets through ends the
  call with that reason in the transcript, never at max_duration.
- every persona with lines hears the two questions (FALLBACK_PHRASES are in its recognizer's grammar). GIVE_UP_REPLY
  is not: the call ends with it, and every phrase in the grammar is one more that garbled audio can be taken for.
- a barge-in rule (`interrupt_after_ms`) never answers a finished turn: the session asks `cut_in` while the other
  party is still talking, and it fires there once armed (at once, or after its `hear` phrase was heard).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from num2words import num2words

from voicebridge.scenarios.model import Persona, Scenario, ScriptRule, ToolCallStep, load_scenario, normalize_phrase

log = logging.getLogger(__name__)

GENERIC_REPLY = "Sorry, I did not catch that. Could you say it again?"
ASK_AGAIN_REPLY = "I was asking you: please repeat what you said before."
GIVE_UP_REPLY = "Sorry, the line is too bad and we cannot hear each other. I will call back later. Goodbye."
MAX_REPEATS = 3  # replies in a row that get nowhere before a persona that can hang up gives up (the next one)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w]*)\.([A-Za-z_][\w.]*)(?:\|(\w+))?\}")
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Action:
    """What one response does, in order: say a line, call a tool, then call `hangup`."""

    say: str | None = None
    call: ToolCallStep | None = None
    hangup: bool = False
    rule: ScriptRule | None = None  # None: the generic reply


GENERIC = Action(say=GENERIC_REPLY)
ASK_AGAIN = Action(say=ASK_AGAIN_REPLY)
GIVE_UP = Action(say=GIVE_UP_REPLY, hangup=True)
_GENERIC_HEARD = normalize_phrase(GENERIC_REPLY)
_ASK_AGAIN_HEARD = normalize_phrase(ASK_AGAIN_REPLY)
FALLBACK_PHRASES = (_GENERIC_HEARD, _ASK_AGAIN_HEARD)  # what every persona with lines hears


def grammar(script: Iterable[ScriptRule]) -> list[str]:
    """The phrases a persona with this script may hear: its `hear` phrases, and the fallback questions when it has
    lines to repeat."""
    rules = list(script)
    heard = [r.hear for r in rules if r.hear]
    if any(r.say for r in rules):
        heard += FALLBACK_PHRASES
    return heard


class PersonaBook:
    """Personas of the loaded scenarios, found by instructions (compared after strip)."""

    def __init__(self) -> None:
        self._by_instructions: dict[str, Persona] = {}
        self.scenarios: dict[str, Scenario] = {}

    def add(self, scenario: Scenario) -> None:
        self.scenarios[scenario.name] = scenario
        for persona in (scenario.caller, scenario.cs):
            self._by_instructions[persona.instructions.strip()] = persona

    def load(self, name_or_path: str) -> Scenario:
        scenario = load_scenario(name_or_path)
        self.add(scenario)
        return scenario

    def find(self, instructions: str | None) -> Persona | None:
        if not instructions:
            return None
        return self._by_instructions.get(instructions.strip())


def _words(value: Any) -> str:
    try:
        number = float(value) if not isinstance(value, (int, float)) else value
    except (TypeError, ValueError):
        return str(value)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    return str(num2words(number))


def _digits(value: Any) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] if c.isdigit() else c for c in str(value) if not c.isspace())


_FILTERS = {"words": _words, "digits": _digits}


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


@dataclass
class Script:
    """One session's run of a persona's script (which `once` rules fired, what the tools returned)."""

    persona: Persona | None
    fired: set[int] = field(default_factory=set)
    tool_outputs: dict[str, Any] = field(default_factory=dict)
    started: bool = False
    history: list[str] = field(default_factory=list)  # every transcript heard, normalized (arms barge-in rules)
    last_said: str | None = None  # the last scripted line said (rendered): what a generic reply asks to repeat
    asking: bool = False  # its last reply asked the other side to say it again (and nothing was fired since)
    stalled: int = 0  # replies in a row that got nowhere: asking, or repeating when asked (MAX_REPEATS)

    def scratch(self) -> Script:
        """A copy that knows what this one knows (rules fired, tool outputs) but changes nothing here: what an
        out-of-band response answers with, so the conversation's own script is untouched."""
        return Script(
            self.persona,
            set(self.fired),
            dict(self.tool_outputs),
            self.started,
            list(self.history),
            self.last_said,
            self.asking,
            self.stalled,
        )

    # -- barge-in ------------------------------------------------------------------------------------------

    @property
    def interrupts(self) -> bool:
        """The persona has barge-in rules at all (the session then watches how long the other party talks)."""
        return self.persona is not None and any(r.interrupt_after_ms is not None for r in self.persona.script)

    def note_heard(self, transcript: str | None) -> None:
        """A finished turn's transcript, whether or not it is answered: what arms `hear` + `interrupt_after_ms`."""
        text = normalize_phrase(transcript or "")
        if text:
            self.history.append(text)

    def _armed(self, rule: ScriptRule) -> bool:
        if rule.hear is None:
            return True
        return any(f" {rule.hear} " in f" {text} " for text in self.history)

    def cut_in(self, heard_ms: int) -> Action | None:
        """The action of the first armed barge-in rule whose `interrupt_after_ms` has passed, now that the other
        party has been talking for `heard_ms` in its current turn (it is then fired); None: keep listening."""
        for i, rule in self._rules():
            if rule.interrupt_after_ms is not None and rule.interrupt_after_ms <= heard_ms and self._armed(rule):
                self.started = True
                return self._fire(i, rule)
        return None

    def respond(self, outputs: list[str], heard: list[str], typed: list[str]) -> Action | None:
        """What the persona does for a response, given what is new since its last one: the newest tool output
        first, else what it heard, else what it was told in text, else it speaks first."""
        if outputs:
            return self.after_tool(outputs[-1])
        if heard:
            return self.on_heard(" ".join(heard))
        if typed:
            return self.on_typed(" ".join(typed))
        return self.on_start()

    @property
    def phrases(self) -> list[str]:
        """What this persona may hear: the recognizer's grammar (its `hear` phrases, and the fallback lines when it
        has lines to repeat)."""
        return [] if self.persona is None else grammar(self.persona.script)

    def understood(self, line: str) -> bool:
        """The other persona of the scenario can recognise the line: it is one or more phrases of its grammar, as
        the recognizer hears them (True when there is no such persona, or it has no script: a real model, or a
        person, hears anything)."""
        partner = self.persona.partner_script if self.persona is not None else None
        if not partner:
            return True
        phrases = "|".join(re.escape(p) for p in grammar(partner))
        return bool(phrases) and re.fullmatch(f"(?:{phrases})(?: (?:{phrases}))*", normalize_phrase(line)) is not None

    @property
    def can_hang_up(self) -> bool:
        """The persona may end the call (a rule of its script calls `hangup`): it is the one that gives up."""
        return self.persona is not None and any(r.hangup for r in self.persona.script)

    def _rules(self) -> Iterable[tuple[int, ScriptRule]]:
        if self.persona is None:
            return []
        return ((i, r) for i, r in enumerate(self.persona.script) if not (r.once and i in self.fired))

    def _fire(self, index: int, rule: ScriptRule) -> Action | None:
        self.fired.add(index)
        self.asking, self.stalled = False, 0  # the conversation moved on
        if rule.silent:
            return None
        say = self.render(rule.say) if rule.say is not None else None
        if say is not None:
            self.last_said = say
        return Action(
            say=say,
            call=rule.call,
            hangup=rule.hangup,
            rule=rule,
        )

    def on_start(self) -> Action | None:
        """A response.create with nothing new heard: the persona speaks first (or repeats the generic
        line)."""
        first = not self.started
        self.started = True
        for i, rule in self._rules():
            if rule.on == "start":
                return self._fire(i, rule)
        # A persona without a start rule stays silent at the start; asked again later, it says the
        # generic line.
        return None if first and self.persona is not None else GENERIC

    def _match(self, transcript: str | None, answered: bool = False) -> tuple[int, ScriptRule] | None:
        """The rule whose phrase occurs last in the transcript, if any (`answered`: among the `once` rules that
        have fired, which do not fire again)."""
        text = f" {normalize_phrase(transcript or '')} "
        best: tuple[int, int, ScriptRule] | None = None
        script = self.persona.script if self.persona is not None else ()
        rules = [(i, r) for i, r in enumerate(script) if r.once and i in self.fired] if answered else self._rules()
        if text.strip():
            for i, rule in rules:
                if rule.hear is None or rule.interrupt_after_ms is not None:  # a barge-in rule's hear only arms it
                    continue
                pos = text.rfind(f" {rule.hear} ")
                if pos >= 0 and (best is None or pos > best[0]):
                    best = (pos, i, rule)
        return None if best is None else (best[1], best[2])

    def on_heard(self, transcript: str | None) -> Action | None:
        """The rule whose phrase occurs last in the transcript; else what a fallback line heard asks for (see
        `_unscripted`)."""
        self.started = True
        found = self._match(transcript)
        if found is None:
            return self._unscripted(normalize_phrase(transcript or ""))
        return self._fire(*found)

    def _unscripted(self, text: str) -> Action | None:
        """No rule for what was heard. Past MAX_REPEATS replies that got nowhere, a persona that can hang up gives
        up. Else: asked to say it again, the last line again, unless this persona's own last reply was that
        question (the other side missed it: ask again, in other words); told "I was asking you", the last line
        again (with none yet, the line is the other side's: ask again, in other words). Having asked, hearing a
        phrase it already answered: the other side missed the answer and says its own line again, so the answer
        again (its last line; silence for a silent rule). It repeats only a line the other persona can understand
        (`understood`; the barge_in greeting, which the caller only cuts into, is not one), except once when first
        asked: else it asks in other words. Anything else (or asked with nothing to repeat), GENERIC."""
        heard = f" {text} "
        asked, told = f" {_GENERIC_HEARD} " in heard, f" {_ASK_AGAIN_HEARD} " in heard
        self.stalled += 1
        if self.stalled > MAX_REPEATS and self.can_hang_up:
            return GIVE_UP
        answered = self._match(text, answered=True) if self.asking and not (asked or told) else None
        if answered is not None and answered[1].silent:
            return None
        line = self.last_said
        # Only a line the other side can understand goes again, except once when just asked (it may react to it
        # otherwise: barge_in's caller cuts into the greeting): else this persona asks the other side to speak.
        once = asked and not told and not self.asking and self.stalled == 1
        if line and (once or ((told or answered or (asked and not self.asking)) and self.understood(line))):
            self.asking = False
            return Action(say=line)
        again = told or (asked and self.asking)
        self.asking = True
        return ASK_AGAIN if again else GENERIC

    def on_typed(self, text: str) -> Action | None:
        """User text items (context seeded before the first turn): a scripted phrase in them is answered like
        speech; any other text is background, so the persona acts as if asked to speak first."""
        found = self._match(text)
        if found is None:
            return self.on_start()
        self.started = True
        return self._fire(*found)

    def record_output(self, tool: str, output: str) -> None:
        """Keep a function_call_output for `{tool.field}` templates (non-JSON output is kept as text)."""
        try:
            self.tool_outputs[tool] = json.loads(output)
        except ValueError:
            self.tool_outputs[tool] = output

    def after_tool(self, tool: str) -> Action | None:
        self.started = True
        for i, rule in self._rules():
            if rule.after_tool == tool:
                return self._fire(i, rule)
        return GENERIC

    def render(self, template: str) -> str:
        """Fill `{tool.field|filter}` from this session's tool outputs; a missing value reads "unknown"."""

        def sub(m: re.Match[str]) -> str:
            tool, path, flt = m.group(1), m.group(2), m.group(3)
            try:
                value = _lookup(self.tool_outputs.get(tool), path)
            except KeyError:
                log.warning("script template %s: no value %s.%s in this session", m.group(0), tool, path)
                return "unknown"
            if flt is None:
                return str(value)
            fn = _FILTERS.get(flt)
            if fn is None:
                log.warning("script template %s: unknown filter %r", m.group(0), flt)
                return str(value)
            return fn(value)

        return _PLACEHOLDER.sub(sub, template)

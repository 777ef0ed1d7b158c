"""Scenario files: who is on the call, what each agent is told, and (for the emulator) what each persona does.

A scenario is a TOML file. The bridge reads `instructions`, `voice`, `context`, `first_speaker` and the CS tools;
the emulator reads each persona's `script`. The real OpenAI API never sees a script: it gets the instructions, and the
emulator finds the persona whose instructions equal the session's (no field the real API lacks).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Role = Literal["caller", "cs"]
ROLES: tuple[Role, ...] = ("caller", "cs")
BUILTIN_DIR = Path(__file__).parent
MAX_SCENARIO_BYTES = 256 * 1024


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class ContextMessage:
    role: Literal["system", "user"]
    text: str


@dataclass(frozen=True)
class ToolCallStep:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ScriptRule:
    """One "when this, do that" step of an emulated persona.

    Exactly one trigger: `on = "start"` (a response.create with nothing new heard: the persona speaks first),
    `hear = "phrase"` (the persona heard this phrase), or `after_tool = "name"` (a response.create after a
    function_call_output of that tool). Actions, all optional, in this order: `say` a line (it may use
    `{tool.field}` values from function outputs, with `|words` or `|digits` to spell numbers), `call` a tool,
    `hangup` (call the `hangup` tool). A rule with no action means "heard it, stay silent".
    """

    on: Literal["start"] | None = None
    hear: str | None = None
    after_tool: str | None = None
    say: str | None = None
    call: ToolCallStep | None = None
    hangup: bool = False
    once: bool = True

    @property
    def silent(self) -> bool:
        return self.say is None and self.call is None and not self.hangup


@dataclass(frozen=True)
class Persona:
    role: Role
    instructions: str
    voice: str = "marin"
    context: tuple[ContextMessage, ...] = ()
    script: tuple[ScriptRule, ...] = ()
    # espeak-ng voice and speed used by the emulator to speak this persona's lines.
    espeak_voice: str = "en-us"
    espeak_speed: int = 165


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    first_speaker: Role
    caller: Persona
    cs: Persona
    tools: str = ""  # "module:attribute" of the CS tool registry factory; empty for no tools
    max_duration_s: float = 300.0
    idle_timeout_s: float = 60.0
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def persona(self, role: Role) -> Persona:
        return self.caller if role == "caller" else self.cs


_WORD = re.compile(r"[a-z']+")


def normalize_phrase(text: str) -> str:
    """Lower-case words only: how transcripts and `hear` phrases are compared."""
    return " ".join(_WORD.findall(text.lower()))


def _expect(where: str, value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ScenarioError(f"{where}: `{name}` must be a {want}, got {type(value).__name__}")
    return value


def _parse_rule(where: str, raw: Any) -> ScriptRule:
    _expect(where, raw, dict, "script step")
    known = {"on", "hear", "after_tool", "say", "call", "hangup", "once"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    triggers = [k for k in ("on", "hear", "after_tool") if k in raw]
    if len(triggers) != 1:
        raise ScenarioError(f"{where}: needs exactly one of `on`, `hear`, `after_tool` (got {triggers or 'none'})")
    on = raw.get("on")
    if on is not None and on != "start":
        raise ScenarioError(f"{where}: `on` can only be \"start\", got {on!r}")
    hear = raw.get("hear")
    if hear is not None:
        _expect(where, hear, str, "hear")
        if not normalize_phrase(hear):
            raise ScenarioError(f"{where}: `hear` has no words")
    call = None
    if "call" in raw:
        c = _expect(where, raw["call"], dict, "call")
        name = _expect(where, c.get("name"), str, "call.name")
        args = _expect(where, c.get("arguments", {}), dict, "call.arguments")
        call = ToolCallStep(name=name, arguments=args)
    say = raw.get("say")
    if say is not None:
        _expect(where, say, str, "say")
    return ScriptRule(
        on=on,
        hear=normalize_phrase(hear) if hear else None,
        after_tool=_expect(where, raw["after_tool"], str, "after_tool") if "after_tool" in raw else None,
        say=say,
        call=call,
        hangup=bool(_expect(where, raw.get("hangup", False), bool, "hangup")),
        once=bool(_expect(where, raw.get("once", True), bool, "once")),
    )


def _parse_persona(where: str, role: Role, raw: Any) -> Persona:
    _expect(where, raw, dict, role)
    known = {"instructions", "voice", "context", "script", "espeak_voice", "espeak_speed"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ScenarioError(f"{where}.{role}: unknown field(s) {unknown}; known: {sorted(known)}")
    instructions = _expect(f"{where}.{role}", raw.get("instructions"), str, "instructions").strip()
    if not instructions:
        raise ScenarioError(f"{where}.{role}: `instructions` is empty")
    context = []
    for i, m in enumerate(_expect(f"{where}.{role}", raw.get("context", []), list, "context")):
        w = f"{where}.{role}.context[{i}]"
        _expect(w, m, dict, "message")
        r = m.get("role")
        if r not in ("system", "user"):
            raise ScenarioError(f"{w}: `role` must be \"system\" or \"user\", got {r!r}")
        context.append(ContextMessage(role=r, text=_expect(w, m.get("text"), str, "text")))
    script = tuple(
        _parse_rule(f"{where}.{role}.script[{i}]", r)
        for i, r in enumerate(_expect(f"{where}.{role}", raw.get("script", []), list, "script"))
    )
    return Persona(
        role=role,
        instructions=instructions,
        voice=_expect(f"{where}.{role}", raw.get("voice", "marin"), str, "voice"),
        context=tuple(context),
        script=script,
        espeak_voice=_expect(f"{where}.{role}", raw.get("espeak_voice", "en-us"), str, "espeak_voice"),
        espeak_speed=int(_expect(f"{where}.{role}", raw.get("espeak_speed", 165), int, "espeak_speed")),
    )


def parse_scenario(data: dict[str, Any], where: str = "scenario", path: Path | None = None) -> Scenario:
    known = {"name", "title", "first_speaker", "caller", "cs", "tools", "max_duration_s", "idle_timeout_s"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    for role in ROLES:
        if role not in data:
            raise ScenarioError(f"{where}: missing table [{role}]")
    first = data.get("first_speaker", "cs")
    if first not in ROLES:
        raise ScenarioError(f"{where}: `first_speaker` must be \"caller\" or \"cs\", got {first!r}")
    name = _expect(where, data.get("name", path.stem if path else "scenario"), str, "name")
    max_d = float(_expect(where, data.get("max_duration_s", 300.0), (int, float), "max_duration_s"))
    idle = float(_expect(where, data.get("idle_timeout_s", 60.0), (int, float), "idle_timeout_s"))
    if max_d <= 0 or idle <= 0:
        raise ScenarioError(f"{where}: `max_duration_s` and `idle_timeout_s` must be positive")
    return Scenario(
        name=name,
        title=_expect(where, data.get("title", name), str, "title"),
        first_speaker=first,
        caller=_parse_persona(where, "caller", data["caller"]),
        cs=_parse_persona(where, "cs", data["cs"]),
        tools=_expect(where, data.get("tools", ""), str, "tools"),
        max_duration_s=max_d,
        idle_timeout_s=idle,
        path=path,
    )


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a built-in scenario by name (`late_order`) or any scenario file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = BUILTIN_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ScenarioError(
                f"no scenario named {str(name_or_path)!r}; built-in: {', '.join(builtin_names())}"
            )
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read: {e.strerror}") from e
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{p}: {len(raw)} bytes is over the {MAX_SCENARIO_BYTES}-byte limit")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{p}: not valid TOML: {e}") from e
    return parse_scenario(data, where=str(p), path=p)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))

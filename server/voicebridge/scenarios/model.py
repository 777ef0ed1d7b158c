"""Scenario files: who is on the call, what each agent is told, and (for the emulator) what each persona does.

A scenario is a TOML file. The bridge reads `instructions`, `voice`, `context`, `first_speaker` and the CS tools;
the emulator reads each persona's `script`; voicebridge.lab judges a call by the `[[expect]]` pass criteria
(expect.py). The real OpenAI API never sees a script: it gets the instructions, and the
emulator finds the persona whose instructions equal the session's (no field the real API lacks).

The models below are the file's schema: pydantic validates a file against them (unknown fields refused, types
strict: TOML has real booleans and numbers, so `hangup = "yes"` is a mistake, not a truthy string), and
`ScenarioError` names the file, the field, what was expected and what was given.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from voicebridge.tools import ToolRegistry
from voicebridge.validation import explain

from .expect import Expectation
from .impairment import parse_directions

Role = Literal["caller", "cs"]
ROLES: tuple[Role, ...] = ("caller", "cs")
BUILTIN_DIR = Path(__file__).parent
MAX_SCENARIO_BYTES = 256 * 1024


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or malformed; the message names the file and the field."""


class _FileTable(BaseModel):
    """A table of a scenario file: unknown keys are errors, values are not coerced, objects are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ContextMessage(_FileTable):
    role: Literal["system", "user"]
    text: str


class ToolCallStep(_FileTable):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


_WORD = re.compile(r"[a-z']+")


def normalize_phrase(text: str) -> str:
    """Lower-case words only: how transcripts and `hear` phrases are compared."""
    return " ".join(_WORD.findall(text.lower()))


class ScriptRule(_FileTable):
    """One "when this, do that" step of an emulated persona.

    Exactly one trigger: `on = "start"` (a response.create with nothing new heard: the persona speaks first),
    `hear = "phrase"` (the persona heard this phrase), or `after_tool = "name"` (a response.create after a
    function_call_output of that tool). Actions, all optional, in this order: `say` a line (it may use
    `{tool.field}` values from function outputs, with `|words` or `|digits` to spell numbers), `call` a tool,
    `hangup` (call the `hangup` tool). A rule with no action means "heard it, stay silent".

    `interrupt_after_ms = N` makes a barge-in rule instead: the persona starts its action while the other party is
    still talking, once it has heard N ms of that party's speech in the current turn (the emulator's model decides
    to cut in; the real API only ever answers a finished turn). Alone it arms at once; with `hear` it arms once
    that phrase has been heard (in an earlier turn), so it cuts into a later one. It needs an action.
    """

    on: Literal["start"] | None = None
    hear: str | None = None  # kept normalized (normalize_phrase)
    after_tool: str | None = None
    interrupt_after_ms: int | None = Field(None, gt=0, le=60_000)
    say: str | None = None
    call: ToolCallStep | None = None
    hangup: bool = False
    once: bool = True

    @field_validator("hear")
    @classmethod
    def _normalized(cls, hear: str | None) -> str | None:
        if hear is None:
            return None
        if not normalize_phrase(hear):
            raise ValueError("has no words")
        return normalize_phrase(hear)

    @model_validator(mode="after")
    def _one_trigger(self) -> ScriptRule:
        triggers = [k for k in ("on", "hear", "after_tool") if getattr(self, k) is not None]
        if self.interrupt_after_ms is not None:
            if triggers not in ([], ["hear"]):
                raise ValueError(f"`interrupt_after_ms` goes alone or with `hear`, not with `{triggers[-1]}`")
            if self.silent:
                raise ValueError("`interrupt_after_ms` needs an action (`say`, `call` or `hangup`): it cuts in")
            return self
        if len(triggers) != 1:
            raise ValueError(f"needs exactly one of `on`, `hear`, `after_tool` (got {', '.join(triggers) or 'none'})")
        return self

    @property
    def silent(self) -> bool:
        return self.say is None and self.call is None and not self.hangup


class Persona(_FileTable):
    instructions: str
    voice: str = "marin"
    # Arrays of tables: TOML gives lists, which a strict tuple refuses (strict=False); each item stays strict.
    context: tuple[ContextMessage, ...] = Field((), strict=False)
    script: tuple[ScriptRule, ...] = Field((), strict=False)
    # espeak-ng voice and speed used by the emulator to speak this persona's lines.
    espeak_voice: str = "en-us"
    espeak_speed: int = 165
    # The emulator's think time for this persona: ms from the end of a turn to its response's output (None: the
    # emulator's own setting, --response-delay-ms; emulator/timing.py).
    response_delay_ms: int | None = Field(None, ge=0, le=10_000)
    # The other persona's script, set when a scenario pairs them (not a field of the file): what the other side
    # can hear decides what the emulator repeats when asked (emulator/persona.py). Its rules, not the persona,
    # so that two personas never refer to each other (pydantic compares and copies private attributes too).
    _partner_script: tuple[ScriptRule, ...] | None = PrivateAttr(None)

    @property
    def partner_script(self) -> tuple[ScriptRule, ...] | None:
        """The script of the other persona of its scenario (None: not paired, e.g. built on its own)."""
        return self._partner_script

    @field_validator("instructions")
    @classmethod
    def _not_empty(cls, instructions: str) -> str:
        if not instructions.strip():
            raise ValueError("is empty")
        return instructions.strip()


class Scenario(_FileTable):
    name: str  # default: the file's name without .toml
    title: str  # default: the name
    first_speaker: Role = "cs"
    caller: Persona
    cs: Persona
    tools: str = ""  # "module:attribute" of the CS tool registry factory; empty for no tools
    max_duration_s: float = Field(300.0, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0)
    # The pass criteria (`[[expect]]`), checked when the call ends (voicebridge.lab.criteria).
    expect: tuple[Expectation, ...] = Field((), strict=False)
    # Network impairment on the relay path, both directions (media/impair.py): a profile name (good, wifi, 3g,
    # satellite, lossy) or a spec "loss=5%,jitter=30ms,delay=80ms", or one per direction "caller>cs: 3g; cs>caller:
    # loss=5%"; empty for none. Same seed, same packets lost.
    impair: str = ""
    impair_seed: int = 0

    @field_validator("impair")
    @classmethod
    def _impair_spec(cls, impair: str) -> str:
        if impair.strip():
            parse_directions(impair)  # ImpairSpecError (a ValueError) names the bad field
        return impair.strip()
    # Where the scenario was loaded from: not a field of the file, so a file cannot set it.
    _path: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _pair(self) -> Scenario:
        self.caller._partner_script, self.cs._partner_script = self.cs.script, self.caller.script
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("name", (info.context or {}).get("stem", "scenario"))
        return {"name": name, "title": name if isinstance(name, str) else "", **data}

    @property
    def path(self) -> Path | None:
        return self._path

    def persona(self, role: Role) -> Persona:
        return self.caller if role == "caller" else self.cs


def parse_scenario(data: Any, where: str = "scenario", path: Path | None = None) -> Scenario:
    """Validate a scenario file's contents (a dict, as TOML parses it); `where` names it in errors."""
    try:
        scenario = Scenario.model_validate(data, context={"stem": path.stem if path else "scenario"})
    except ValidationError as e:
        raise ScenarioError(f"{where}: {explain(e, Scenario, object_word='a table')}") from None
    scenario._path = path
    return scenario


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


def load_tools(scenario: Scenario, data_dir: Path, timeout_s: float) -> ToolRegistry:
    """Call the scenario's `module:function` tool factory with the call's folder (an empty registry without one)."""
    if not scenario.tools:
        return ToolRegistry(timeout_s=timeout_s)
    module_name, _, attr = scenario.tools.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ScenarioError(
            f"{scenario.path or scenario.name}: `tools` = {scenario.tools!r} cannot be loaded: {e}"
        ) from e
    registry = factory(data_dir)
    if not isinstance(registry, ToolRegistry):
        raise ScenarioError(f"{scenario.tools} returned {type(registry).__name__}, not a ToolRegistry")
    return registry


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))

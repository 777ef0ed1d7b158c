"""A scenario's pass criteria: the `[[expect]]` entries of its file, as they are written.

Each entry is one deterministic check with a `name` and exactly one key saying what it checks (its kind); the
other keys refine it and must fit that kind. What can be checked without running anything is checked here (types,
roles, regexes, which keys go together); what needs the scenario's tools (tool names, SQL against the tool
database, a `check` hook that imports) is checked by voicebridge.lab.criteria before any call is placed, and the
entries are evaluated there once the call has ended.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from voicebridge.results import EndReason

ExpectKind = Literal[
    "tool", "no_tool", "query", "check", "said", "heard", "end_reason", "max_duration_s", "max_turn_gap_ms",
    "max_overlap_s", "max_silence_s", "max_interruptions", "min_interruptions", "judge",
]
KINDS: tuple[ExpectKind, ...] = (
    "tool", "no_tool", "query", "check", "said", "heard", "end_reason", "max_duration_s", "max_turn_gap_ms",
    "max_overlap_s", "max_silence_s", "max_interruptions", "min_interruptions", "judge",
)
# The keys that refine each kind; every other key is an error for that kind.
MODIFIERS: dict[str, tuple[str, ...]] = {
    "tool": ("args", "count", "ok", "before", "after"),
    "no_tool": ("args",),
    "query": ("equals", "database"),
    "said": ("contains", "regex", "not_contains"),
    "heard": ("contains", "regex", "not_contains"),
    "max_turn_gap_ms": ("by",),
    "max_interruptions": ("by",),
    "min_interruptions": ("by",),
}
_ALL_MODIFIERS = sorted({m for ms in MODIFIERS.values() for m in ms})
_HOOK = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"bad regex {pattern!r}: {e}") from None


class TurnGapLimit(BaseModel):
    """`max_turn_gap_ms = { p50 = 800, p95 = 1500 }`: limits on the turn gaps' percentiles, milliseconds."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    p50: float | None = Field(None, gt=0)
    p95: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some(self) -> TurnGapLimit:
        if self.p50 is None and self.p95 is None:
            raise ValueError("needs `p50`, `p95` or both")
        return self


class Expectation(BaseModel):
    """One `[[expect]]` entry. See README "Scenario files" for each kind."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    # tools
    tool: str | None = None
    no_tool: str | None = None
    args: dict[str, Any] | None = None  # a subset of the arguments: values, or `{ regex = "..." }`
    count: int | None = Field(None, ge=0)
    ok: bool | None = None
    before: str | None = None
    after: str | None = None
    # state
    query: str | None = None
    equals: bool | int | float | str | None = None
    database: str | None = None
    check: str | None = None
    # speech
    said: Literal["caller", "cs"] | None = None
    heard: Literal["caller", "cs"] | None = None
    contains: str | None = None
    regex: str | None = None
    not_contains: str | None = None
    # the call
    end_reason: EndReason | None = None
    max_duration_s: float | None = Field(None, gt=0)
    max_turn_gap_ms: TurnGapLimit | None = None
    by: Literal["caller", "cs"] | None = None
    # talk-over (lab/timing.py): the longest overlap, the longest silence, how many interruptions (at most, at
    # least: a barge-in scenario must show one)
    max_overlap_s: float | None = Field(None, ge=0)
    max_silence_s: float | None = Field(None, gt=0)
    max_interruptions: int | None = Field(None, ge=0)
    min_interruptions: int | None = Field(None, ge=1)
    # judge
    judge: str | None = None

    @field_validator("name")
    @classmethod
    def _named(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("is empty")
        return name.strip()

    @field_validator("regex")
    @classmethod
    def _regex(cls, regex: str | None) -> str | None:
        if regex is not None:
            _compile(regex)
        return regex

    @field_validator("args")
    @classmethod
    def _args(cls, args: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (args or {}).items():
            if isinstance(value, dict) and "regex" in value:
                if set(value) != {"regex"} or not isinstance(value["regex"], str):
                    raise ValueError(f"`{key}`: a regex is written {{ regex = \"...\" }}, with nothing else")
                try:
                    _compile(value["regex"])
                except ValueError as e:
                    raise ValueError(f"`{key}`: {e}") from None
        return args

    @field_validator("check")
    @classmethod
    def _hook(cls, check: str | None) -> str | None:
        if check is not None and not _HOOK.match(check):
            raise ValueError(f"{check!r} is not \"module:function\"")
        return check

    @model_validator(mode="after")
    def _one_kind(self) -> Expectation:
        given = {k for k, v in self if v is not None and k != "name"}
        kinds = [k for k in KINDS if k in given]
        if len(kinds) != 1:
            raise ValueError(
                f"{self.name!r}: needs exactly one of {', '.join(f'`{k}`' for k in KINDS)} "
                f"(got {', '.join(kinds) or 'none'})"
            )
        kind = kinds[0]
        allowed = MODIFIERS.get(kind, ())
        extra = sorted(k for k in given if k in _ALL_MODIFIERS and k not in allowed)
        if extra:
            fits = f"with `{kind}`: {', '.join(allowed)}" if allowed else f"`{kind}` takes nothing else"
            raise ValueError(f"{self.name!r}: `{extra[0]}` does not go with `{kind}` ({fits})")
        if kind == "query" and self.equals is None:
            raise ValueError(f"{self.name!r}: `query` needs `equals` (the value of the first column of the first row)")
        if kind in ("said", "heard"):
            texts = [k for k in ("contains", "regex", "not_contains") if k in given]
            if len(texts) != 1:
                raise ValueError(
                    f"{self.name!r}: `{kind}` needs exactly one of `contains`, `regex`, `not_contains` "
                    f"(got {', '.join(texts) or 'none'})"
                )
        return self

    @property
    def kind(self) -> ExpectKind:
        return next(k for k in KINDS if getattr(self, k) is not None)

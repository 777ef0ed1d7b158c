"""The one message a pydantic ValidationError becomes, for any model: a REST body here (scenario files and tool
arguments have their own tests)."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicebridge.validation import MAX_PROBLEMS, explain, shown, where

pytestmark = pytest.mark.unit


class Transport(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["webrtc", "ws"] = "webrtc"


class StartBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    scenario: str = Field("late_order", min_length=1)
    calls: int = Field(1, ge=1, le=50)
    legs: dict[str, Transport] = Field(default_factory=dict)
    tags: list[str] | None = None


def message(body: Any) -> str:
    with pytest.raises(ValidationError) as info:
        StartBody.model_validate(body)
    return explain(info.value, StartBody)


def test_each_kind_of_mistake() -> None:
    assert message({"scenario": 7}) == "scenario: expected a string, got 7 (an integer)"
    assert message({"scenario": ""}) == "scenario: expected at least 1 character, got '' (a string)"
    assert message({"calls": 0}) == "calls: expected a number at least 1, got 0 (an integer)"
    assert message({"calls": 2.5}) == "calls: expected an integer, got 2.5 (a number)"
    assert message({"x": 1}) == "x: unknown field (known: calls, legs, scenario, tags)"
    assert message({"legs": {"cs": {"kind": "sip"}}}) == "legs.cs.kind: expected 'webrtc' or 'ws', got 'sip' (a string)"
    assert message({"legs": {"cs": {"knd": "ws"}}}) == "legs.cs.knd: unknown field (known: kind)"
    assert message({"tags": ["a", None]}) == "tags[1]: expected a string, got null"
    assert message([1, 2]) == "expected an object, got an array"


class Token(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["listen", "takeover"]
    scope: Literal["a", "b", "c"] = "a"


class Nothing(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def test_a_missing_choice_lists_its_values_and_an_empty_model_says_it_takes_nothing() -> None:
    with pytest.raises(ValidationError) as info:
        Token.model_validate({})
    assert explain(info.value, Token) == "role: required but missing (expected 'listen' or 'takeover')"
    with pytest.raises(ValidationError) as info:
        Token.model_validate({"role": "listen", "scope": "d"})
    assert explain(info.value, Token) == "scope: expected 'a', 'b' or 'c', got 'd' (a string)"
    with pytest.raises(ValidationError) as info:
        Nothing.model_validate({"x": 1})
    assert explain(info.value, Nothing) == "x: unknown field (none are accepted here)"
    assert explain(info.value) == "x: unknown field"  # without the model: nothing to list


def test_many_mistakes_are_cut_short() -> None:
    text = message({f"x{i}": i for i in range(MAX_PROBLEMS + 2)})
    assert text.count("unknown field") == MAX_PROBLEMS and text.endswith("; and 2 more")


def test_locations_and_values_read_like_the_input() -> None:
    assert where(("caller", "script", 2, "say")) == "caller.script[2].say"
    assert where((0, "a")) == "[0].a"
    assert shown(True) == "true (a boolean)" and shown({"a": 1}) == "an object" and shown(None) == "null"
    assert shown("x" * 100) == f"'{'x' * 36}... (a string)"

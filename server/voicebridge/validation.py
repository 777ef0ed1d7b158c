"""One clear message from a pydantic ValidationError, for every input someone else writes.

Scenario files, tool arguments sent by a model and REST bodies are validated by pydantic models; a person (or a
model) then reads what was wrong. `explain()` turns the errors into one line naming, for each problem, where it is
(`caller.script[2].hangup`), what was expected and what was given:

    caller.script[2].hangup: expected true or false, got 'yes' (a string)
    caller.voise: unknown field (known: context, espeak_speed, espeak_voice, instructions, script, voice)
    cs: required but missing

The caller adds the file, tool or request it was validating. This module imports nothing from voicebridge, so any
layer can use it.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from typing_extensions import is_typeddict

MAX_PROBLEMS = 3  # a file with ten mistakes gets the first three; fixing them shows the next ones
_SHOWN_CHARS = 40

# What each pydantic type error expected, in the words of JSON (TOML uses the same ones, but says "table").
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "an array",
    "tuple_type": "an array",
    "set_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dataclass_type": "an object",
}
_SHOULD = re.compile(r"^\w+ should (?:be|have) ")
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}  # fmt: skip


def where(loc: tuple[int | str, ...]) -> str:
    """`('caller', 'script', 2, 'say')` -> `caller.script[2].say`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def kind(value: Any) -> str:
    """A value's JSON type, with its article: 'a string', 'an array', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def shown(value: Any) -> str:
    """The value that was given, short: `'yes' (a string)`, `an array`."""
    if isinstance(value, list | tuple | dict):
        return kind(value)
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return f"{text} ({kind(value)})" if value is not None else "null"


def _unwrap(tp: Any) -> Any:
    """Strip Annotated, Required/NotRequired and `X | None` down to the type that has fields or items."""
    while True:
        origin = get_origin(tp)
        if origin in (Annotated, Required, NotRequired):
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _fields(tp: Any) -> dict[str, Any] | None:
    """{field: type} of a model or TypedDict, else None."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if is_typeddict(tp):
        return get_type_hints(tp, include_extras=True)
    return None


def _type_at(root: Any, loc: tuple[int | str, ...]) -> Any:
    """The declared type at `loc` inside `root`, or None when the path leaves what can be followed."""
    tp = root
    for part in loc:
        tp = _unwrap(tp)
        origin, args = get_origin(tp), get_args(tp)
        if origin is dict and len(args) == 2:  # any key: its value's type
            tp = args[1]
        elif isinstance(part, int) and origin in (list, tuple) and args:
            tp = args[0]
        else:
            fields = _fields(tp)
            if fields is None or part not in fields:
                return None
            tp = fields[part]
    return tp


def _choices(values: tuple[Any, ...]) -> str:
    """`'a', 'b' or 'c'`, as pydantic words a Literal's values."""
    shown_ = [repr(v) for v in values]
    return shown_[0] if len(shown_) == 1 else f"{', '.join(shown_[:-1])} or {shown_[-1]}"


def problem(error: ErrorDetails, root: type | None = None, object_word: str = "an object") -> str:
    """One error as `location: what was expected, what was given`; `root` (the validated model or TypedDict)
    lets an unknown field be answered with the known ones."""
    loc = tuple(error["loc"])
    at = f"{where(loc)}: " if loc else ""
    kind_ = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind_ == "missing":
        declared = _unwrap(_type_at(root, loc)) if root is not None else None
        if _fields(declared) is not None:
            return f"{at}required but missing (expected {object_word})"
        if get_origin(declared) is Literal:  # say the values: a missing `role` is fixed by knowing them
            return f"{at}required but missing (expected {_choices(get_args(declared))})"
        return f"{at}required but missing"
    if kind_ == "extra_forbidden":
        known = _fields(_type_at(root, loc[:-1])) if root is not None else None
        if known is None:
            return f"{at}unknown field"
        listed = f"known: {', '.join(sorted(known))}" if known else "none are accepted here"
        return f"{at}unknown field ({listed})"
    if kind_ in ("value_error", "assertion_error"):
        return f"{at}{ctx.get('error', error['msg'])}"
    if kind_ == "json_invalid":
        return f"{at}not valid JSON: {ctx.get('error', error['msg'])}"
    if kind_ in _EXPECTED:
        expected = _EXPECTED[kind_]
        expected = object_word if expected == "an object" else expected
    elif kind_ == "literal_error":
        expected = str(ctx.get("expected", "one of the allowed values"))
    elif kind_ in _BOUNDS:
        key, words = _BOUNDS[kind_]
        bound = ctx.get(key)
        expected = f"a number {words} {bound:g}" if isinstance(bound, float) else f"a number {words} {bound}"
    else:  # pydantic's own words: "Input should be ...", "String should have ..." read as "expected ..."
        msg = error["msg"]
        m = _SHOULD.match(msg)
        if m is None:
            return f"{at}{msg[:1].lower()}{msg[1:]}, got {shown(given)}"
        expected = msg[m.end() :]
    return f"{at}expected {expected}, got {shown(given)}"


def explain(exc: ValidationError, root: type | None = None, object_word: str = "an object") -> str:
    """Every problem of a ValidationError (the first MAX_PROBLEMS), joined into one line."""
    errors = exc.errors()
    parts = [problem(e, root, object_word) for e in errors[:MAX_PROBLEMS]]
    more = len(errors) - MAX_PROBLEMS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

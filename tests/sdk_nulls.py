"""Every field of the SDK's request types that takes `null`, found by walking the `*Param` TypedDicts.

A case is one such field set to null inside the smallest valid object around it (required fields filled with
plain values), so a test can send it as a session, a client event or an HTTP body and check the API takes it.
"""

from __future__ import annotations

import collections.abc
import typing
from dataclasses import dataclass
from typing import Any, Literal

from typing_extensions import is_typeddict

from voicebridge.emulator.schema import _unwrap, nullable

MAX_DEPTH = 8


@dataclass(frozen=True)
class NullCase:
    path: str  # dotted, as the API names params: session.audio.input.noise_reduction, tools[0].headers
    value: dict[str, Any]  # the root object with that field null


def _literal(td: Any) -> Any:
    hint = typing.get_type_hints(td).get("type")
    for alt in _unwrap(hint) if hint is not None else []:
        if typing.get_origin(alt) is Literal:
            return typing.get_args(alt)[0]
    return None


def minimal(td: Any) -> dict[str, Any]:
    """The smallest valid object of a TypedDict: its required fields with plain values."""
    out: dict[str, Any] = {}
    for key, hint in typing.get_type_hints(td, include_extras=True).items():
        origin = typing.get_origin(hint)
        if origin is typing.Required or (td.__total__ and origin is not typing.NotRequired):
            out[key] = _literal(td) if key == "type" and _literal(td) is not None else sample(hint)
    return out


def sample(hint: Any) -> Any:
    alts = _unwrap(hint)
    for a in alts:
        if typing.get_origin(a) is Literal:
            return typing.get_args(a)[0]
    for a in alts:
        if is_typeddict(a):
            return minimal(a)
        origin = typing.get_origin(a) or a
        if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
            return []
        if origin in (dict, collections.abc.Mapping, object):
            return {}
        if a is str:
            return "x"
        if a is bool:
            return True
        if a is int:
            return 1
        if a is float:
            return 0.5
    return None


def _children(hint: Any) -> list[tuple[str, Any]]:
    """(path suffix, TypedDict) for each object type a field can hold, directly or as list items."""
    out: list[tuple[str, Any]] = []
    for a in _unwrap(hint):
        if is_typeddict(a):
            out.append(("", a))
        elif typing.get_origin(a) in (list, collections.abc.Iterable, collections.abc.Sequence):
            (item,) = typing.get_args(a)
            out += [("[0]", t) for t in _unwrap(item) if is_typeddict(t)]
    return out


def null_cases(td: Any, prefix: str = "", base: dict[str, Any] | None = None) -> list[NullCase]:
    """Every nullable field reachable from `td`, each as a whole object (`base` merged at the top)."""
    found: dict[str, NullCase] = {}

    def walk(td: Any, path: str, build: typing.Callable[[dict[str, Any]], dict[str, Any]], depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        hints = typing.get_type_hints(td, include_extras=True)
        for key, hint in hints.items():
            where = f"{path}.{key}" if path else key
            if nullable(td, key) and where not in found:
                found[where] = NullCase(where, build({**minimal(td), key: None}))
            for suffix, child in _children(hint):

                def inner(obj: dict[str, Any], td: Any = td, key: str = key, suffix: str = suffix) -> dict[str, Any]:
                    return {**minimal(td), key: [obj] if suffix else obj}

                walk(child, where + suffix, lambda obj, inner=inner, build=build: build(inner(obj)), depth + 1)

    def top(obj: dict[str, Any]) -> dict[str, Any]:
        return {**(base or {}), **obj}

    walk(td, prefix, top, 0)
    return list(found.values())

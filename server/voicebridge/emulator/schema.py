"""Checks outside input against the openai SDK's own request types, the way the API answers bad input.

The SDK's `*Param` TypedDicts describe exactly what the API accepts. Pydantic validates value types against
them but silently ignores unknown keys, so a small walker over the same TypedDicts finds unknown fields and
names them (`session.audio.input.foo`), as the real API's `unknown_parameter` errors do.

`null`: a field takes null when its annotation is Optional, or when the SDK documents it ("can be set to
`null` to turn off": `audio.input.noise_reduction`, `audio.input.transcription`) although its annotation
says otherwise. The real API follows its documentation (official clients send `noise_reduction: null` by
default), so those documented nulls are read from the SDK's own docstrings and accepted as well.
"""

from __future__ import annotations

import ast
import collections.abc
import functools
import inspect
import itertools
import re
import textwrap
import types
import typing
from typing import Any, Literal, Union

from openai.types.realtime import (
    ConversationItemCreateEventParam,
    ConversationItemDeleteEventParam,
    ConversationItemRetrieveEventParam,
    ConversationItemTruncateEventParam,
    InputAudioBufferAppendEventParam,
    InputAudioBufferClearEventParam,
    InputAudioBufferCommitEventParam,
    OutputAudioBufferClearEventParam,
    RealtimeSessionCreateRequestParam,
    ResponseCancelEventParam,
    ResponseCreateEventWithReferencesParam,
    SessionUpdateEventParam,
)
from openai.types.realtime.client_secret_create_params import ClientSecretCreateParams
from pydantic import TypeAdapter, ValidationError
from typing_extensions import is_typeddict

from voicebridge.edge.json_body import JsonBodyError, parse_json

MAX_JSON_DEPTH = 64  # a session nests a few levels, tool parameter schemas a few more; 64 is generous


class ApiError(Exception):
    """An error in the API's shape: HTTP status plus the `error` object's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_
        self.headers = headers or {}  # e.g. Retry-After on a 429 or 503

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


# The API's answer (404 `call_id_not_found`) to a call id it has no session for, as reported for the sideband.
NO_SUCH_CALL = "No session found for the provided call_id."

CLIENT_EVENTS: dict[str, Any] = {
    "session.update": SessionUpdateEventParam,
    "input_audio_buffer.append": InputAudioBufferAppendEventParam,
    "input_audio_buffer.commit": InputAudioBufferCommitEventParam,
    "input_audio_buffer.clear": InputAudioBufferClearEventParam,
    "conversation.item.create": ConversationItemCreateEventParam,
    "conversation.item.retrieve": ConversationItemRetrieveEventParam,
    "conversation.item.truncate": ConversationItemTruncateEventParam,
    "conversation.item.delete": ConversationItemDeleteEventParam,
    "response.create": ResponseCreateEventWithReferencesParam,  # `input` may hold item_reference items
    "response.cancel": ResponseCancelEventParam,
    "output_audio_buffer.clear": OutputAudioBufferClearEventParam,
}

_adapters: dict[Any, TypeAdapter[Any]] = {}


def _adapter(td: Any) -> TypeAdapter[Any]:
    if td not in _adapters:
        _adapters[td] = TypeAdapter(td)
    return _adapters[td]


def _unwrap(tp: Any) -> list[Any]:
    """The concrete alternatives of an annotation: Required/Optional/Annotated/Union peeled away."""
    origin = typing.get_origin(tp)
    if origin in (typing.Required, typing.NotRequired, typing.Annotated):
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        for a in typing.get_args(tp):
            out.extend(_unwrap(a))
        return out
    return [tp]


def _literal_type(td: Any) -> set[Any] | None:
    hint = typing.get_type_hints(td).get("type")
    if hint is None:
        return None
    vals: set[Any] = set()
    for alt in _unwrap(hint):
        if typing.get_origin(alt) is Literal:
            vals.update(typing.get_args(alt))
    return vals or None


def _chosen(tp: Any, value: dict[str, Any]) -> list[Any]:
    """The TypedDicts of `tp` that describe this object (by its `type` when the union has several)."""
    tds = [a for a in _unwrap(tp) if is_typeddict(a)]
    return [td for td in tds if value.get("type") in (_literal_type(td) or {value.get("type")})] or tds


def _hints(tds: list[Any]) -> dict[str, tuple[Any, Any]]:
    """field -> (annotation, the TypedDict declaring it), over the chosen TypedDicts."""
    hints: dict[str, tuple[Any, Any]] = {}
    for td in tds:
        for k, h in typing.get_type_hints(td, include_extras=True).items():
            hints.setdefault(k, (h, td))
    return hints


# "can be set to `null` to turn off", "Set to null to disable", "pass `null`": the SDK's wording for a null
# that switches a feature off.
_NULL_DOC = re.compile(r"\b(?:set to|pass)\s+`?null\b", re.IGNORECASE)


@functools.cache
def _field_docs(td: Any) -> dict[str, str]:
    """Each field's docstring in the SDK's source: the string literal right after its annotation."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(td)))
    except (OSError, TypeError, SyntaxError):  # no source installed: only Optional annotations count
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for a, b in itertools.pairwise(body):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)
        ):
            docs[a.target.id] = b.value.value
    return docs


def nullable(td: Any, field: str) -> bool:
    """Whether the API takes `null` for this field of this TypedDict (Optional, or documented so)."""
    hint = typing.get_type_hints(td, include_extras=True).get(field)
    if hint is None:
        return False
    alts = _unwrap(hint)
    if type(None) in alts:
        return True
    if _NULL_DOC.search(_field_docs(td).get(field, "")):
        return True
    return any(is_typeddict(a) and _NULL_DOC.search(a.__doc__ or "") for a in alts)


def _documented_nulls_removed(tp: Any, value: Any) -> Any:
    """`value` without the nulls that the SDK documents but does not type (pydantic would refuse them);
    they mean "off", which to the validator is the same as absent."""
    if isinstance(value, dict):
        tds = _chosen(tp, value)
        if not tds:
            return value
        hints = _hints(tds)
        out: dict[str, Any] = {}
        for key, sub in value.items():
            if key not in hints:
                out[key] = sub
                continue
            hint, td = hints[key]
            if sub is None and type(None) not in _unwrap(hint) and nullable(td, key):
                continue
            out[key] = _documented_nulls_removed(hint, sub)
        return out
    if isinstance(value, list):
        for a in _unwrap(tp):
            if typing.get_origin(a) in (list, collections.abc.Iterable, collections.abc.Sequence):
                (item_tp,) = typing.get_args(a)
                return [_documented_nulls_removed(item_tp, sub) for sub in value]
    return value


def unknown_field(tp: Any, value: Any, path: str) -> str | None:
    """The dotted path of the first key in `value` that `tp` does not declare, or None."""
    alts = _unwrap(tp)
    if isinstance(value, dict):
        tds = _chosen(tp, value)
        if not tds:
            return None  # free-form dicts (JSON schema `parameters`, metadata) take any key
        hints = {k: h for k, (h, _) in _hints(tds).items()}
        for key, sub in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in hints:
                return where
            found = unknown_field(hints[key], sub, where)
            if found:
                return found
        return None
    if isinstance(value, list):
        for a in alts:
            origin = typing.get_origin(a)
            if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
                (item_tp,) = typing.get_args(a)
                for i, sub in enumerate(value):
                    found = unknown_field(item_tp, sub, f"{path}[{i}]")
                    if found:
                        return found
        return None
    return None


def _error_path(value: Any, loc: tuple[Any, ...], prefix: str) -> str:
    """Turn pydantic's loc (which mixes in union branch names) into the dotted path of the bad value."""
    path = prefix
    cur = value
    for part in loc:
        if isinstance(cur, dict) and isinstance(part, str) and part in cur:
            cur = cur[part]
            path = f"{path}.{part}" if path else part
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
            path = f"{path}[{part}]"
        elif isinstance(cur, dict) and isinstance(part, str) and part.islower() and "_" not in part[:1]:
            # a required key that is missing
            return f"{path}.{part}" if path else part
    return path


def check(td: Any, value: Any, prefix: str, status: int = 400) -> None:
    """Raise ApiError naming the first unknown field, missing required field or wrongly typed value."""
    if not isinstance(value, dict):
        raise ApiError(
            status,
            f"Invalid type for '{prefix or 'body'}': expected an object.",
            code="invalid_type",
            param=prefix or None,
        )
    bad = unknown_field(td, value, prefix)
    if bad:
        raise ApiError(status, f"Unknown parameter: '{bad}'.", code="unknown_parameter", param=bad)
    try:
        _adapter(td).validate_python(_documented_nulls_removed(td, value))
    except ValidationError as e:
        err = e.errors()[0]
        where = _error_path(value, tuple(err["loc"]), prefix)
        if err["type"] == "missing":
            raise ApiError(
                status,
                f"Missing required parameter: '{where}'.",
                code="missing_required_parameter",
                param=where,
            ) from None
        raise ApiError(
            status, f"Invalid value for '{where}': {err['msg']}.", code="invalid_value", param=where
        ) from None


def check_session(session: Any, prefix: str = "session") -> None:
    check(RealtimeSessionCreateRequestParam, session, prefix)
    if session.get("type") != "realtime":
        raise ApiError(
            400,
            f"Invalid value for '{prefix}.type': the emulator serves only 'realtime' sessions.",
            code="invalid_value",
            param=f"{prefix}.type",
        )


def check_client_secret_request(body: Any) -> None:
    check(ClientSecretCreateParams, body, "")


def check_client_event(ev: dict[str, Any]) -> None:
    """Validate a client event whose `type` is known (the caller checks that first)."""
    check(CLIENT_EVENTS[ev["type"]], ev, "")


def parse_body_json(raw: str | bytes, param: str | None = None) -> Any:
    """The one JSON reader of the emulator (the body, the multipart `session`, client events): bounded depth and
    number sizes, and a 400 saying what is wrong instead of a server error."""
    try:
        return parse_json(raw, max_depth=MAX_JSON_DEPTH)
    except JsonBodyError as e:
        if param is None:
            message = f"We could not parse the JSON body of your request: {e}."
            raise ApiError(400, message, code="invalid_json") from None
        raise ApiError(400, f"Invalid '{param}': not valid JSON ({e}).", code="invalid_value", param=param) from None

"""Checks outside input against the openai SDK's own request types, the way the API answers bad input.

The SDK's `*Param` TypedDicts describe exactly what the API accepts. Pydantic validates value types against
them but
silently ignores unknown keys, so a small walker over the same TypedDicts finds unknown fields and names them
(`session.audio.input.foo`), as the real API's `unknown_parameter` errors do.
"""

from __future__ import annotations

import collections.abc
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
    ResponseCreateEventParam,
    SessionUpdateEventParam,
)
from openai.types.realtime.client_secret_create_params import ClientSecretCreateParams
from pydantic import TypeAdapter, ValidationError
from typing_extensions import is_typeddict


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
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


CLIENT_EVENTS: dict[str, Any] = {
    "session.update": SessionUpdateEventParam,
    "input_audio_buffer.append": InputAudioBufferAppendEventParam,
    "input_audio_buffer.commit": InputAudioBufferCommitEventParam,
    "input_audio_buffer.clear": InputAudioBufferClearEventParam,
    "conversation.item.create": ConversationItemCreateEventParam,
    "conversation.item.retrieve": ConversationItemRetrieveEventParam,
    "conversation.item.truncate": ConversationItemTruncateEventParam,
    "conversation.item.delete": ConversationItemDeleteEventParam,
    "response.create": ResponseCreateEventParam,
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


def unknown_field(tp: Any, value: Any, path: str) -> str | None:
    """The dotted path of the first key in `value` that `tp` does not declare, or None."""
    alts = _unwrap(tp)
    if isinstance(value, dict):
        tds = [a for a in alts if is_typeddict(a)]
        if not tds:
            return None  # free-form dicts (JSON schema `parameters`, metadata) take any key
        chosen = [td for td in tds if value.get("type") in (_literal_type(td) or {value.get("type")})] or tds
        hints: dict[str, Any] = {}
        for td in chosen:
            for k, h in typing.get_type_hints(td, include_extras=True).items():
                hints.setdefault(k, h)
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
        _adapter(td).validate_python(value)
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

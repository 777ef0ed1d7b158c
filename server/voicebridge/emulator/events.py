"""Builders for the Realtime GA server events and items the emulator sends, in the SDK's exact shapes.

Every builder returns a plain dict ready for `json.dumps`; the tests validate each one against the SDK's
`RealtimeServerEvent` union, so a field added here that the API lacks shows up there.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

Event = dict[str, Any]
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 21) -> str:
    """IDs shaped like the API's (`event_...`, `item_...`, `resp_...`, `call_...`, `rtc_...`)."""
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def event(type_: str, **fields: Any) -> Event:
    return {"type": type_, "event_id": new_id("event"), **fields}


def error(
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    event_id: str | None = None,
) -> Event:
    """The `error` server event; `event_id` inside `error` names the client event that caused it."""
    return event(
        "error",
        error={"type": type_, "code": code, "message": message, "param": param, "event_id": event_id},
    )


# ---- items -------------------------------------------------------------------------------------------------


def user_audio_item(item_id: str, transcript: str | None, status: str = "completed") -> Event:
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": status,
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def assistant_audio_item(item_id: str, transcript: str | None, status: str) -> Event:
    part = None if transcript is None else {"type": "output_audio", "transcript": transcript}
    return _assistant_item(item_id, part, status)


def assistant_text_item(item_id: str, text: str | None, status: str) -> Event:
    part = None if text is None else {"type": "output_text", "text": text}
    return _assistant_item(item_id, part, status)


def _assistant_item(item_id: str, part: Event | None, status: str) -> Event:
    """An assistant message item; its one content part once there is one (none while it is in progress)."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": status,
        "role": "assistant",
        "content": [] if part is None else [part],
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Event:
    return {
        "id": item_id,
        "type": "function_call",
        "object": "realtime.item",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    }


# ---- responses ---------------------------------------------------------------------------------------------


def response_object(
    response_id: str,
    *,
    status: str,
    output: list[Event],
    voice: str,
    audio_format: Event | None = None,
    status_details: Event | None = None,
    usage: Event | None = None,
    metadata: dict[str, str] | None = None,
    conversation_id: str | None = None,
    output_modalities: list[str] | None = None,
    max_output_tokens: int | str = "inf",
) -> Event:
    """`conversation_id` is the default conversation's id, or None for an out-of-band response."""
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": output_modalities or ["audio"],
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": audio_format or {"type": "audio/pcm", "rate": 24000}, "voice": voice}},
        "usage": usage,
        "metadata": metadata,
    }


def usage(text_in: int, audio_in: int, text_out: int, audio_out: int) -> Event:
    """Token usage in the API's shape. The emulator counts words as text tokens and about ten audio tokens
    a second of speech (the real model's rate is in that ballpark): cheap, deterministic, never zero."""
    inp = text_in + audio_in
    out = text_out + audio_out
    return {
        "total_tokens": inp + out,
        "input_tokens": inp,
        "output_tokens": out,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


def transcript_deltas(text: str, max_parts: int = 8) -> list[str]:
    """Split a line into word-ish deltas that join back to exactly `text`."""
    if not text:
        return []
    words = text.split(" ")
    per = max(1, -(-len(words) // max_parts))
    parts = []
    for i in range(0, len(words), per):
        chunk = " ".join(words[i : i + per])
        parts.append(chunk if i == 0 else " " + chunk)
    return parts

"""The 11 GA client events, each checked against the SDK's types first; invalid ones get the API's `error`
event
(with the client's `event_id` echoed in `error.event_id`), never an exception out of the data channel."""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from . import audio_formats, response_plan
from . import events as ev
from .hearing import HearingError
from .responder import Response
from .schema import CLIENT_EVENTS, ApiError, check_client_event, check_session, parse_body_json
from .session_config import merge_session
from .state import SessionState

log = logging.getLogger(__name__)
MAX_EVENT_BYTES = 15 * 1024 * 1024  # the real API's per-message limit is about this size


class Conversation(SessionState, Protocol):
    """What client events act on: a session's state (state.py) and its responses (responder.py's records)."""

    response: Response | None  # the default conversation's active response
    responses: dict[str, Response]  # every active response, out-of-band ones included

    def start_response(self, params: dict[str, Any] | None = None) -> Response: ...

    def cancel_response(self, reason: str, response: Response | None = None) -> bool: ...


def handle(s: Conversation, message: str | bytes) -> None:
    event_id: str | None = None
    try:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        if len(message) > MAX_EVENT_BYTES:
            raise ApiError(
                400,
                f"Event is {len(message)} bytes, over the {MAX_EVENT_BYTES}-byte limit.",
                code="event_too_large",
            )
        data = parse_body_json(message)  # depth and number sizes bounded, like the HTTP bodies
        if not isinstance(data, dict):
            raise ApiError(400, "Invalid event: expected a JSON object.", code="invalid_value")
        event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
        kind = data.get("type")
        if kind not in CLIENT_EVENTS:
            supported = ", ".join(f"'{k}'" for k in CLIENT_EVENTS)
            raise ApiError(
                400,
                f"Invalid value: {kind!r}. Supported values are: {supported}.",
                code="invalid_value",
                param="type",
            )
        check_client_event(data)
        _HANDLERS[kind](s, data)
    except ApiError as e:
        s.send_error(e, event_id)
    except Exception:  # a bug here must not take the session down: report it as the API does
        log.exception("session %s: client event failed", s.id)
        s.send(
            ev.error(
                "The server had an error while processing your request.",
                type_="server_error",
                event_id=event_id,
            )
        )


def _session_update(s: Conversation, data: dict[str, Any]) -> None:
    update = data["session"]
    check_session(update)
    new = merge_session(s.config, update)
    old_voice = (s.config.get("audio") or {}).get("output", {}).get("voice")
    new_voice = (new.get("audio") or {}).get("output", {}).get("voice")
    if new_voice != old_voice and s.audio_items:
        raise ApiError(
            400,
            "Cannot update a conversation's voice if assistant audio is present.",
            code="cannot_update_voice",
            param="session.audio.output.voice",
        )
    previous = s.config
    s.config = new
    try:
        s.vad_changed()
    except ApiError:
        s.config = previous
        raise
    if new.get("instructions") != previous.get("instructions"):
        persona = s.personas.find(new.get("instructions"))
        if persona is not s.script.persona:
            from .persona import Script

            s.script = Script(persona)
            s.warm_up()
    s.send(ev.event("session.updated", session=s.config))


def _item_create(s: Conversation, data: dict[str, Any]) -> None:
    item = dict(data["item"])
    after = data.get("previous_item_id")
    if after is not None and after != "root" and after not in s.items:
        raise ApiError(
            400,
            f"Error adding item: the previous item with id '{after}' does not exist.",
            code="item_create_invalid_previous_item_id",
        )
    item_id = item.get("id") or ev.new_id("item")
    if item_id in s.items:
        raise ApiError(
            400, f"Item with item_id already exists: {item_id}", code="invalid_value", param="item.id"
        )
    kind = item.get("type")
    if kind == "function_call_output":
        name = s.call_names.get(item["call_id"])
        if name is None:
            raise ApiError(
                400,
                f"Tool call with call_id not found: {item['call_id']}",
                code="invalid_value",
                param="item.call_id",
            )
        s.script.record_output(name, item["output"])
        s.outputs.append(name)
    elif kind == "function_call":
        if item.get("call_id"):
            s.call_names[item["call_id"]] = item["name"]
    elif kind == "message":
        if item.get("role") == "assistant" and any(c.get("type") == "input_text" for c in item["content"]):
            raise ApiError(
                400,
                "Assistant messages take 'output_text' content, not 'input_text'.",
                code="invalid_value",
                param="item.content",
            )
        if item.get("role") == "user":
            texts = [c.get("text") or c.get("transcript") or "" for c in item["content"]]
            s.typed.append(" ".join(t for t in texts if t))
    else:
        raise ApiError(
            400,
            f"The emulator does not support items of type {kind!r}.",
            code="invalid_value",
            param="item.type",
        )
    item.update({"id": item_id, "object": "realtime.item", "status": "completed"})
    s.add_item(item, after=after)


def _item_retrieve(s: Conversation, data: dict[str, Any]) -> None:
    item = s.items.get(data["item_id"])
    if item is None:
        raise ApiError(
            400,
            f"Error retrieving item: the item with id '{data['item_id']}' does not exist.",
            code="item_retrieve_invalid_item_id",
        )
    s.send(ev.event("conversation.item.retrieved", item=item))


def _item_truncate(s: Conversation, data: dict[str, Any]) -> None:
    item = s.items.get(data["item_id"])
    if item is None:
        raise ApiError(
            400,
            f"Error truncating item: the item with id '{data['item_id']}' does not exist.",
            code="item_truncate_invalid_item_id",
        )
    if item.get("role") != "assistant" or item.get("type") != "message":
        raise ApiError(
            400, "Only assistant messages can be truncated.", code="invalid_value", param="item_id"
        )
    if data["content_index"] != 0:
        raise ApiError(400, "Content index out of range.", code="invalid_value", param="content_index")
    duration = s.item_audio_ms.get(item["id"])
    if data["audio_end_ms"] < 0:
        raise ApiError(
            400, f"audio_end_ms {data['audio_end_ms']} is negative.", code="invalid_value", param="audio_end_ms"
        )
    if duration is not None and data["audio_end_ms"] > duration:
        raise ApiError(
            400,
            f"Audio content of {duration}ms is already shorter than {data['audio_end_ms']}ms",
            code="invalid_value",
            param="audio_end_ms",
        )
    s.send(
        ev.event(
            "conversation.item.truncated",
            item_id=item["id"],
            content_index=0,
            audio_end_ms=data["audio_end_ms"],
        )
    )


def _item_delete(s: Conversation, data: dict[str, Any]) -> None:
    if data["item_id"] not in s.items:
        raise ApiError(
            400,
            f"Error deleting item: the item with id '{data['item_id']}' does not exist.",
            code="item_delete_invalid_item_id",
        )
    del s.items[data["item_id"]]
    s.send(ev.event("conversation.item.deleted", item_id=data["item_id"]))


def _response_create(s: Conversation, data: dict[str, Any]) -> None:
    params = data.get("response") or {}
    settings = response_plan.settings(s, params)
    response_plan.resolve_input(s, params)  # a bad item reference is refused before anything happens
    # Only the default conversation has one response at a time; out-of-band ones run beside it.
    if settings.in_conversation and s.response is not None:
        raise ApiError(
            400,
            f"Conversation already has an active response in progress: {s.response.id}. "
            "Wait until the response is finished before creating a new one.",
            code="conversation_already_has_active_response",
        )
    s.start_response(params)


def _response_cancel(s: Conversation, data: dict[str, Any]) -> None:
    # Without response_id: the default conversation's response (an out-of-band one must be named).
    wanted = data.get("response_id")
    r = s.responses.get(wanted) if wanted is not None else s.response
    if r is None:
        raise ApiError(
            400, "Cancellation failed: no active response found", code="response_cancel_not_active"
        )
    s.cancel_response("client_cancelled", r)


def _audio_append(s: Conversation, data: dict[str, Any]) -> None:
    try:
        raw = base64.b64decode(data["audio"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApiError(
            400, f"Invalid 'audio': not valid base64 ({e}).", code="invalid_value", param="audio"
        ) from e
    s.appended_bytes += len(raw)
    if s.transport == "websocket":
        # The WebSocket transport's audio, in the session's input format (PCM16 24 kHz or G.711 8 kHz), heard by
        # the same server VAD and ear as a WebRTC track.
        kind = s.input_format
        try:
            s.ear.feed_pcm16(audio_formats.decode(kind, raw), audio_formats.RATES[kind])
        except (audio_formats.FormatError, HearingError) as e:
            raise ApiError(400, f"Invalid 'audio': {e}.", code="invalid_value", param="audio") from e


def _audio_commit(s: Conversation, data: dict[str, Any]) -> None:
    if s.turn_detection is None:
        # The buffer holds everything heard so far, speech still in progress included.
        tail = s.ear.take_speech()
        if tail is not None:
            s.manual_turns.append(tail)
    if not s.manual_turns and s.appended_bytes == 0:
        raise ApiError(
            400,
            "Error committing input audio buffer: buffer too small. Expected at least 100ms of "
            "audio, but buffer only has 0.00ms of audio.",
            code="input_audio_buffer_commit_empty",
        )
    pcm = np.concatenate(s.manual_turns) if s.manual_turns else np.zeros(0, dtype=np.int16)
    s.manual_turns, s.appended_bytes = [], 0
    s.spawn(s.commit_turn(ev.new_id("item"), pcm, auto=False))


def _audio_clear(s: Conversation, data: dict[str, Any]) -> None:
    s.manual_turns, s.appended_bytes = [], 0
    s.ear.drop_speech()  # what was heard so far is gone, so it can no longer end a turn or be transcribed
    s.send(ev.event("input_audio_buffer.cleared"))


def _output_clear(s: Conversation, data: dict[str, Any]) -> None:
    if not s.output_buffer_events:
        raise ApiError(
            400,
            "output_audio_buffer.clear is only supported for WebRTC sessions; over a WebSocket, stop playing "
            "locally and send conversation.item.truncate.",
            code="invalid_value",
            param="type",
        )
    if not s.clear_output(truncate=False):
        if s.last_response_id is None:
            raise ApiError(400, "There is no output audio to clear.", code="invalid_value")
        s.send(ev.event("output_audio_buffer.cleared", response_id=s.last_response_id))


_HANDLERS: dict[str, Callable[[Conversation, dict[str, Any]], None]] = {
    "session.update": _session_update,
    "conversation.item.create": _item_create,
    "conversation.item.retrieve": _item_retrieve,
    "conversation.item.truncate": _item_truncate,
    "conversation.item.delete": _item_delete,
    "response.create": _response_create,
    "response.cancel": _response_cancel,
    "input_audio_buffer.append": _audio_append,
    "input_audio_buffer.commit": _audio_commit,
    "input_audio_buffer.clear": _audio_clear,
    "output_audio_buffer.clear": _output_clear,
}

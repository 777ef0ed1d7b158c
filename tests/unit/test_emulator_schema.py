"""Outside input checked against the SDK's request types: unknown fields named, types checked."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.realtime import (
    ConversationItemCreateEventParam,
    RealtimeSessionCreateRequestParam,
    ResponseCreateEventParam,
)

from tests.conftest import validate_server_event
from tests.sdk_nulls import NullCase, null_cases
from voicebridge.emulator import events as ev
from voicebridge.emulator.schema import ApiError, check_client_event, check_session
from voicebridge.emulator.session_config import default_session, merge_session

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"type": "realtime", "voice": "x"}, "unknown_parameter", "session.voice"),
        (
            {"type": "realtime", "audio": {"output": {"voice": "marin", "pitch": 2}}},
            "unknown_parameter",
            "session.audio.output.pitch",
        ),
        (
            {
                "type": "realtime",
                "tools": [{"type": "function", "name": "f", "parameters": {"anything": 1}, "strict": True}],
            },
            "unknown_parameter",
            "session.tools[0].strict",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": "hi"}}},
            },
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
    ],
)
def test_bad_sessions_name_the_param(session: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(ApiError) as info:
        check_session(session)
    assert info.value.code == code and info.value.param == param and info.value.status == 400
    assert param in info.value.message


def test_good_session_passes_and_free_form_schemas_take_any_key() -> None:
    check_session(
        {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "hi",
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                },
                "output": {"voice": "cedar"},
            },
            "tools": [
                {"type": "function", "name": "f", "parameters": {"type": "object", "x-anything": {"y": 1}}}
            ],
        }
    )


def test_client_event_checks() -> None:
    check_client_event({"type": "response.create", "response": {"metadata": {"a": "b"}}})
    with pytest.raises(ApiError) as info:
        check_client_event({"type": "conversation.item.truncate", "item_id": "x", "content_index": 0})
    assert info.value.param == "audio_end_ms"


def test_default_session_validates_and_merge_keeps_nested_defaults() -> None:
    base = default_session("gpt-realtime")
    validate_server_event(ev.event("session.created", session=base))
    merged = merge_session(
        base, {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.9}}}}
    )
    td = merged["audio"]["input"]["turn_detection"]
    assert td["threshold"] == 0.9 and td["silence_duration_ms"] == 500
    assert merged["audio"]["output"]["voice"] == "marin"
    semantic = merge_session(base, {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert semantic["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True
    }


def test_ids_and_deltas() -> None:
    assert ev.new_id("rtc").startswith("rtc_") and ev.new_id("x") != ev.new_id("x")
    text = "Thank you for calling the help desk, how can I help you today?"
    parts = ev.transcript_deltas(text)
    assert "".join(parts) == text and len(parts) > 1
    assert ev.transcript_deltas("") == []


SESSION_NULLS = null_cases(RealtimeSessionCreateRequestParam)
EVENT_NULLS = null_cases(ResponseCreateEventParam) + null_cases(ConversationItemCreateEventParam)


def test_the_walk_finds_the_documented_and_the_optional_nulls() -> None:
    paths = {c.path for c in SESSION_NULLS}
    # documented ("can be set to `null` to turn off") though typed as objects, and typed Optional
    assert {"audio.input.noise_reduction", "audio.input.transcription"} <= paths
    assert {"audio.input.turn_detection", "audio.input.turn_detection.idle_timeout_ms", "tracing", "prompt"} <= paths
    assert "audio.input.format" not in paths and "instructions" not in paths
    events = {c.path for c in EVENT_NULLS}
    assert {"response.metadata", "response.prompt", "item.output"} <= events


@pytest.mark.parametrize("case", SESSION_NULLS, ids=lambda c: c.path)
def test_every_nullable_session_field_takes_null(case: NullCase) -> None:
    check_session(case.value)
    check_client_event({"type": "session.update", "session": case.value})
    merged = merge_session(default_session("gpt-realtime"), case.value)
    validate_server_event(ev.event("session.updated", session=merged))


@pytest.mark.parametrize("case", EVENT_NULLS, ids=lambda c: c.path)
def test_every_nullable_item_and_response_field_takes_null(case: NullCase) -> None:
    check_client_event(case.value)


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"type": "realtime", "audio": {"input": {"format": None}}}, "session.audio.input.format"),
        ({"type": "realtime", "instructions": None}, "session.instructions"),
        ({"type": "realtime", "audio": {"output": {"voice": None}}}, "session.audio.output.voice"),
        ({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "loud"}}}},
         "session.audio.input.noise_reduction.type"),
    ],
)
def test_null_stays_invalid_where_the_sdk_does_not_allow_it(session: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as info:
        check_session(session)
    assert info.value.code == "invalid_value" and info.value.param == param

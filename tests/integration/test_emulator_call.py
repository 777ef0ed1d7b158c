"""Whole calls against the emulator over real WebRTC on loopback: speaking, hearing, tools, barge-in,
hang-up."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import _VOICE, LATE_ORDER, Client, cs_session
from voicebridge.emulator.persona import GENERIC_REPLY
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import normalize_phrase

pytestmark = pytest.mark.integration

RESPONSE_SEQUENCE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "output_audio_buffer.started",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_audio.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
    "output_audio_buffer.stopped",
]


def _collapse(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


async def test_sdk_call_greets_with_full_event_sequence_and_audio(emulator: Emulator, client: Client) -> None:
    call_id = await client.connect(emulator.base_url, cs_session())
    assert call_id.startswith("rtc_") and call_id in emulator.sessions
    assert "a=setup:active" in client.pc.remoteDescription.sdp
    created = await client.wait_for("session.created")
    assert created["session"]["instructions"] == LATE_ORDER.cs.instructions
    assert created["session"]["audio"]["input"]["transcription"]["model"] == "gpt-4o-mini-transcribe"

    start = len(client.events)
    client.send({"type": "response.create", "event_id": "evt_first"})
    client.send({"type": "response.create", "event_id": "evt_second"})
    err = await client.wait_for("error", start=start)
    assert err["error"]["code"] == "conversation_already_has_active_response"
    assert err["error"]["event_id"] == "evt_second"

    stopped = await client.wait_for("output_audio_buffer.stopped", start=start)
    seq = [t for t in _collapse(client.types(start)) if t != "error"]
    assert seq == RESPONSE_SEQUENCE
    done = await client.wait_for("response.done", start=start)
    assert done["response"]["status"] == "completed"
    assert stopped["response_id"] == done["response"]["id"]
    assert done["response"]["usage"]["output_tokens"] > 0
    text = done["response"]["output"][0]["content"][0]["transcript"]
    assert text == LATE_ORDER.cs.script[0].say
    deltas = [
        e["delta"] for e in client.events[start:] if e["type"] == "response.output_audio_transcript.delta"
    ]
    assert "".join(deltas) == text
    # The line really arrived as audio: decoded frames, a second or more of them not silent. The client decodes
    # behind the data channel (jitter buffer, decoder thread), so wait for those frames instead of counting them
    # at the moment `stopped` arrived.
    if client.loud_frames <= 50:
        await client.wait_loud(51 - client.loud_frames)


async def test_heard_line_is_transcribed_and_drives_tools_and_templated_answer(
    emulator: Emulator, client: Client
) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    line = "Hello, my order has not arrived. The order number is four two one seven."
    await client.say(line)

    started = await client.wait_for("input_audio_buffer.speech_started")
    stopped = await client.wait_for("input_audio_buffer.speech_stopped")
    assert stopped["item_id"] == started["item_id"]
    assert stopped["audio_end_ms"] > started["audio_start_ms"] + 1000
    committed = await client.wait_for("input_audio_buffer.committed")
    assert committed["item_id"] == started["item_id"]
    heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
    assert heard["item_id"] == started["item_id"]
    assert heard["transcript"] == normalize_phrase(line)

    args = await client.wait_for("response.function_call_arguments.done", name="lookup_order")
    assert json.loads(args["arguments"]) == {"order_id": "4217"}
    await client.wait_for("response.done")

    start = len(client.events)
    client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": args["call_id"],
                "output": json.dumps({"order_id": "4217", "status": "late", "total": 42}),
            },
        }
    )
    client.send({"type": "response.create"})
    refund = await client.wait_for("response.function_call_arguments.done", start=start, name="issue_refund")
    assert json.loads(refund["arguments"]) == {"order_id": "4217", "reason": "late delivery"}
    await client.wait_for("response.done", start=start)

    start = len(client.events)
    client.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": refund["call_id"],
                "output": json.dumps({"amount": 42}),
            },
        }
    )
    client.send({"type": "response.create"})
    said = await client.wait_for("response.output_audio_transcript.done", start=start)
    assert "order four two one seven is late" in said["transcript"]
    assert "refund of forty-two dollars" in said["transcript"]
    await client.wait_loud(50)  # the answer really arrives as audio (a second of it is enough to know)


async def test_unrecognised_speech_is_not_transcribed_and_gets_the_generic_reply(
    emulator: Emulator, client: Client
) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    await client.say("The weather in the mountains was lovely and the river was cold.")
    heard = await client.wait_for("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == ""
    said = await client.wait_for("response.output_audio_transcript.done")
    assert said["transcript"] == GENERIC_REPLY


async def test_barge_in_cancels_truncates_and_clears(emulator: Emulator, client: Client) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    line = "Hello, my order has not arrived."
    await _VOICE.speak(line, "en-us", 165)  # synthesised before the race, so say() interrupts at once
    client.send({"type": "response.create"})
    started = await client.wait_for("output_audio_buffer.started")
    await client.say(line)
    await client.wait_for("input_audio_buffer.speech_started")
    truncated = await client.wait_for("conversation.item.truncated")
    cleared = await client.wait_for("output_audio_buffer.cleared")
    assert cleared["response_id"] == started["response_id"]
    line_ms = emulator.sessions[client.call_id].item_audio_ms[truncated["item_id"]]
    assert 0 < truncated["audio_end_ms"] < line_ms
    # The interrupted line never reports having finished playing.
    await client.wait_for("input_audio_buffer.committed")
    assert not [
        e
        for e in client.events
        if e["type"] == "output_audio_buffer.stopped" and e["response_id"] == started["response_id"]
    ]


async def test_caller_persona_says_goodbye_then_calls_hangup(emulator: Emulator, client: Client) -> None:
    await client.connect(
        emulator.base_url, {"type": "realtime", "instructions": LATE_ORDER.caller.instructions}
    )
    await client.wait_for("session.created")
    heard = LATE_ORDER.caller.script[1].hear
    assert heard is not None
    client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": heard}]},
        }
    )
    client.send({"type": "response.create"})
    done = await client.wait_for("response.done")
    output = done["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"]
    assert output[0]["content"][0]["transcript"] == LATE_ORDER.caller.script[1].say
    assert output[1]["name"] == "hangup" and output[1]["arguments"] == "{}"


async def test_hangup_endpoint_and_closed_peer_end_the_session(emulator: Emulator) -> None:
    from openai import AsyncOpenAI

    first, second = Client(), Client()
    try:
        await first.connect(emulator.base_url, cs_session())
        await second.connect(emulator.base_url, cs_session())
        await first.wait_for("session.created")
        await second.wait_for("session.created")
        s1, s2 = emulator.sessions[first.call_id], emulator.sessions[second.call_id]
        sdk = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test")
        try:
            await sdk.realtime.calls.hangup(first.call_id)
        finally:
            await sdk.close()
        assert s1.closed.is_set() and first.call_id not in emulator.sessions
        await second.pc.close()
        await asyncio_wait(s2.closed.wait())
        assert second.call_id not in emulator.sessions
    finally:
        await first.close()
        await second.close()


async def asyncio_wait(aw: object, within: float = 10.0) -> None:
    import asyncio

    await asyncio.wait_for(aw, within)  # type: ignore[arg-type]

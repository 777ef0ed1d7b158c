"""`null` where the API takes it: every nullable field of the SDK's session, item and response types (walked
generically, tests/sdk_nulls.py), in HTTP session bodies and over a live session, and what turning a feature off
with null does (no transcription events, no VAD turns)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from openai.types.realtime import (
    ConversationItemCreateEventParam,
    RealtimeSessionCreateRequestParam,
    ResponseCreateEventParam,
)

from tests.integration.conftest import _VOICE, Client, cs_session
from tests.sdk_nulls import null_cases
from voicebridge.emulator.hearing import Ear
from voicebridge.emulator.server import Emulator

pytestmark = pytest.mark.integration

SESSION_NULLS = null_cases(RealtimeSessionCreateRequestParam)
KEY = {"Authorization": "Bearer sk-test"}
ORDER_LINE = "Hello, my order has not arrived. The order number is four two one seven."


def _at(obj: Any, dotted: str) -> Any:
    """The value at a case's path (`tools[0].headers`) in a session object."""
    for part in dotted.replace("[0]", ".0").split("."):
        obj = obj[int(part)] if part.isdigit() else obj[part]
    return obj


def heard_until(ear: Ear, more_ms: int) -> asyncio.Event:
    """Set once the session's ear has heard `more_ms` more of audio than now: its clock, advanced by the frames it
    is fed (decoded audio) and the silence it is told to skip (silent packets it does not decode)."""
    done, target = asyncio.Event(), ear.audio_ms + more_ms

    def counted(step: Callable[[Any], None]) -> Callable[[Any], None]:
        def advance(audio: Any) -> None:
            step(audio)
            if ear.audio_ms >= target:
                done.set()

        return advance

    ear.feed = counted(ear.feed)  # type: ignore[method-assign]
    ear.skip = counted(ear.skip)  # type: ignore[method-assign]
    return done


def _errors(client: Client, start: int) -> list[dict[str, Any]]:
    return [e for e in client.events[start:] if e["type"] == "error"]


async def test_every_nullable_session_field_takes_null_over_http(emulator: Emulator, client: Client) -> None:
    offer = await client.offer()
    async with aiohttp.ClientSession() as http:
        for case in SESSION_NULLS:
            async with http.post(
                f"{emulator.base_url}/realtime/client_secrets", json={"session": case.value}, headers=KEY
            ) as r:
                body = await r.json()
                assert r.status == 200, (case.path, body)
                assert _at(body["session"], case.path) is None, case.path

            form = aiohttp.FormData()
            form.add_field("sdp", offer, content_type="application/sdp")
            form.add_field("session", json.dumps(case.value), content_type="application/json")
            async with http.post(f"{emulator.base_url}/realtime/calls", data=form, headers=KEY) as r:
                assert r.status == 201, (case.path, await r.text())
                call_id = r.headers["Location"].rsplit("/", 1)[-1]
            assert _at(emulator.sessions[call_id].config, case.path) is None, case.path
            async with http.post(f"{emulator.base_url}/realtime/calls/{call_id}/hangup", headers=KEY) as r:
                assert r.status == 200


async def test_every_nullable_field_takes_null_over_a_live_session(emulator: Emulator, client: Client) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    for i, case in enumerate(SESSION_NULLS):
        start = len(client.events)
        client.send({"type": "session.update", "event_id": f"u{i}", "session": case.value})
        updated = await client.wait_for("session.updated", start=start)
        assert "error" not in client.types(start), (case.path, _errors(client, start))
        assert _at(updated["session"], case.path) is None, case.path

    for case in null_cases(ResponseCreateEventParam):
        start = len(client.events)
        client.send(case.value)
        done = await client.wait_for("response.done", start=start)
        assert done["response"]["status"] == "completed"
        client.send({"type": "output_audio_buffer.clear"})  # no need to hear the line out before the next
        await client.wait_for("output_audio_buffer.cleared", start=start)
        assert "error" not in client.types(start), (case.path, _errors(client, start))

    for case in null_cases(ConversationItemCreateEventParam):
        # The emulator has no MCP: the item is refused for its type, never for the null.
        start = len(client.events)
        client.send(case.value)
        err = await client.wait_for("error", start=start)
        assert err["error"]["param"] == "item.type", (case.path, err)


async def test_transcription_null_sends_no_transcription_events(emulator: Emulator, client: Client) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    off = {"type": "realtime", "audio": {"input": {"transcription": None}}}
    client.send({"type": "session.update", "session": off})
    await client.wait_for("session.updated")
    start = len(client.events)
    await client.say(ORDER_LINE)
    committed = await client.wait_for("input_audio_buffer.committed", start=start, within=20)
    # The persona still heard the line (the model hears audio natively): it answers with the tool call.
    await client.wait_for("response.function_call_arguments.done", start=start, within=20, name="lookup_order")
    kinds = client.types(start)
    assert not [k for k in kinds if k.startswith("conversation.item.input_audio_transcription")]
    item = next(e["item"] for e in client.events[start:] if e["type"] == "conversation.item.added")
    assert item["id"] == committed["item_id"] and item["content"][0]["type"] == "input_audio"


async def test_turn_detection_null_makes_no_vad_turns(emulator: Emulator, client: Client) -> None:
    call_id = await client.connect(emulator.base_url, cs_session(turn_detection=None))
    created = await client.wait_for("session.created")
    assert created["session"]["audio"]["input"]["turn_detection"] is None
    # The line goes over RTP, the commit over the data channel: which reaches the server first is up to the
    # machine's load. Commit once the server's audio clock has passed the line's end, so the whole line was heard.
    line = await _VOICE.speak(ORDER_LINE, "en-us", 165)
    heard_it = heard_until(emulator.sessions[call_id].ear, len(line.packets) * 20)
    start = len(client.events)
    playback = client.mic.play(line.packets, "mic")
    assert await playback.finished
    await asyncio.wait_for(heard_it.wait(), 30)
    client.send({"type": "input_audio_buffer.commit"})  # what was heard so far, the line in progress included
    committed = await client.wait_for("input_audio_buffer.committed", start=start)
    heard = await client.wait_for("conversation.item.input_audio_transcription.completed", start=start)
    assert heard["item_id"] == committed["item_id"] and heard["usage"]["seconds"] > 2
    kinds = client.types(start)
    assert "input_audio_buffer.speech_started" not in kinds and "input_audio_buffer.speech_stopped" not in kinds
    assert "response.created" not in kinds  # without turn detection the client asks for responses itself

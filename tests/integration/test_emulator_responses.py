"""`response.create` parameters against the emulator, through real clients (the openai SDK's realtime WebSocket
client, and a WebRTC peer with its data channel): out-of-band responses (`conversation: "none"`, `input` items,
`metadata`), text-only responses (`output_modalities: ["text"]`) and `max_output_tokens`. Every server event is
validated strictly against the SDK's types by the clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import _VOICE, LATE_ORDER, Client, cs_session
from tests.integration.test_ws_emulator import WsClient
from voicebridge.emulator.persona import GENERIC_REPLY
from voicebridge.emulator.server import Emulator

pytestmark = pytest.mark.integration
CS, CALLER = LATE_ORDER.cs, LATE_ORDER.caller
GREETING = CS.script[0].say or ""  # what the CS persona says first; what the caller persona hears first
CALLER_LINE = CALLER.script[0].say or ""  # the caller's answer to it; what the CS persona hears first
CALLER_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": CALLER_LINE}]}


@pytest.fixture
async def ws(emulator: Emulator) -> AsyncIterator[WsClient]:
    sdk = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0)
    c = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
    try:
        await c.wait_for("session.created")
        yield c
    finally:
        await c.close()
        await sdk.close()


async def become(ws: WsClient, instructions: str, **session: Any) -> None:
    start = len(ws.events)
    await ws.send({"type": "session.update", "session": {"type": "realtime", "instructions": instructions, **session}})
    await ws.wait_for("session.updated", start=start)


async def wait_done(ws: WsClient, response_id: str, start: int = 0, within: float = 30) -> dict[str, Any]:
    """The response.done of this response (several responses may run at once)."""

    def mine(e: dict[str, Any]) -> bool:
        return e["type"] == "response.done" and e["response"]["id"] == response_id

    for e in ws.events[start:]:
        if mine(e):
            return e
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    entry = (mine, fut)
    ws._waiters.append(entry)
    try:
        return await asyncio.wait_for(fut, within)
    finally:
        ws._waiters.remove(entry)


async def test_out_of_band_text_response_leaves_the_conversation_alone(ws: WsClient) -> None:
    await become(ws, CALLER.instructions)
    mark = len(ws.events)
    await ws.send(
        {
            "type": "conversation.item.create",
            "item": {"id": "item_greet", "type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": GREETING}]},
        }
    )  # fmt: skip
    await ws.wait_for("conversation.item.done", start=mark)

    # Out of band, on a reference to that item, text only: the persona answers it and nothing enters the conversation.
    start = len(ws.events)
    await ws.send(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "output_modalities": ["text"],
                "metadata": {"purpose": "probe"},
                "input": [{"type": "item_reference", "id": "item_greet"}],
            },
        }
    )
    created = await ws.wait_for("response.created", start=start)
    rid = created["response"]["id"]
    done = await wait_done(ws, rid, start)
    assert created["response"]["conversation_id"] is None and done["response"]["conversation_id"] is None
    assert done["response"]["metadata"] == {"purpose": "probe"} == created["response"]["metadata"]
    assert done["response"]["status"] == "completed" and done["response"]["output_modalities"] == ["text"]
    item = done["response"]["output"][0]
    assert item["content"] == [{"type": "output_text", "text": CALLER_LINE}]
    types = ws.types(start)
    assert not [t for t in types if t.startswith("conversation.item.")]
    assert not [t for t in types if "audio" in t]
    deltas = [e["delta"] for e in ws.events[start:] if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == CALLER_LINE
    assert (await ws.wait_for("response.output_text.done", start=start))["text"] == CALLER_LINE
    part = await ws.wait_for("response.content_part.done", start=start)
    assert part["part"] == {"type": "text", "text": CALLER_LINE}
    mark = len(ws.events)
    await ws.send({"type": "conversation.item.retrieve", "item_id": item["id"], "event_id": "r1"})
    err = await ws.wait_for("error", start=mark)
    assert err["error"]["event_id"] == "r1" and err["error"]["code"] == "item_retrieve_invalid_item_id"

    # In band: the same greeting is still news to the conversation (the out-of-band answer consumed nothing and
    # fired no `once` rule), so the persona answers it again, now into the default conversation.
    start = len(ws.events)
    await ws.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    created = await ws.wait_for("response.created", start=start)
    done = await wait_done(ws, created["response"]["id"], start)
    assert done["response"]["conversation_id"].startswith("conv_")
    assert done["response"]["output"][0]["content"][0]["text"] == CALLER_LINE
    added = await ws.wait_for("conversation.item.added", start=start)
    assert added["item"]["id"] == done["response"]["output"][0]["id"]
    assert added["previous_item_id"] == "item_greet"


async def test_out_of_band_response_runs_beside_the_conversations_response(ws: WsClient) -> None:
    await become(ws, CS.instructions, tools=cs_session()["tools"])
    start = len(ws.events)
    # Three response.create back to back. The server handles a connection's events in order, and the first makes
    # its response the conversation's active one before the next is read: the other two certainly meet it
    # active, however fast the greeting would have played out (no race against its length).
    await ws.send({"type": "response.create"})  # in band: the spoken greeting
    # A second in-band response is refused while the first is active ...
    await ws.send({"type": "response.create", "event_id": "again"})
    # ... an out-of-band one is not: on its own input (the caller's line) the CS persona looks the order up.
    await ws.send(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "input": [CALLER_ITEM],
            },
        }
    )  # fmt: skip
    err = await ws.wait_for("error", start=start)
    assert err["error"]["code"] == "conversation_already_has_active_response" and err["error"]["event_id"] == "again"
    first = await ws.wait_for("response.created", start=start)
    second = await ws.wait_for("response.created", start=ws.events.index(first) + 1)
    by_place = {c["response"]["conversation_id"] is None: c["response"]["id"] for c in (first, second)}
    in_band, oob = by_place[False], by_place[True]
    assert in_band != oob
    oob_done = await wait_done(ws, oob, start)
    assert oob_done["response"]["status"] == "completed" and oob_done["response"]["conversation_id"] is None
    (call,) = oob_done["response"]["output"]
    assert call["type"] == "function_call" and call["name"] == "lookup_order"
    assert json.loads(call["arguments"]) == {"order_id": "4217"}
    item_events = [e for e in ws.events[start:] if e["type"].startswith("conversation.item.")]
    assert call["id"] not in {e["item"]["id"] for e in item_events}

    done = await wait_done(ws, in_band, start)
    assert done["response"]["status"] == "completed" and done["response"]["conversation_id"].startswith("conv_")
    deltas = [e for e in ws.events[start:] if e["type"] == "response.output_audio.delta"]
    assert {d["response_id"] for d in deltas} == {in_band}
    assert [e["type"] for e in ws.events[start:] if e["type"] == "error"] == ["error"]  # only the refused one


async def test_text_only_session_over_webrtc_sends_no_audio(emulator: Emulator, client: Client) -> None:
    call_id = await client.connect(emulator.base_url, {**cs_session(), "output_modalities": ["text"]})
    created = await client.wait_for("session.created")
    assert created["session"]["output_modalities"] == ["text"]
    session = emulator.sessions[call_id]
    start = len(client.events)
    client.send({"type": "response.create"})
    done = await client.wait_for("response.done", start=start, within=20)
    assert done["response"]["status"] == "completed" and done["response"]["output_modalities"] == ["text"]
    assert done["response"]["output"][0]["content"] == [{"type": "output_text", "text": GREETING}]
    usage = done["response"]["usage"]["output_token_details"]
    assert usage == {"text_tokens": len(GREETING.split()), "audio_tokens": 0}
    types = client.types(start)
    assert "response.output_text.done" in types and not [t for t in types if "audio" in t]
    # Nothing was queued on the track (a line is queued before its first event), and nothing loud arrived ...
    assert not session.mouth.busy and client.loud_frames == 0
    # ... while an audio response on the same call is heard: the measure above can see audio.
    start = len(client.events)
    client.send({"type": "response.create", "response": {"output_modalities": ["audio"]}})
    await client.wait_for("output_audio_buffer.started", start=start, within=20)
    await client.wait_loud(5)
    done = await client.wait_for("response.done", start=start, within=20)
    assert done["response"]["output_modalities"] == ["audio"]
    assert done["response"]["output"][0]["content"][0]["type"] == "output_audio"


async def test_max_output_tokens_ends_the_response_incomplete(ws: WsClient) -> None:
    await become(ws, CS.instructions, tools=cs_session()["tools"])
    words = GREETING.split()
    incomplete = {"type": "incomplete", "reason": "max_output_tokens", "error": None}

    # Text: one token a word; the answer is cut to the first five.
    start = len(ws.events)
    await ws.send({"type": "response.create", "response": {"output_modalities": ["text"], "max_output_tokens": 5}})
    done = await ws.wait_for("response.done", start=start)
    r = done["response"]
    assert r["status"] == "incomplete" and _details(r) == incomplete and r["max_output_tokens"] == 5
    assert r["output"][0]["status"] == "incomplete"
    assert r["output"][0]["content"][0]["text"] == " ".join(words[:5])
    assert (await ws.wait_for("response.output_text.done", start=start))["text"] == " ".join(words[:5])
    assert r["usage"]["output_tokens"] == 5

    # Audio: a token a word of the transcript plus one per 100 ms of speech; both cut in the same proportion.
    line = await _VOICE.speak(GENERIC_REPLY, CS.espeak_voice, CS.espeak_speed)  # the start rule has fired
    n, w = len(line.packets), len(line.text.split())
    limit = 20
    share = limit / (w + n // 5)
    start = len(ws.events)
    await ws.send({"type": "response.create", "response": {"max_output_tokens": limit}})
    done = await ws.wait_for("response.done", start=start, within=30)
    r = done["response"]
    assert r["status"] == "incomplete" and _details(r) == incomplete
    transcript = r["output"][0]["content"][0]["transcript"]
    assert transcript == " ".join(line.text.split()[: int(w * share)])
    deltas = [e for e in ws.events[start:] if e["type"] == "response.output_audio.delta"]
    assert len(deltas) == int(n * share) < n
    assert 0 < r["usage"]["output_tokens"] <= limit

    # A function call is all or nothing: with no room for its arguments, the response ends with no output.
    start = len(ws.events)
    await ws.send(
        {
            "type": "response.create",
            "response": {
                "conversation": "none", "max_output_tokens": 1,
                "input": [CALLER_ITEM],
            },
        }
    )  # fmt: skip
    done = await ws.wait_for("response.done", start=start)
    assert done["response"]["status"] == "incomplete" and done["response"]["output"] == []


def _details(response: dict[str, Any]) -> dict[str, Any]:
    return {"error": None, **response["status_details"]}


@pytest.mark.parametrize(
    ("response", "param"),
    [
        ({"max_output_tokens": 0}, "response.max_output_tokens"),
        ({"max_output_tokens": 4097}, "response.max_output_tokens"),
        ({"output_modalities": ["audio", "text"]}, "response.output_modalities"),
        ({"conversation": "conv_someone_elses"}, "response.conversation"),
        ({"input": [{"type": "item_reference", "id": "item_nope"}]}, "response.input[0].id"),
    ],
)
async def test_bad_response_parameters_are_refused_and_start_nothing(
    ws: WsClient, response: dict[str, Any], param: str
) -> None:
    start = len(ws.events)
    await ws.conn.send_raw(json.dumps({"type": "response.create", "event_id": "bad", "response": response}))
    err = await ws.wait_for("error", start=start)
    assert err["error"]["param"] == param and err["error"]["event_id"] == "bad"
    assert err["error"]["type"] == "invalid_request_error"
    # Nothing started: a plain response.create right after is accepted (no "active response" error).
    await ws.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    await ws.wait_for("response.done", start=start)
    assert "response.created" in ws.types(start) and ws.types(start).count("error") == 1

"""The emulator's WebSocket transport, driven by the openai SDK's own realtime client (unmodified).

`AsyncOpenAI(base_url=..., api_key=...).realtime.connect(model=...)` derives ws://.../v1/realtime?model=... from
base_url; the same sessions and personas as WebRTC answer it, hear appended PCM16 and speak in paced
`response.output_audio.delta` events. The sideband (`connect(call_id=rtc_...)`) carries a WebRTC call's
events both ways. Every server event is validated strictly against the SDK's types.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.exceptions import InvalidStatus

from tests.integration.conftest import _VOICE, LATE_ORDER, Client, cs_session, strict_validate
from voicebridge.emulator.server import Emulator
from voicebridge.media.pcm import OpusDecoder
from voicebridge.scenarios.model import normalize_phrase

pytestmark = pytest.mark.integration


class WsClient:
    """The SDK's realtime connection plus a reader that keeps every server event (as plain, validated dicts)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = []
        self.closed = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                event = json.loads(await self.conn.recv_bytes())
                strict_validate(event)
                self.events.append(event)
                for pred, fut in list(self._waiters):
                    if not fut.done() and pred(event):
                        fut.set_result(event)
        except Exception as e:  # the socket closed (or an event failed validation: the test sees it)
            if not self.closed.done():
                self.closed.set_result(e)

    async def send(self, event: dict[str, Any]) -> None:
        await self.conn.send(event)

    async def wait_for(self, type_: str, within: float = 15.0, start: int = 0, **fields: Any) -> dict[str, Any]:
        def pred(e: dict[str, Any]) -> bool:
            return e["type"] == type_ and all(e.get(k) == v for k, v in fields.items())

        for e in self.events[start:]:
            if pred(e):
                return e
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, within)
        finally:
            self._waiters.remove((pred, fut))

    def types(self, start: int = 0) -> list[str]:
        return [e["type"] for e in self.events[start:]]

    async def append(self, pcm: bytes, chunk_ms: int = 100) -> None:
        step = 48 * chunk_ms
        for i in range(0, len(pcm), step):
            await self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i : i + step]).decode()}
            )

    async def close(self) -> None:
        self._reader.cancel()
        await self.conn.close()


@pytest.fixture
async def sdk(emulator: Emulator) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def ws(sdk: AsyncOpenAI) -> AsyncIterator[WsClient]:
    c = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
    try:
        yield c
    finally:
        await c.close()


async def spoken_pcm(text: str, silence_s: float = 1.0) -> bytes:
    """A line as the personas speak it (espeak -> Opus), decoded to PCM16 24 kHz, then trailing silence."""
    utterance = await _VOICE.speak(text, "en-us", 165)
    decoder = OpusDecoder()
    return b"".join(decoder.decode(p) for p in utterance.packets) + bytes(int(48000 * silence_s))


def pcm_of(deltas: list[dict[str, Any]]) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.frombuffer(b"".join(base64.b64decode(d["delta"]) for d in deltas), dtype="<i2")


async def become_cs(ws: WsClient) -> None:
    await ws.wait_for("session.created")
    await ws.send({"type": "session.update", "session": cs_session()})
    updated = await ws.wait_for("session.updated")
    assert updated["session"]["instructions"] == LATE_ORDER.cs.instructions


async def test_sdk_websocket_session_speaks_in_paced_pcm_deltas(emulator: Emulator, ws: WsClient) -> None:
    created = await ws.wait_for("session.created")
    assert created["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert created["session"]["id"] in emulator.sessions
    await become_cs(ws)
    start = len(ws.events)
    await ws.send({"type": "response.create"})
    done = await ws.wait_for("response.done", start=start, within=20)
    assert done["response"]["status"] == "completed"
    types = ws.types(start)
    assert not [t for t in types if t.startswith("output_audio_buffer.")]  # WebRTC only, as the real API
    deltas = [e for e in ws.events[start:] if e["type"] == "response.output_audio.delta"]
    last_delta = max(i for i, t in enumerate(types) if t == "response.output_audio.delta")
    assert types.index("response.output_audio.done") > last_delta  # the audio is done after its last delta
    item_id = done["response"]["output"][0]["id"]
    assert {d["item_id"] for d in deltas} == {item_id}
    pcm = pcm_of(deltas)
    seconds = len(pcm) / 24000
    assert abs(seconds - len(deltas) * 0.020) < 0.05  # 20 ms of PCM16 24 kHz per delta
    assert np.abs(pcm).max() > 3000  # speech, not silence
    transcript = done["response"]["output"][0]["content"][0]["transcript"]
    assert normalize_phrase(transcript) == normalize_phrase(LATE_ORDER.cs.script[0].say or "")


async def test_appended_pcm_is_heard_transcribed_and_answered(ws: WsClient) -> None:
    await become_cs(ws)
    start = len(ws.events)
    line = "Hello, my order has not arrived. The order number is four two one seven."
    await ws.append(await spoken_pcm(line))
    started = await ws.wait_for("input_audio_buffer.speech_started", start=start)
    stopped = await ws.wait_for("input_audio_buffer.speech_stopped", start=start)
    assert started["item_id"] == stopped["item_id"] and stopped["audio_end_ms"] > started["audio_start_ms"]
    heard = await ws.wait_for("conversation.item.input_audio_transcription.completed", start=start, within=20)
    assert normalize_phrase(heard["transcript"]) == normalize_phrase(line)
    call = await ws.wait_for("response.function_call_arguments.done", start=start, within=20)
    assert call["name"] == "lookup_order" and json.loads(call["arguments"]) == {"order_id": "4217"}


async def test_barge_in_cancels_and_the_client_truncates(ws: WsClient) -> None:
    await become_cs(ws)
    start = len(ws.events)
    await ws.send({"type": "response.create"})
    first = await ws.wait_for("response.output_audio.delta", start=start)
    await ws.append(await spoken_pcm("Hello, my order has not arrived.", silence_s=0.1))
    await ws.wait_for("input_audio_buffer.speech_started", start=start)
    done = await ws.wait_for("response.done", start=start)
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    # Over a WebSocket the server does not know what was played: it truncates only when told.
    assert "conversation.item.truncated" not in ws.types(start)
    assert "output_audio_buffer.cleared" not in ws.types(start)
    played = sum(1 for e in ws.events[start:] if e["type"] == "response.output_audio.delta") * 20
    mark = len(ws.events)
    await ws.send(
        {"type": "conversation.item.truncate", "item_id": first["item_id"], "content_index": 0, "audio_end_ms": played}
    )
    truncated = await ws.wait_for("conversation.item.truncated", start=mark)
    assert truncated["item_id"] == first["item_id"] and truncated["audio_end_ms"] == played


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ({"type": "input_audio_buffer.append", "audio": "not base64!!", "event_id": "e1"}, "invalid_value", "audio"),
        ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode(), "event_id": "e1"},
         "invalid_value", "audio"),
        ({"type": "output_audio_buffer.clear", "event_id": "e1"}, "invalid_value", "type"),
    ],
)  # fmt: skip
async def test_bad_client_events_get_the_api_error_event(
    ws: WsClient, event: dict[str, Any], code: str, param: str
) -> None:
    await ws.wait_for("session.created")
    await ws.conn.send_raw(json.dumps(event))  # raw: the SDK would refuse to build some of these
    err = await ws.wait_for("error")
    assert err["error"]["code"] == code and err["error"]["param"] == param
    assert err["error"]["event_id"] == "e1"


async def _refused(emulator: Emulator, api_key: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    client = AsyncOpenAI(base_url=emulator.base_url, api_key=api_key, max_retries=0, **kwargs)
    try:
        with pytest.raises(InvalidStatus) as info:
            await client.realtime.connect(model="gpt-realtime").enter()
    finally:
        await client.close()
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_bad_key_and_beta_header_are_refused_at_the_handshake(emulator: Emulator) -> None:
    status, body = await _refused(emulator, "not-a-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = await _refused(emulator, "sk-test", default_headers={"OpenAI-Beta": "realtime=v1"})
    assert status == 400 and body["error"]["code"] == "beta_api_shape_disabled"
    assert not emulator.sessions


async def test_sideband_carries_the_calls_events_both_ways(
    emulator: Emulator, client: Client, sdk: AsyncOpenAI
) -> None:
    call_id = await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    side = WsClient(await sdk.realtime.connect(call_id=call_id).enter())
    try:
        # sideband -> session: an item created on the sideband is announced on both.
        await side.send(
            {
                "type": "conversation.item.create",
                "item": {"id": "item_side1", "type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": "note from the server"}]},
            }
        )  # fmt: skip
        await side.wait_for("conversation.item.added")
        added = await client.wait_for("conversation.item.added")
        assert added["item"]["id"] == "item_side1"
        # data channel -> session: the response it starts is seen on the sideband, WebRTC events included.
        start = len(side.events)
        client.send({"type": "response.create"})
        await side.wait_for("response.created", start=start)
        await side.wait_for("output_audio_buffer.started", start=start, within=20)
        assert "response.output_audio.delta" not in side.types(start)  # the audio stays on the track
    finally:
        await side.close()


async def test_sideband_to_an_unknown_call_is_404(emulator: Emulator, sdk: AsyncOpenAI) -> None:
    with pytest.raises(InvalidStatus) as info:
        await sdk.realtime.connect(call_id="rtc_nope").enter()
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.body or b"{}")["error"]["code"] == "call_id_not_found"


async def test_closing_the_socket_ends_the_session(emulator: Emulator, sdk: AsyncOpenAI) -> None:
    c = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
    created = await c.wait_for("session.created")
    session = emulator.sessions[created["session"]["id"]]
    await c.close()
    await asyncio.wait_for(session.closed.wait(), 5)
    assert created["session"]["id"] not in emulator.sessions

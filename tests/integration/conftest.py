"""Integration fixtures: an in-process emulator and a WebRTC client shaped like a browser's Realtime client.

The client is a real aiortc offerer (audio sendrecv + an `oai-events` channel made before the offer). It
creates its call with the openai SDK, validates every server event it receives against the SDK union, and
measures the audio it receives (decoded frames, and how many of them are not silence).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.conftest import SERVER_EVENT, SHARED_VOICE, StartEmulator
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.emulator.server import Emulator
from voicebridge.emulator.track import SpeechTrack
from voicebridge.scenarios.model import load_scenario
from voicebridge.signaling.app import create_app

# Fields the real API sends in session objects that the SDK's request-shaped session model does not declare.
_KNOWN_EXTRAS = {"id", "object", "expires_at"}
_VOICE = SHARED_VOICE  # one cache of spoken lines for the whole test run: espeak runs once per line
LATE_ORDER = load_scenario("late_order")


def strict_validate(event: dict[str, Any]) -> None:
    """Validate against the SDK union, and also fail on fields the SDK's models do not declare."""
    model = SERVER_EVENT.validate_python(event)

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, BaseModel):
            extra = set(obj.model_extra or {}) - _KNOWN_EXTRAS
            assert not extra, f"{event['type']}: undeclared field(s) {sorted(extra)} at {path or 'top'}"
            for name in type(obj).model_fields:
                walk(getattr(obj, name), f"{path}.{name}")
        elif isinstance(obj, list):
            for i, x in enumerate(obj):
                walk(x, f"{path}[{i}]")

    walk(model, "")


class Client:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = SpeechTrack(_VOICE.silence_packet)  # what we "say": cached Opus packets, silence otherwise
        self.pc.addTransceiver(self.mic, direction="sendrecv")
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = []
        self.frames = 0
        self.loud_frames = 0
        self.call_id = ""
        self.opened = asyncio.get_running_loop().create_future()
        self.channel.on("message", self._on_message)
        self.channel.on("open", lambda: self.opened.done() or self.opened.set_result(None))
        self.pc.on("track", self._on_track)
        self._reader: asyncio.Task[None] | None = None
        self._loud_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def _on_message(self, message: str) -> None:
        event = json.loads(message)
        strict_validate(event)
        self.events.append(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(event):
                fut.set_result(event)

    def _on_track(self, track: Any) -> None:
        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.frames += 1
                if np.abs(frame.to_ndarray()).max() > 300:
                    self.loud_frames += 1
                    for target, fut in self._loud_waiters:
                        if self.loud_frames >= target and not fut.done():
                            fut.set_result(None)

        self._reader = asyncio.ensure_future(read())

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def connect(
        self, base_url: str, session: dict[str, Any] | None = None, api_key: str = "sk-test"
    ) -> str:
        """Create the call through the openai SDK exactly as a server-side client does; returns the call
        id."""
        sdk = AsyncOpenAI(base_url=base_url, api_key=api_key)
        try:
            kwargs: dict[str, Any] = {"sdp": await self.offer()}
            if session is not None:
                kwargs["session"] = session
            raw = await sdk.realtime.calls.with_raw_response.create(**kwargs)
            assert raw.status_code == 201
            self.call_id = raw.headers["location"].rsplit("/", 1)[-1]
            await self.answer(raw.text)
        finally:
            await sdk.close()
        return self.call_id

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def wait_for(
        self, type_: str, within: float = 15.0, start: int = 0, **fields: Any
    ) -> dict[str, Any]:
        """The first event (from index `start`) of this type whose top-level fields match."""

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

    async def wait_loud(self, more: int, within: float = 15.0) -> None:
        """Wait until `more` further decoded frames of received audio are not silence."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.loud_frames + more, fut)
        self._loud_waiters.append(entry)
        try:
            await asyncio.wait_for(fut, within)
        finally:
            self._loud_waiters.remove(entry)

    def types(self, start: int = 0) -> list[str]:
        return [e["type"] for e in self.events[start:]]

    async def say(self, text: str) -> None:
        """Speak a line into the call (espeak -> Opus, as the emulated personas speak)."""
        utterance = await _VOICE.speak(text, "en-us", 165)
        self.mic.play(utterance.packets, "mic")

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    return await start_emulator()


@pytest.fixture
async def console_client(tmp_path: Path, start_emulator: StartEmulator) -> AsyncIterator[TestClient[Any, Any]]:
    """The console server (REST API + event WebSocket) over an embedded emulator, as `voicebridge serve` runs it."""
    emulator = await start_emulator()
    settings = dataclasses.replace(Settings(), base_url=emulator.base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    async with TestClient(TestServer(await create_app(settings))) as c:
        yield c


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client()
    try:
        yield c
    finally:
        await c.close()


def cs_session(**audio_input: Any) -> dict[str, Any]:
    """The late_order CS persona's session, with transcription on (plus any audio.input overrides)."""
    return {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": LATE_ORDER.cs.instructions,
        "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}, **audio_input}},
        "tools": [
            {
                "type": "function",
                "name": "lookup_order",
                "description": "Look an order up",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
            },
        ],
    }

"""The WebSocket Leg against the emulator: its own playout signals, truncation on barge-in, errors, hang-up."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import validate_client_event, validate_server_event
from tests.integration.test_ws_emulator import spoken_pcm
from voicebridge.bridge.sessions import build_session
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.media.relay import FanOut, PacketHooks, Relay, Switchable
from voicebridge.realtime.api import LegError
from voicebridge.realtime.transports import PcmRelay
from voicebridge.realtime.websocket import WebSocketLeg
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration
SCENARIO = load_scenario("late_order")


class Recorder:
    def __init__(self, leg: WebSocketLeg) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._waiters: list[tuple[Callable[[str, dict[str, Any]], bool], asyncio.Future[None]]] = []
        leg.on("server_event", lambda e: self._add("in", e))
        leg.on("client_event", lambda e: self._add("out", e))

    def _add(self, direction: str, event: dict[str, Any]) -> None:
        (validate_server_event if direction == "in" else validate_client_event)(event)
        self.events.append((direction, event))
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(direction, event):
                fut.set_result(None)

    async def until(self, pred: Callable[[str, dict[str, Any]], bool], within: float = 20.0) -> None:
        if any(pred(d, e) for d, e in self.events):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, within)
        finally:
            self._waiters.remove((pred, fut))

    def of(self, type_: str, direction: str = "in") -> list[dict[str, Any]]:
        return [e for d, e in self.events if d == direction and e["type"] == type_]


@pytest.fixture
async def cs_leg(emulator: Emulator) -> AsyncIterator[WebSocketLeg]:
    settings = Settings(base_url=emulator.base_url)
    leg = WebSocketLeg("cs", settings)
    try:
        yield leg
    finally:
        await leg.hangup()


async def connect_cs(leg: WebSocketLeg, settings: Settings) -> Recorder:
    rec = Recorder(leg)
    await leg.connect(build_session(SCENARIO.cs, settings, []))
    return rec


async def test_leg_plays_out_in_real_time_and_signals_start_and_stop(emulator: Emulator, cs_leg: WebSocketLeg) -> None:
    rec = await connect_cs(cs_leg, cs_leg.settings)
    assert cs_leg.state == "open" and cs_leg.call_id in emulator.sessions
    cs_leg.send({"type": "response.create"})
    await rec.until(lambda d, e: e["type"] == "output_audio_buffer.stopped")
    types = [e["type"] for d, e in rec.events if d == "in"]
    assert types.index("output_audio_buffer.started") < types.index("response.output_audio_transcript.done")
    # Stopped only once the line's audio is complete and played (whether response.done, sent right after the
    # last delta, is read before or after the last frame plays depends on scheduling, not on the leg).
    assert types.index("response.output_audio.done") < types.index("output_audio_buffer.stopped")
    done = rec.of("response.done")[0]
    item = done["response"]["output"][0]["id"]
    duration_ms = emulator.sessions[cs_leg.call_id or ""].item_audio_ms[item]
    assert abs(cs_leg.played_ms[item] - duration_ms) <= 40  # all of it was played, 20 ms a frame
    assert rec.of("output_audio_buffer.started")[0]["event_id"].startswith("vb_playout_")
    # Deltas are emitted with their audio elided; what was received is counted.
    assert all("elided" in e["delta"] for e in rec.of("response.output_audio.delta"))
    assert cs_leg.delta_bytes >= duration_ms * 48 - 48 * 40


async def test_barge_in_stops_playout_and_truncates_to_what_was_played(
    emulator: Emulator, cs_leg: WebSocketLeg
) -> None:
    rec = await connect_cs(cs_leg, cs_leg.settings)
    # Synthesised before the greeting starts: espeak's time on a loaded machine must not use up the greeting.
    pcm = await spoken_pcm("Hello, my order has not arrived.", silence_s=0.2)
    cs_leg.send({"type": "response.create"})
    await rec.until(lambda d, e: len(rec.of("response.output_audio.delta")) >= 25)  # half a second queued
    for i in range(0, len(pcm), 960):  # as the relay hands it over: 20 ms at a time
        cs_leg.append_pcm(pcm[i : i + 960])
    await rec.until(lambda d, e: e["type"] == "conversation.item.truncated")
    truncate = rec.of("conversation.item.truncate", "out")
    assert len(truncate) == 1 and cs_leg.truncations == 1
    played = truncate[0]["audio_end_ms"]
    item = truncate[0]["item_id"]
    assert 0 < played < emulator.sessions[cs_leg.call_id or ""].item_audio_ms[item]
    assert played == cs_leg.played_ms[item]
    assert rec.of("conversation.item.truncated")[0]["audio_end_ms"] == played
    assert rec.of("output_audio_buffer.cleared")  # the leg's own signal: the call stops waiting on it
    types = [e["type"] for d, e in rec.events if d == "in"]
    assert types.index("input_audio_buffer.speech_started") < types.index("output_audio_buffer.cleared")
    assert not rec.of("output_audio_buffer.stopped")  # cleared, not played to the end
    assert cs_leg.appends > 0 and not cs_leg.invalid_events


async def test_hangup_closes_the_session(emulator: Emulator, cs_leg: WebSocketLeg) -> None:
    await connect_cs(cs_leg, cs_leg.settings)
    session = emulator.sessions[cs_leg.call_id or ""]
    await cs_leg.hangup()
    assert cs_leg.state == "closed" and cs_leg.closed.is_set()
    await asyncio.wait_for(session.closed.wait(), 5)


async def test_a_refused_key_fails_connect_with_the_apis_message(emulator: Emulator) -> None:
    leg = WebSocketLeg("cs", Settings(base_url=emulator.base_url, api_key="wrong"))
    with pytest.raises(LegError, match=r"HTTP 401 .*Incorrect API key.*check OPENAI_API_KEY"):
        await leg.connect(build_session(SCENARIO.cs, leg.settings, []))
    assert leg.state == "failed"


async def test_a_refused_session_fails_connect_with_the_apis_message(emulator: Emulator) -> None:
    leg = WebSocketLeg("cs", Settings(base_url=emulator.base_url))
    session = build_session(SCENARIO.cs, leg.settings, [])
    session["no_such_field"] = 1
    with pytest.raises(LegError, match=r"session was refused: .*no_such_field"):
        await leg.connect(session)
    assert leg.state == "failed"
    await leg.hangup()


async def test_nobody_listening_fails_connect_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    leg = WebSocketLeg("caller", Settings(base_url=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(LegError, match=re.escape(f"cannot reach http://127.0.0.1:{port}/v1")):
        await leg.connect(build_session(SCENARIO.caller, leg.settings, []))


async def test_pcm_relay_is_a_relay_and_claims_nothing_more() -> None:
    """No stubs: a relay with no Opus packets has no packet hooks, no listeners and no take-over (the join
    refuses those with a 409: tests/integration/test_join.py)."""
    settings = Settings(base_url="http://127.0.0.1:9/v1")
    relay = PcmRelay(WebSocketLeg("caller", settings), WebSocketLeg("cs", settings))
    assert isinstance(relay, Relay)
    assert not isinstance(relay, PacketHooks | FanOut | Switchable)
    assert not any(hasattr(relay, name) for name in ("on_packet", "add_listener", "set_caller_source", "on_hold"))
    relay.stop()  # safe before start
    assert relay.stats() == {"kind": "pcm", "frames": {"caller_to_cs": 0, "cs_to_caller": 0}, "on_hold": False}

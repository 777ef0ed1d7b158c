"""One Realtime leg over WebRTC against the emulator: offer shape, session.created, event validation both ways,
clear errors from the API, stats, and a hang-up that leaves nothing open."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from voicebridge.bridge.sessions import build_session
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.realtime.api import LegError
from voicebridge.realtime.leg import InvalidClientEvent
from voicebridge.realtime.webrtc import WebRtcLeg
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration


def session(settings: Settings) -> dict[str, Any]:
    return build_session(load_scenario("late_order").cs, settings, [])


async def test_leg_connects_exchanges_valid_events_and_hangs_up(emulator: Emulator) -> None:
    settings = Settings(base_url=emulator.base_url)
    leg = WebRtcLeg("cs", settings)
    received: list[dict[str, Any]] = []
    updated: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_event(event: dict[str, Any]) -> None:
        received.append(event)
        if event["type"] == "session.updated" and not updated.done():
            updated.set_result(event)

    leg.on("server_event", on_event)
    sent: list[dict[str, Any]] = []
    leg.on("client_event", sent.append)
    await leg.connect(session(settings))
    try:
        assert leg.state == "open" and leg.call_id and leg.call_id.startswith("rtc_")
        assert leg.call_id in emulator.sessions
        # The offer carries the audio m-line and the data channel made before it.
        assert "m=audio " in leg.offer_sdp and "m=application " in leg.offer_sdp
        assert received[0]["type"] == "session.created"
        assert received[0]["session"]["instructions"] == load_scenario("late_order").cs.instructions

        event_id = leg.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
        )
        assert sent[-1]["event_id"] == event_id and event_id.startswith("vb_cs_")
        assert (await asyncio.wait_for(updated, 10))["session"]["instructions"] == "Be brief."

        with pytest.raises(InvalidClientEvent, match=r"response\.creat"):
            leg.send({"type": "response.creat"})
        with pytest.raises(InvalidClientEvent, match=r"conversation\.item\.create"):
            leg.send({"type": "conversation.item.create", "item": {"type": "message", "role": "wizard"}})
        assert len(sent) == 1  # nothing invalid went out

        # An invalid server event is recorded and still passed on; a non-JSON message is recorded and dropped.
        before = len(received)
        leg._on_message('{"type": "made.up.event"}')
        leg._on_message("not json")
        assert [p["problem"][:20] for p in leg.invalid_events][1:] == ["not JSON: Expecting "]
        assert "made.up.event" in leg.invalid_events[0]["problem"]
        assert received[before]["type"] == "made.up.event" and len(received) == before + 1

        stats = await leg.stats()
        assert stats["call_id"] == leg.call_id and stats["events_out"] == 1
        assert {s["type"] for s in stats["rtc"].values()} >= {"transport"}
    finally:
        await leg.hangup()
    assert leg.state == "closed" and leg.closed.is_set()
    assert leg.pc is not None and leg.pc.connectionState == "closed"
    assert leg.call_id not in emulator.sessions  # the REST hang-up reached the emulator
    with pytest.raises(InvalidClientEvent, match="closed"):
        leg.send({"type": "response.create"})


async def test_api_errors_are_clear_and_leave_nothing_open(emulator: Emulator) -> None:
    settings = Settings(base_url=emulator.base_url)
    leg = WebRtcLeg("caller", settings)
    bad = session(settings) | {"voice_of_god": True}
    with pytest.raises(LegError) as info:
        await leg.connect(bad)
    message = str(info.value)
    assert "HTTP 400" in message and "voice_of_god" in message and emulator.base_url in message
    assert leg.state == "failed" and leg.pc is not None and leg.pc.connectionState == "closed"
    assert not emulator.sessions

    nowhere = WebRtcLeg("caller", Settings(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(LegError, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        await nowhere.connect(session(settings))

    secret = "sk-proj-" + "x" * 8
    refused = WebRtcLeg("caller", Settings(base_url=emulator.base_url, api_key="wrong-" + secret))
    with pytest.raises(LegError) as info:
        await refused.connect(session(settings))
    assert "401" in str(info.value) and secret not in str(info.value)

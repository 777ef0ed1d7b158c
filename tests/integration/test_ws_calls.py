"""The demo call in all four transport combinations, at once, against one emulator in its own process.

caller/cs each over WebRTC (Opus on RTP, pass-through) or the WebSocket transport (PCM16 24 kHz): every call
must end with the caller's hang-up, call both tools with the right arguments, and the CS agent must have
HEARD each caller line (the emulator's transcription of the relayed audio), whatever the transports.
Transcoding happens only where a WebSocket leg meets a WebRTC leg; WebRTC+WebRTC stays pass-through and
WebSocket+WebSocket is relayed PCM to PCM. The emulator runs as `voicebridge emulator` in a subprocess (as a
real API is another machine): four calls' worth of emulated agents and the bridge then do not share one event loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import validate_client_event, validate_server_event
from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.audio import AudioRelay
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.realtime.transports import PcmRelay, leg_factory
from voicebridge.realtime.webrtc import WebRtcLeg
from voicebridge.realtime.websocket import WebSocketLeg
from voicebridge.results import CallSummary
from voicebridge.scenarios.model import load_scenario, normalize_phrase

pytestmark = pytest.mark.integration

COMBOS = [("webrtc", "webrtc"), ("ws", "webrtc"), ("webrtc", "ws"), ("ws", "ws")]


@pytest.fixture
async def emulator_url() -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebridge.cli", "emulator", "--host", "127.0.0.1", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert "serving the Realtime GA API at http://127.0.0.1:" in line, line
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def run(base_url: str, folder: Path, caller: str, cs: str) -> tuple[Call, CallSummary]:
    # The hang-up waits for the goodbye to be heard (asserted below); its limits are for a broken peer only.
    settings = Settings(base_url=base_url, hangup_drain_timeout_s=30.0, hangup_hear_timeout_s=30.0)
    call = Call(load_scenario("late_order"), settings, folder, leg_factory=leg_factory(caller, cs))
    await call.start()
    await call.wait_ended(120)
    return call, call.summary()


async def test_demo_call_in_every_transport_combination(emulator_url: str, tmp_path: Path) -> None:
    scenario = load_scenario("late_order")
    caller_lines = [normalize_phrase(r.say) for r in scenario.caller.script if r.say]
    results = await asyncio.gather(
        *(run(emulator_url, tmp_path / f"{c}_{s}", c, s) for c, s in COMBOS), return_exceptions=True
    )
    problems: list[str] = []
    for (c, s), result in zip(COMBOS, results, strict=True):
        if isinstance(result, BaseException):
            problems.append(f"{c}+{s}: {type(result).__name__}: {result}")
            continue
        call, summary = result
        label = f"caller {c} + cs {s}"
        if summary.end_reason != "caller_hangup":
            problems.append(f"{label}: ended {summary.end_reason} ({summary.error})")
            continue
        cs_calls = [(t.name, t.arguments, t.ok) for t in summary.tool_calls if t.leg == "cs"]
        assert cs_calls == [
            ("lookup_order", {"order_id": "4217"}, True),
            ("issue_refund", {"order_id": "4217", "reason": "late delivery"}, True),
        ], label
        assert [t.name for t in summary.tool_calls if t.leg == "caller"] == ["hangup"], label
        heard_by_cs = [normalize_phrase(t.text) for t in summary.heard["cs"]]
        assert heard_by_cs == caller_lines, label
        heard_by_caller = [normalize_phrase(t.text) for t in summary.heard["caller"]]
        assert len(heard_by_caller) == 2 and "forty two dollars" in heard_by_caller[1], label
        # Turns have a real playout span on every transport (the WebSocket leg's own playout signals).
        assert all(t.end > t.start for t in summary.turns), (label, summary.turns)

        # The relay each combination must use, and where the codec work happened.
        legs = call.legs
        for role, kind in (("caller", c), ("cs", s)):
            assert isinstance(legs[role], WebSocketLeg if kind == "ws" else WebRtcLeg), label
            assert not legs[role].invalid_events, (label, legs[role].invalid_events[:2])
        if (c, s) == ("ws", "ws"):
            assert isinstance(call.relay, PcmRelay)
            assert all(n > 100 for n in call.relay.frames.values())
            for leg in legs.values():
                assert isinstance(leg, WebSocketLeg)
                assert leg.tap.packets == 0 and leg.sink.packets_sent == 0  # no codec at all
        else:
            assert isinstance(call.relay, AudioRelay)
            for leg in legs.values():
                if isinstance(leg, WebSocketLeg):  # its side transcodes: packets in and out of the codec
                    assert leg.tap.packets > 100 and leg.sink.packets_sent > 100, label
                    assert leg.frames_played > 100 and leg.appends > 100, label

        # Every recorded event valid for the SDK; no output_audio_buffer.* was SENT to a WebSocket session.
        events = read_events(tmp_path / f"{c}_{s}")
        for rec in events:
            (validate_server_event if rec["direction"] == "in" else validate_client_event)(rec["event"])
        for role, kind in (("caller", c), ("cs", s)):
            if kind == "ws":
                mine = [r["event"] for r in events if r["leg"] == role]
                started = [e for e in mine if e["type"] == "output_audio_buffer.started"]
                assert started and all(e["event_id"].startswith("vb_playout_") for e in started), label
                assert any(e["type"] == "response.output_audio.delta" for e in mine), label
    assert not problems, problems

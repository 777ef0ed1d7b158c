"""The demo call end to end: real WebRTC on loopback, real Opus, real espeak speech, against the emulator.

One call of the built-in `late_order` scenario runs from the CS greeting to the caller's hang-up, and the test
checks what the issue asks: both tools with the right arguments, the refund in SQLite, the CS agent HEARD the
caller's lines (the emulator's transcription of the relayed audio), the last words arrived before the legs
closed, no decode/encode on the bridge's relay path, response.create never sent during an active response,
every event valid for the SDK, and nothing left running afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCRtpReceiver

from tests.conftest import validate_client_event, validate_server_event
from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.results import CallSummary
from voicebridge.scenarios.model import load_scenario, normalize_phrase
from voicebridge.scenarios.shop import DB_NAME

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "results"


def key_paths(data: Any, path: str = "") -> set[str]:
    """Every key path of a JSON value ("legs[].stats.events_in"); list items are merged, and the contents of
    aiortc's getStats (report ids) and of tool arguments are left out: they are not the summary's own keys."""
    if isinstance(data, dict):
        out = set()
        for key, value in data.items():
            out.add(f"{path}.{key}")
            if key not in ("rtc", "arguments"):
                out |= key_paths(value, f"{path}.{key}")
        return out
    if isinstance(data, list):
        return set().union(*(key_paths(item, f"{path}[]") for item in data))
    return set()


def assert_no_response_create_while_active(events: list[dict[str, Any]]) -> None:
    active: dict[str, bool] = {}
    for rec in events:
        leg, kind = rec["leg"], rec["event"]["type"]
        if rec["direction"] == "in" and kind == "response.created":
            active[leg] = True
        elif rec["direction"] == "in" and kind == "response.done":
            active[leg] = False
        elif rec["direction"] == "out" and kind == "response.create":
            assert not active.get(leg), f"response.create on {leg} during an active response (t={rec['t']})"


async def test_demo_call_from_greeting_to_caller_hangup(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spy on aiortc's own receive path (the one that feeds the jitter buffer and the decoder): the bridge's
    # receivers must never use it. The emulator's receivers (same process) take their packets off it too, to
    # decode only what may be speech (emulator/listening.py), so no receiver of the process may reach it.
    decoded_by: set[int] = set()
    original = RTCRtpReceiver._handle_rtp_packet

    async def spy(self: RTCRtpReceiver, packet: Any, arrival_time_ms: int) -> None:
        decoded_by.add(id(self))
        await original(self, packet, arrival_time_ms)

    monkeypatch.setattr(RTCRtpReceiver, "_handle_rtp_packet", spy)

    scenario = load_scenario("late_order")
    # The hang-up waits on events (played out, then heard); its limits are only there for a broken peer.
    settings = Settings(base_url=emulator.base_url, hangup_drain_timeout_s=30.0, hangup_hear_timeout_s=30.0)
    call = Call(scenario, settings, tmp_path / "call")
    closed_at: dict[str, float] = {}
    for_later: list[Any] = []
    call.on("state", lambda s: closed_at.setdefault(s, call.now()))
    first_cs_turn: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    call.on(
        "turn",
        lambda t: (
            t.speaker == "cs"
            and t.kind == "said"
            and not first_cs_turn.done()
            and first_cs_turn.set_result(t.text)
        ),
    )
    await call.start()
    legs = dict(call.legs)
    greeting = await asyncio.wait_for(first_cs_turn, 30)
    if normalize_phrase(greeting) != normalize_phrase(scenario.cs.script[0].say or ""):
        await call.hangup()
        pytest.fail(
            f"the CS persona did not greet (it said {greeting!r}): the emulator took the scenario's "
            "user context message for something heard (emulator/handlers.py `s.heard.append`)"
        )
    emulator_taps = [s.tap for s in emulator.sessions.values()]
    for leg in legs.values():
        leg.on("closed", lambda leg=leg: closed_at.setdefault(f"{leg.role}_closed", call.now()))
        for_later.append((leg.audio_out.sender, leg.audio_out.receiver))  # type: ignore[union-attr]
    await call.wait_ended(150)
    summary = call.summary()

    assert summary.end_reason == "caller_hangup", summary.error
    assert summary.succeeded and summary.ended_by == "caller"

    # Tools: both called once, with the right arguments, and the database shows the refund.
    cs_calls = [(c.name, c.arguments, c.ok) for c in summary.tool_calls if c.leg == "cs"]
    assert cs_calls == [
        ("lookup_order", {"order_id": "4217"}, True),
        ("issue_refund", {"order_id": "4217", "reason": "late delivery"}, True),
    ]
    with sqlite3.connect(tmp_path / "call" / DB_NAME) as db:
        assert db.execute("SELECT order_id, amount_cents FROM refunds").fetchall() == [("4217", 4200)]

    # The CS agent HEARD every line the caller agent said, through the relayed audio, and vice versa.
    said = {
        r: [normalize_phrase(t.text) for t in summary.turns if t.speaker == r]
        for r in ("caller", "cs")
    }
    heard = {r: [normalize_phrase(t.text) for t in summary.heard[r]] for r in ("caller", "cs")}
    caller_lines = [normalize_phrase(r.say) for r in scenario.caller.script if r.say]
    assert said["caller"] == caller_lines
    assert heard["cs"] == caller_lines
    assert heard["caller"] == said["cs"] and len(said["cs"]) == 2
    assert "forty two dollars" in said["cs"][1]
    # Per-turn response gap: from the other party's audio stopping to this one's starting (never overlapping).
    turns = summary.turns
    assert turns[0].gap_s is None
    for before, turn in itertools.pairwise(turns):
        assert turn.gap_s is not None and turn.gap_s > 0
        assert turn.gap_s == pytest.approx(turn.start - before.end, abs=0.002)

    # The last words (the goodbye) were heard before either leg closed.
    last_heard = summary.heard["cs"][-1]
    assert last_heard.end <= min(closed_at["caller_closed"], closed_at["cs_closed"])
    assert closed_at["ending"] < closed_at["caller_closed"]

    # No decode and no encode on the relay path: the bridge's receivers bypass aiortc's decode path,
    # its senders never created an encoder, and packets were relayed both ways.
    assert RTCRtpReceiver._handle_rtp_packet is spy
    assert not decoded_by, "a receiver fed aiortc's jitter buffer and decoder"
    # ... because each receiver's own handler is a tap (an instance attribute shadows the spied class method),
    # and the taps saw the packets: the bridge's two and the emulator's two sessions'.
    assert len(emulator_taps) == 2
    for tap in emulator_taps:
        assert tap is not None and tap.packets > 100
    for _, rx in for_later:
        assert "_handle_rtp_packet" in vars(rx)
    for tx, _ in for_later:
        assert getattr(tx, "_RTCRtpSender__encoder", None) is None
    assert summary.relay is not None and summary.relay.get("kind") == "passthrough"
    rtp_in = {leg.role: leg.stats["rtp_in"]["packets"] for leg in summary.legs}
    assert rtp_in["caller"] > 100 and rtp_in["cs"] > 100

    # Events: every one valid for the SDK, response.create never during an active response.
    events = read_events(tmp_path / "call")
    assert len(events) == summary.events > 50
    for rec in events:
        (validate_server_event if rec["direction"] == "in" else validate_client_event)(rec["event"])
    assert all(not leg.invalid_events for leg in legs.values())
    assert_no_response_create_while_active(events)

    # Artifacts are complete.
    folder = tmp_path / "call"
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk["end_reason"] == "caller_hangup" and on_disk["legs"][0]["call_id"].startswith("rtc_")
    # summary.json is the summary, key for key as a real call has always written it (tests/fixtures/results),
    # and it reads back into the same record.
    assert CallSummary.model_validate(on_disk) == summary
    assert key_paths(on_disk) == key_paths(json.loads((FIXTURES / "summary.json").read_text()))
    transcript = json.loads((folder / "transcript.json").read_text())
    assert {"speaker", "text", "start", "end"} <= set(transcript[0])
    assert "goodbye" in (folder / "transcript.txt").read_text()

    # Nothing left behind: both peer connections closed, no task of ours still running.
    for leg in legs.values():
        assert leg.pc is not None and leg.pc.connectionState == "closed"  # type: ignore[attr-defined]
    await assert_no_tasks_left()


async def assert_no_tasks_left() -> None:
    """Every task but this test's own finishes on its own (bounded): nothing keeps running after a call."""
    me = asyncio.current_task()

    def others() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t is not me and t is not checker and not t.done()]

    async def settle() -> None:
        while left := others():
            await asyncio.wait(left, timeout=0.5)

    checker = asyncio.ensure_future(settle())
    try:
        await asyncio.wait_for(asyncio.shield(checker), 10)
    except TimeoutError:
        checker.cancel()
        raise AssertionError(f"tasks left running: {[t.get_coro() for t in others()]}") from None

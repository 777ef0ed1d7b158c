"""Per-turn latency (bridge/turns.py) from packet and event sequences on a controlled call clock.

The test owns both clocks the observer reads: the call's clock and the relay's packet clock (``received_at``), so
every figure, the relay's share included, is exact and independent of how fast the machine is.
"""

from __future__ import annotations

from typing import Any

import pytest

from voicebridge.bridge.turns import TurnLatency, _covered, artifact_files, format_turns
from voicebridge.media.passthrough import RtpAudio

pytestmark = pytest.mark.unit

SPEECH = b"\x78" + bytes(range(60))  # tens of bytes: speech
SILENCE = b"\xf8\xff\xfe"  # the 3-byte Opus silence frame the emulator sends between lines


RELAY_S = 0.0001  # each packet reaches the tap 0.1 ms after it arrived: the relay's forwarding time


class Clock:
    """The call's clock and the relay's packet clock at once (one timeline is enough for the observer)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def observer(clock: Clock) -> TurnLatency:
    return TurnLatency(clock, perf=clock)


def packet(clock: Clock, payload: bytes = SPEECH, relay_s: float = RELAY_S) -> RtpAudio:
    """A packet seen at the tap now, that arrived at the bridge relay_s ago."""
    return RtpAudio(payload, 0, 0, False, clock.t - relay_s)


def talk(
    obs: TurnLatency,
    clock: Clock,
    party: str,
    start: float,
    end: float,
    payload: bytes = SPEECH,
    relay_s: float = RELAY_S,
) -> None:
    """Packets every 20 ms from start to end (inclusive) as they would reach the relay tap."""
    n = round((end - start) / 0.02)
    for i in range(n + 1):
        clock.t = start + i * 0.02
        obs.on_packet(party, packet(clock, payload, relay_s))


def event(obs: TurnLatency, t: float, leg: str, direction: str, ev: dict[str, Any]) -> None:
    obs.on_event({"t": t, "leg": leg, "direction": direction, "event": ev})


def output_sent(obs: TurnLatency, t: float, leg: str, call_id: str) -> None:
    item = {"type": "function_call_output", "call_id": call_id}
    event(obs, t, leg, "out", {"type": "conversation.item.create", "item": item})


def test_a_reply_after_the_other_party_stopped_is_one_turn_with_its_gap() -> None:
    clock = Clock()
    obs = observer(clock)
    talk(obs, clock, "cs", 1.0, 2.0)
    talk(obs, clock, "cs", 2.02, 2.9, SILENCE)  # silence packets are not speech
    talk(obs, clock, "caller", 3.0, 4.0)
    [turn] = obs.turns
    assert (turn.from_, turn.to) == ("cs", "caller")
    # Times are arrivals at the bridge: 0.1 ms before each packet reached the tap.
    assert turn.speech_end == pytest.approx(2.0 - RELAY_S, abs=1e-4)
    assert turn.reply_start == pytest.approx(3.0 - RELAY_S, abs=1e-4)
    assert turn.total_ms == pytest.approx(1000, abs=0.01)
    assert turn.tools_ms == 0 and turn.gating_ms == 0
    assert turn.relay_ms == turn.bridge_ms == pytest.approx(0.2)  # the two packets' 0.1 ms each
    assert turn.other_ms == pytest.approx(1000 - 0.2, abs=0.01)


def test_the_relay_share_is_the_forwarding_time_of_the_two_packets_around_the_gap() -> None:
    clock = Clock()
    obs = observer(clock)
    talk(obs, clock, "cs", 1.0, 1.98, relay_s=0.002)  # earlier packets' forwarding times do not count
    talk(obs, clock, "cs", 2.0, 2.0, relay_s=0.0003)  # the last speech packet before the gap
    talk(obs, clock, "caller", 3.0, 3.0, relay_s=0.0005)  # the first packet of the reply
    talk(obs, clock, "caller", 3.02, 3.5, relay_s=0.004)
    [turn] = obs.turns
    assert turn.relay_ms == turn.bridge_ms == pytest.approx(0.8)
    assert turn.speech_end == pytest.approx(2.0 - 0.0003, abs=1e-4)
    assert turn.reply_start == pytest.approx(3.0 - 0.0005, abs=1e-4)
    assert turn.total_ms == pytest.approx(1000 - 0.2, abs=0.01)
    assert obs.summary().model_dump()["relay_ms"] == {"p50": pytest.approx(0.8), "max": pytest.approx(0.8)}


def test_the_first_speaker_has_no_turn_and_pauses_within_a_party_are_not_turns() -> None:
    clock = Clock()
    obs = observer(clock)
    talk(obs, clock, "cs", 1.0, 2.0)
    talk(obs, clock, "cs", 3.0, 4.0)  # the same party again after a pause
    assert obs.turns == []
    assert obs.summary().model_dump(mode="json") == {
        "turns": [], "count": 0, "total_ms": None, "bridge_ms": None, "relay_ms": None
    }


def test_tool_time_and_response_gating_inside_the_turn_are_the_bridges_share() -> None:
    clock = Clock()
    obs = observer(clock)
    talk(obs, clock, "caller", 1.0, 2.0)
    event(obs, 2.5, "cs", "in", {"type": "response.function_call_arguments.done", "call_id": "c1"})
    output_sent(obs, 2.8, "cs", "c1")
    event(obs, 2.9, "cs", "out", {"type": "response.create"})
    event(obs, 2.6, "caller", "in", {"type": "response.function_call_arguments.done", "call_id": "x"})  # other leg
    talk(obs, clock, "cs", 3.5, 4.0)
    [turn] = obs.turns
    assert turn.tools_ms == pytest.approx(300, abs=0.5)
    assert turn.gating_ms == pytest.approx(100, abs=0.5)
    assert turn.bridge_ms == pytest.approx(400 + 0.2, abs=0.01)
    assert turn.total_ms == pytest.approx(1500, abs=0.01)
    assert "tools 300.0" in format_turns(obs.summary())[0]


def test_concurrent_tool_calls_count_once_and_only_inside_the_turn() -> None:
    clock = Clock()
    obs = observer(clock)
    for call_id, start, end in (("a", 0.5, 1.5), ("b", 2.2, 2.6), ("c", 2.4, 2.8)):  # "a" before the turn
        event(obs, start, "cs", "in", {"type": "response.function_call_arguments.done", "call_id": call_id})
        output_sent(obs, end, "cs", call_id)
    talk(obs, clock, "caller", 1.0, 2.0)
    talk(obs, clock, "cs", 3.0, 3.2)
    [turn] = obs.turns
    assert turn.tools_ms == pytest.approx(600, abs=0.5)  # 2.2-2.8 once, "a" outside the window


def test_barge_in_is_no_turn_nor_a_ping_pong_and_a_human_speaks_for_the_caller() -> None:
    clock = Clock()
    obs = observer(clock)
    talk(obs, clock, "cs", 1.0, 1.5)
    for i in range(25):  # the human talks over the CS agent, which keeps talking for half a second
        clock.t = 1.52 + i * 0.02
        obs.on_packet("human", packet(clock))
        obs.on_packet("cs", packet(clock))
    # Talking over the agent is an overlap (the talk-over analysis reports it), not a reply 20 ms after its speech.
    assert obs.turns == [] and obs.summary().count == 0
    [overlap] = obs.timing().overlaps
    assert overlap.by == "caller" and overlap.start == pytest.approx(1.52 - RELAY_S, abs=1e-4)
    talk(obs, clock, "human", 2.04, 2.5)  # the human goes on alone after the agent yielded: still no turn
    talk(obs, clock, "cs", 3.0, 3.5)  # the agent's reply after the human stopped is a turn
    assert [(t.from_, t.to, t.total_ms) for t in obs.turns] == [("caller", "cs", pytest.approx(500, abs=0.01))]
    assert obs.timing().turn_gap_ms is not None and obs.timing().turn_gap_ms.p50 == pytest.approx(500, abs=0.01)
    obs.on_packet("listener", packet(clock))  # not a party: ignored
    assert len(obs.turns) == 1


def test_a_reply_in_the_others_short_pause_is_a_turn_only_if_the_other_stays_quiet() -> None:
    clock = Clock()
    obs = observer(clock)
    talk(obs, clock, "cs", 1.0, 2.0)
    talk(obs, clock, "caller", 2.1, 2.5)  # 100 ms after the agent's last word: a quick reply
    assert [round(t.total_ms) for t in obs.turns] == [100]
    talk(obs, clock, "caller", 3.0, 3.2)
    talk(obs, clock, "cs", 3.24, 3.3)  # the agent answers 40 ms after the caller's last word...
    assert len(obs.turns) == 2
    talk(obs, clock, "caller", 3.4, 3.6)  # ...but the caller was only pausing (< QUIET_S): that was talk-over
    assert [round(t.total_ms) for t in obs.turns] == [100]


def test_covered_is_the_union_clipped_to_the_window() -> None:
    assert _covered([(0.0, 1.0), (0.5, 1.5), (3.0, 4.0)], (0.25, 3.5)) == pytest.approx(1750)
    assert _covered([], (0.0, 1.0)) == 0
    assert _covered([(2.0, 3.0)], (0.0, 1.0)) == 0


def test_artifact_files_list_the_recording_once_finished() -> None:
    base = artifact_files(None)
    assert base["events"] == "events.jsonl" and base["summary"] == "summary.json"
    assert not any(k.startswith("recording") for k in base)

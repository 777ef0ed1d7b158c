"""A misheard line on a whole call (the bridge, real WebRTC legs, the emulator's own hearing): the lab's failure of
barge_in under `lossy`, made deterministic. Two lines are garbled on the way, by a Voice that speaks them as other
words (outside the hearer's grammar; the speaker's transcript still says the line): the caller's cut-in, until the
agent has asked for it again, and the agent's first request to repeat. So the CS agent cannot understand the cut-in
and the caller cannot understand the question. That call used to loop until max_duration (the agent repeating its
greeting to each "did not catch that"); now the agent asks again in other words, the caller repeats its cut-in, and
the scenario's criteria pass. Nothing here compares a time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.conftest import StartEmulator
from tests.unit.test_hearing import decode, pcm16k
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.emulator.hearing import recognizer_for
from voicebridge.emulator.persona import ASK_AGAIN_REPLY, GENERIC_REPLY, Script
from voicebridge.emulator.voice import Utterance, Voice
from voicebridge.results import CallSummary
from voicebridge.scenarios import load_scenario

pytestmark = pytest.mark.integration

GARBLE = "The weather is lovely in Paris this time of year."  # in neither persona's grammar


class GarblingVoice(Voice):
    """Says the caller's cut-in (at the caller's speed) as GARBLE until the agent has asked to repeat, and the
    agent's first request (at the agent's speed) as GARBLE too; every other line as it is."""

    def __init__(self, cut_in: str, caller_speed: int, agent_speed: int) -> None:
        super().__init__()
        self.cut_in, self.caller_speed, self.agent_speed = cut_in, caller_speed, agent_speed
        self.agent_asked = 0
        self.garbled: list[str] = []

    async def speak(self, text: str, espeak_voice: str = "en-us", speed: int = 165) -> Utterance:
        garble = False
        if text == GENERIC_REPLY and speed == self.agent_speed:
            self.agent_asked += 1
            garble = self.agent_asked == 1
        elif text == self.cut_in and speed == self.caller_speed:
            garble = self.agent_asked == 0  # (its pre-synthesis at the session's start is garbled too: unheard)
        if not garble:
            return await super().speak(text, espeak_voice, speed)
        self.garbled.append(text)
        other = await super().speak(GARBLE, espeak_voice, speed)
        return Utterance(text=text, packets=other.packets)


async def test_a_lost_cut_in_and_a_lost_question_are_asked_for_again_and_the_call_passes(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    scenario = load_scenario("barge_in")
    caller, cs = scenario.caller, scenario.cs
    greeting = cs.script[0].say
    cut_in = caller.script[0].say
    assert greeting and cut_in
    voice = GarblingVoice(cut_in, caller.espeak_speed, cs.espeak_speed)
    # The garble is not heard by either side (so the turns below are lost by it, not by chance).
    for speaker, hearer in ((caller, cs), (cs, caller)):
        garbled = await voice.speak(GARBLE, speaker.espeak_voice, speaker.espeak_speed)
        assert recognizer_for(Script(hearer).phrases).transcribe(pcm16k(decode(garbled.packets))) is None

    emulator = await start_emulator(voice=voice)
    folder = tmp_path / "call"
    settings = dataclasses.replace(Settings(), base_url=emulator.base_url, hangup_drain_timeout_s=8.0)
    call = Call(scenario, settings, folder)
    await call.start()
    await call.wait_ended(scenario.max_duration_s + 30)
    summary = CallSummary.model_validate_json((folder / "summary.json").read_text())

    assert [(t.speaker, t.text) for t in summary.turns] == [
        ("cs", greeting),
        ("caller", cut_in),  # garbled: the agent hears nothing it knows
        ("cs", GENERIC_REPLY),  # garbled: the caller hears nothing it knows
        ("caller", GENERIC_REPLY),
        ("cs", ASK_AGAIN_REPLY),  # not its greeting again: it was the one asking
        ("caller", cut_in),  # asked for its line, the caller says it again, and now it is heard
        ("cs", "Your order four two one seven is delayed. It will arrive next week. Is there anything else?"),
        ("caller", "No, thank you. Goodbye."),
    ]
    assert voice.garbled == [cut_in, cut_in, GENERIC_REPLY]  # pre-synthesis, the cut-in, the question
    heard_by_cs = [line.text for line in summary.heard["cs"]]
    assert heard_by_cs[0] == "" and heard_by_cs[-2] == "sorry to cut in my order four two one seven has not arrived"
    assert [line.text for line in summary.heard["caller"]][1] == ""  # the question, lost
    assert summary.end_reason == "caller_hangup" and summary.passed is True, summary.criteria
    assert len(summary.criteria) == 6

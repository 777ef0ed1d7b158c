"""Turn detection over real WebRTC: idle timeout, semantic_vad eagerness, input transcription deltas and
rate_limits.updated. Every event is validated against the SDK's server event union (the Client does it)."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import _VOICE, Client, cs_session
from tests.integration.test_ws_emulator import WsClient
from voicebridge.emulator.persona import GENERIC_REPLY
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import normalize_phrase

pytestmark = pytest.mark.integration

FIRST = "Hello, my order has not arrived."
SECOND = "The order number is four two one seven."


async def test_idle_timeout_commits_an_idle_turn_and_prompts_after_the_audio_ends(
    emulator: Emulator, client: Client
) -> None:
    await client.connect(
        emulator.base_url, cs_session(turn_detection={"type": "server_vad", "idle_timeout_ms": 1200})
    )
    created = await client.wait_for("session.created")
    assert created["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 1200
    client.send({"type": "response.create"})
    stopped = await client.wait_for("output_audio_buffer.stopped", within=20)
    timeout = await client.wait_for("input_audio_buffer.timeout_triggered", within=20)
    assert client.events.index(stopped) < client.events.index(timeout)  # counted from the end of playback
    assert 0 <= timeout["audio_start_ms"] <= timeout["audio_end_ms"]
    start = client.events.index(timeout)
    committed = await client.wait_for("input_audio_buffer.committed", start=start, item_id=timeout["item_id"])
    added = await client.wait_for("conversation.item.added", start=start)
    assert added["item"]["id"] == committed["item_id"] and added["item"]["content"][0]["type"] == "input_audio"
    heard = await client.wait_for("conversation.item.input_audio_transcription.completed", start=start)
    assert heard["transcript"] == "" and heard["usage"]["seconds"] * 1000 == pytest.approx(
        timeout["audio_end_ms"] - timeout["audio_start_ms"], abs=1
    )
    said = await client.wait_for("response.output_audio_transcript.done", start=start, within=20)
    assert said["transcript"] == GENERIC_REPLY  # the persona prompts the caller to go on
    kinds = client.types(start)
    assert kinds.index("input_audio_buffer.committed") < kinds.index("response.created")
    assert "input_audio_buffer.speech_started" not in kinds


async def test_no_idle_timeout_while_the_caller_speaks(emulator: Emulator, client: Client) -> None:
    """Speech over the greeting (barge-in) leaves the timer disarmed; it counts from the answer's end.

    The idle timeout is set once the server has heard the speech start: until then nothing can fire, so the test
    does not race the timer (wall clock) against the speech reaching the server, however loaded the machine.
    Set then, it arms nothing (no response's audio has ended since the barge-in): the first timeout comes after
    the answer."""
    await client.connect(emulator.base_url, cs_session(turn_detection={"type": "server_vad"}))
    await client.wait_for("session.created")
    line = await _VOICE.speak(f"{FIRST} {SECOND}", "en-us", 165)
    client.send({"type": "response.create"})
    await client.wait_for("output_audio_buffer.started", within=20)
    client.mic.play(line.packets, "mic")  # while the greeting plays: barge-in, then a turn of its own
    speech = await client.wait_for("input_audio_buffer.speech_started", within=20)
    idle = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 1500}}}}
    client.send({"type": "session.update", "session": idle})
    await client.wait_for("session.updated", start=client.events.index(speech))
    answer = await client.wait_for("response.function_call_arguments.done", within=20, name="lookup_order")
    timeout = await client.wait_for("input_audio_buffer.timeout_triggered", within=20)
    assert client.events.index(speech) < client.events.index(answer) < client.events.index(timeout)
    done = [e for e in client.events[: client.events.index(timeout)] if e["type"] == "response.done"]
    assert timeout["audio_start_ms"] > speech["audio_start_ms"] and len(done) == 2


@pytest.mark.parametrize(("eagerness", "turns"), [("high", 2), ("low", 1)])
async def test_semantic_vad_eagerness_decides_if_a_pause_ends_the_turn(
    emulator: Emulator, client: Client, eagerness: str, turns: int
) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    semantic = {"type": "semantic_vad", "eagerness": eagerness}
    update = {"type": "realtime", "audio": {"input": {"turn_detection": semantic}}}
    client.send({"type": "session.update", "session": update})
    updated = await client.wait_for("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": eagerness, "create_response": True, "interrupt_response": True,
    }
    a = await _VOICE.speak(FIRST, "en-us", 165)
    b = await _VOICE.speak(SECOND, "en-us", 165)
    # espeak's own trailing and leading silence make this pause about 0.6 s: over high's 250 ms, under low's 1 s
    client.mic.play([*a.packets, *[_VOICE.silence_packet] * 10, *b.packets], "mic")
    heard = [await client.wait_for("conversation.item.input_audio_transcription.completed", within=30)]
    if turns == 2:
        start = client.events.index(heard[0]) + 1
        kind = "conversation.item.input_audio_transcription.completed"
        heard.append(await client.wait_for(kind, start=start, within=30))
    stops = [e for e in client.events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(stops) == turns
    if turns == 1:
        assert heard[0]["transcript"] == normalize_phrase(f"{FIRST} {SECOND}")  # one turn: the whole line


@pytest.mark.parametrize("model", ["gpt-4o-mini-transcribe", "whisper-1"])
async def test_input_transcription_deltas_come_before_completed(emulator: Emulator, client: Client, model: str) -> None:
    await client.connect(emulator.base_url, cs_session(transcription={"model": model}))
    await client.wait_for("session.created")
    await client.say(f"{FIRST} {SECOND}")
    completed = await client.wait_for("conversation.item.input_audio_transcription.completed", within=20)
    end = client.events.index(completed)
    deltas = [
        e for e in client.events[:end]
        if e["type"] == "conversation.item.input_audio_transcription.delta" and e["item_id"] == completed["item_id"]
    ]
    assert "".join(d["delta"] for d in deltas) == completed["transcript"] == normalize_phrase(f"{FIRST} {SECOND}")
    assert len(deltas) == 1 if model == "whisper-1" else len(deltas) > 1  # whisper-1: the whole transcript at once


async def test_rate_limits_updated_as_each_response_starts(emulator: Emulator, client: Client) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    limits = []
    for _ in range(2):
        start = len(client.events)
        client.send({"type": "response.create"})
        done = await client.wait_for("response.done", start=start, within=20)
        kinds = client.types(start)
        assert kinds[:2] == ["response.created", "rate_limits.updated"]
        (entry,) = client.events[start + 1]["rate_limits"]
        assert entry["name"] == "tokens" and entry["reset_seconds"] > 0
        # The start reserves the input and the output budget (4096 for max_output_tokens "inf").
        assert entry["remaining"] < entry["limit"] - 4096  # the instructions alone are input tokens
        assert done["response"]["usage"]["input_tokens"] > 0
        limits.append(entry)
    assert limits[1]["remaining"] < limits[0]["remaining"]  # the first response's tokens still count


async def test_idle_timeout_over_the_websocket_counts_from_the_last_audio_delta(emulator: Emulator) -> None:
    sdk = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0)
    ws = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
    try:
        await ws.wait_for("session.created")
        session = cs_session(turn_detection={"type": "server_vad", "idle_timeout_ms": 800})
        await ws.send({"type": "session.update", "session": session})
        await ws.wait_for("session.updated")
        await ws.send({"type": "response.create"})
        timeout = await ws.wait_for("input_audio_buffer.timeout_triggered", within=20)
        kinds = ws.types()
        last_delta = max(i for i, k in enumerate(kinds) if k == "response.output_audio.delta")
        assert last_delta < kinds.index("input_audio_buffer.timeout_triggered")
        # Nothing was appended: the input audio clock stood still, so the idle segment is empty.
        assert timeout["audio_start_ms"] == timeout["audio_end_ms"] == 0
        await ws.wait_for("input_audio_buffer.committed", item_id=timeout["item_id"])
        after = kinds.index("input_audio_buffer.timeout_triggered")
        said = await ws.wait_for("response.output_audio_transcript.done", start=after, within=20)
        assert said["transcript"] == GENERIC_REPLY
    finally:
        await ws.close()
        await sdk.close()

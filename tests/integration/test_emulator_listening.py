"""Over real WebRTC: a session decodes nothing of a silent peer, and still hears a line after it from its start."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import Client, cs_session
from voicebridge.emulator.listening import may_hold_speech
from voicebridge.emulator.server import Emulator
from voicebridge.media.passthrough import RtpAudio
from voicebridge.scenarios import normalize_phrase

pytestmark = pytest.mark.integration

LINE = "Hello, my order has not arrived. The order number is four two one seven."
SILENCE_PACKETS = 100  # 2 s of the peer's silence (3-byte Opus packets, 20 ms each)


async def test_silence_is_not_decoded_and_speech_after_it_is_heard_from_its_first_syllable(
    emulator: Emulator, client: Client
) -> None:
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    session = emulator.sessions[client.call_id]
    assert session.tap is not None and session.listener is not None
    listener = session.listener
    loop = asyncio.get_running_loop()
    silent_enough: asyncio.Future[None] = loop.create_future()
    speech_at: asyncio.Future[int] = loop.create_future()

    def watch(audio: RtpAudio) -> None:  # runs after the session's own subscriber: the packet is counted
        if listener.packets >= SILENCE_PACKETS and not silent_enough.done():
            silent_enough.set_result(None)
        if may_hold_speech(audio.payload) and not speech_at.done():
            # Where the line starts on the session's audio clock: every packet before it is 20 ms of audio.
            speech_at.set_result((listener.packets - 1) * 20)

    session.tap.subscribe(watch)
    await asyncio.wait_for(silent_enough, 15)
    assert listener.decoded == 0  # 2 s of silence heard, not one packet decoded
    assert not speech_at.done()

    start = len(client.events)
    await client.say(LINE)
    completed = await client.wait_for(
        "conversation.item.input_audio_transcription.completed", start=start, within=20
    )
    assert completed["transcript"] == normalize_phrase(LINE)
    speech = await client.wait_for("input_audio_buffer.speech_started", start=start)
    line_ms = await speech_at
    assert line_ms >= SILENCE_PACKETS * 20
    # Backdated by the 300 ms of padding from where the speech begins (espeak leads with a little silence).
    assert line_ms - 300 - 20 <= speech["audio_start_ms"] <= line_ms - 300 + 200
    # Only the ring before the line (padding, start window, margin: 600 ms) was decoded of the silence.
    assert listener.skipped >= line_ms // 20 - 30

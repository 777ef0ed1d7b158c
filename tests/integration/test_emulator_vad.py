"""The server VAD over real WebRTC: what starts a turn and what does not."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.conftest import Client, cs_session
from tests.unit.test_voicing import chromium_beeps
from voicebridge.emulator.server import Emulator
from voicebridge.emulator.voice import encode_pcm48k_stereo

pytestmark = pytest.mark.integration


async def test_chromium_fake_microphone_beeps_do_not_interrupt_a_response(emulator: Emulator, client: Client) -> None:
    """Chromium's fake microphone beeps (20 ms every 500 ms) all through the agent's greeting: no turn, no
    barge-in; the greeting plays to its end. Then real speech still starts a turn."""
    await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    client.send({"type": "response.create"})
    started = await client.wait_for("output_audio_buffer.started")
    beeps = client.mic.play(encode_pcm48k_stereo(np.repeat(chromium_beeps(8), 2)), "beeps")
    stopped = await client.wait_for("output_audio_buffer.stopped", within=20)
    assert stopped["response_id"] == started["response_id"]
    assert await beeps.finished  # all 8 s of beeps were sent, past the end of the greeting
    done = next(e for e in client.events if e["type"] == "response.done")
    assert done["response"]["status"] == "completed"

    start = len(client.events)
    await client.say("Hello, my order has not arrived. The order number is four two one seven.")
    speech = await client.wait_for("input_audio_buffer.speech_started", start=start, within=20)
    kinds = client.types()
    # The first turn of the call is the line, not a beep: nothing was started, cancelled, truncated or cleared.
    assert kinds.index("input_audio_buffer.speech_started") == client.events.index(speech)
    for kind in ("conversation.item.truncated", "output_audio_buffer.cleared"):
        assert kind not in kinds
    assert speech["audio_start_ms"] >= 8000 - 300  # after the beeps (less the prefix padding)

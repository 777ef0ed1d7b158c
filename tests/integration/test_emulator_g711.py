"""G.711 on the emulator's WebSocket transport, as a telephony bridge uses it.

The openai SDK's own realtime client sets `audio/pcmu` (or `audio/pcma`) in and out, appends espeak speech
encoded to 8 kHz G.711 by an independent reference encoder (tests/unit/test_audio_formats.py), and the persona
hears its phrase and answers in G.711 deltas whose decoded audio is the line: loud where the line is loud, and
recognisable. Every server event is validated strictly against the SDK's types (WsClient).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
from openai import AsyncOpenAI

from tests.integration.conftest import _VOICE, LATE_ORDER
from tests.integration.test_ws_emulator import WsClient
from tests.unit.test_audio_formats import REFERENCE
from voicebridge.emulator.hearing import recognizer_for
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import normalize_phrase

pytestmark = pytest.mark.integration
RATE = 8000
FRAME = RATE // 50  # 20 ms


def _resample(frames: Sequence[Any], rate: int) -> npt.NDArray[np.int16]:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = [f.to_ndarray().reshape(-1) for frame in frames for f in resampler.resample(frame)]
    return np.concatenate(out).astype(np.int16)


async def line_at_8k(text: str, espeak_voice: str, speed: int) -> npt.NDArray[np.int16]:
    """A line as the emulator speaks it (espeak -> cached Opus), decoded and resampled to 8 kHz mono."""
    utterance = await _VOICE.speak(text, espeak_voice, speed)
    decoder = av.CodecContext.create("opus", "r")
    frames = [f for p in utterance.packets for f in decoder.decode(av.Packet(p))]  # type: ignore[attr-defined]
    return _resample(frames, RATE)


def to_16k(pcm8k: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    frame = av.AudioFrame.from_ndarray(pcm8k.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    return _resample([frame], 16000)


def envelope(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.float64]:
    """RMS of each 20 ms frame."""
    n = len(pcm) // FRAME
    return np.sqrt((pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME) ** 2).mean(axis=1))


@pytest.mark.parametrize("kind", ["audio/pcmu", "audio/pcma"])
async def test_g711_speech_is_heard_and_answered_in_g711(emulator: Emulator, kind: str) -> None:
    encode, decode = REFERENCE[kind]
    cs, caller = LATE_ORDER.cs, LATE_ORDER.caller
    sdk = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0)
    ws = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
    try:
        await ws.wait_for("session.created")
        await ws.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": caller.instructions,
                    "audio": {
                        "input": {"format": {"type": kind}, "transcription": {"model": "gpt-4o-mini-transcribe"}},
                        "output": {"format": {"type": kind}},
                    },
                },
            }
        )
        audio = (await ws.wait_for("session.updated"))["session"]["audio"]
        assert audio["input"]["format"] == {"type": kind} and audio["output"]["format"] == {"type": kind}

        # The CS greeting, as a telephony bridge would send it: 8 kHz G.711, 100 ms an event, then 1 s of silence.
        greeting = cs.script[0].say or ""
        pcm = np.concatenate([await line_at_8k(greeting, cs.espeak_voice, cs.espeak_speed), np.zeros(RATE, np.int16)])
        g711 = encode(pcm).tobytes()
        start = len(ws.events)
        for i in range(0, len(g711), 800):
            await ws.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(g711[i : i + 800]).decode()})
        heard = await ws.wait_for("conversation.item.input_audio_transcription.completed", start=start, within=30)
        assert normalize_phrase(heard["transcript"]) == normalize_phrase(greeting)

        done = await ws.wait_for("response.done", start=start, within=30)
        assert done["response"]["status"] == "completed"
        assert done["response"]["audio"]["output"]["format"] == {"type": kind}
        reply = caller.script[0].say or ""
        deltas = [e for e in ws.events[start:] if e["type"] == "response.output_audio.delta"]
        assert {d["response_id"] for d in deltas} == {done["response"]["id"]}
        raw = b"".join(base64.b64decode(d["delta"]) for d in deltas)
        assert abs(len(raw) - FRAME * len(deltas)) <= FRAME  # 8 kHz, one byte a sample, 20 ms a delta
        out = decode(np.frombuffer(raw, dtype=np.uint8))

        # Loud where the line is loud: the same envelope as the line itself, frame by frame.
        expected = envelope(await line_at_8k(reply, caller.espeak_voice, caller.espeak_speed))
        got = envelope(out)
        n = min(len(expected), len(got))
        assert n > 0.9 * len(expected)
        assert np.corrcoef(expected[:n], got[:n])[0, 1] > 0.95
        loud = expected[:n] > 1000
        assert loud.sum() > n // 4 and (got[:n][loud] > 0.5 * expected[:n][loud]).all()
        # ... and it is the line: the recognizer, given both of the caller's phrases, hears this one.
        phrases = [normalize_phrase(reply), normalize_phrase(caller.script[1].say or "")]
        assert recognizer_for(phrases).transcribe(to_16k(out)) == phrases[0]
    finally:
        await ws.close()
        await sdk.close()


async def test_a_responses_own_output_format_applies_to_its_audio(emulator: Emulator) -> None:
    """A PCM16 session; one response asks for μ-law: its deltas are 8 kHz G.711, the session stays PCM16."""
    _, decode = REFERENCE["audio/pcmu"]
    sdk = AsyncOpenAI(base_url=emulator.base_url, api_key="sk-test", max_retries=0)
    ws = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
    try:
        await ws.wait_for("session.created")
        session = {"type": "realtime", "instructions": LATE_ORDER.cs.instructions}
        await ws.send({"type": "session.update", "session": session})
        updated = await ws.wait_for("session.updated")
        assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
        start = len(ws.events)
        pcmu = {"output": {"format": {"type": "audio/pcmu"}}}
        await ws.send({"type": "response.create", "response": {"audio": pcmu}})
        done = await ws.wait_for("response.done", start=start, within=30)
        assert done["response"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        deltas = [e["delta"] for e in ws.events[start:] if e["type"] == "response.output_audio.delta"]
        raw = b"".join(base64.b64decode(d) for d in deltas)
        assert abs(len(raw) - FRAME * len(deltas)) <= FRAME  # one byte a sample at 8 kHz, not PCM16 at 24 kHz
        assert np.abs(decode(np.frombuffer(raw, dtype=np.uint8))).max() > 3000
    finally:
        await ws.close()
        await sdk.close()

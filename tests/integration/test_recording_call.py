"""The call recording on real calls against the emulator: every party's Opus as received, muxed into WebM,
plus recording.wav (caller left, CS right) on the call's timeline, finalised on every end.

The checks: PyAV reads each file and finds Opus in it; in the WAV, the speaker's channel holds speech and the
other channel is quiet wherever the transcript says one party spoke; both are quiet between turns; a call that
ends with leg_failed still leaves finished, readable files listed in summary.json.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.conftest import StartEmulator
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration

MARGIN_S = 0.25  # transcript times are when a leg started/stopped sending; packets reach the bridge just after
LOUD = 0.02  # RMS of espeak speech is ~0.1; decoded Opus silence is exactly 0


def read_wav(path: Path) -> tuple[int, np.ndarray[Any, np.dtype[np.float32]]]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return rate, pcm.astype(np.float32) / 32768.0


def rms(stereo: np.ndarray[Any, np.dtype[np.float32]], rate: int, start: float, end: float) -> tuple[float, float]:
    part = stereo[int(start * rate) : int(end * rate)]
    assert len(part) > rate // 10, f"window {start:.2f}-{end:.2f} s is outside the recording"
    left, right = (float(np.sqrt(np.mean(part[:, ch] ** 2))) for ch in (0, 1))
    return left, right


def opus_packets(path: Path) -> tuple[int, int]:
    """(packets, payload bytes) in a recording; also decodes it all, which must work."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        sizes = [p.size for p in container.demux(audio=0) if p.size > 0]
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(audio=0))
    assert frames == len(sizes) > 0
    return len(sizes), sum(sizes)


async def test_a_demo_call_is_recorded_per_party_and_in_a_stereo_wav(emulator: Emulator, tmp_path: Path) -> None:
    folder = tmp_path / "call"
    call = Call(load_scenario("late_order"), Settings(base_url=emulator.base_url, hangup_drain_timeout_s=8.0), folder)
    await call.start()
    await call.wait_ended(90)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["end_reason"] == "caller_hangup"
    files = summary["artifacts"]
    assert files["recording_caller"] == "caller.webm" and files["recording_cs"] == "cs.webm"
    assert files["recording_wav"] == "recording.wav"
    for name in files.values():
        assert (folder / name).is_file(), f"summary.json lists {name}, which is not in the call's folder"

    relay = summary["relay"]
    # Every packet the relay forwarded from a party is in that party's file, as it was (same count and bytes).
    for party, direction in (("caller", "caller_to_cs"), ("cs", "cs_to_caller")):
        forwarded = relay[direction]
        assert forwarded["dropped"] == 0
        assert opus_packets(folder / f"{party}.webm") == (forwarded["packets"], forwarded["bytes"])

    rate, stereo = read_wav(folder / "recording.wav")
    said = sorted(summary["turns"], key=lambda t: t["start"])
    assert [t["speaker"] for t in said] == ["cs", "caller", "cs", "caller"]
    for turn in said:
        left, right = rms(stereo, rate, turn["start"] + MARGIN_S, turn["end"] - MARGIN_S)
        speaker, other = (left, right) if turn["speaker"] == "caller" else (right, left)
        assert speaker > LOUD, f"{turn['speaker']} said {turn['text']!r} but its channel is quiet ({speaker:.4f})"
        assert other < speaker / 10, f"while {turn['speaker']} spoke the other channel was not quiet"
    for before, after in itertools.pairwise(said):
        if after["start"] - before["end"] > 2 * MARGIN_S + 0.2:
            left, right = rms(stereo, rate, before["end"] + MARGIN_S, after["start"] - MARGIN_S)
            assert left < LOUD / 4 and right < LOUD / 4, f"between turns at {before['end']:.2f} s: not quiet"


SHORT = """
name = "rec_short"
first_speaker = "cs"
max_duration_s = 60
idle_timeout_s = 30

[caller]
instructions = "You are a caller in the recording test."

[cs]
instructions = "You are the help desk in the recording test."
[[cs.script]]
on = "start"
say = "Hello, this is the help desk. Please hold on while I look at your account in detail."
"""


async def test_a_call_ended_by_a_failed_leg_still_has_finished_recordings(
    tmp_path: Path, start_emulator: StartEmulator
) -> None:
    scenario_file = tmp_path / "rec_short.toml"
    scenario_file.write_text(SHORT)
    emu = await start_emulator(scenarios=[scenario_file], load_builtin=False)
    folder = tmp_path / "call"
    call = Call(load_scenario(scenario_file), Settings(base_url=emu.base_url), folder)
    spoken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    speech_packets = [0]

    def on_packet(party: str, pkt: Any) -> None:
        if party == "cs" and len(pkt.payload) > 10:
            speech_packets[0] += 1
            if speech_packets[0] >= 50 and not spoken.done():
                spoken.set_result(None)

    await call.start()
    call.relay.on_packet(on_packet)
    await asyncio.wait_for(spoken, 30)  # a second of the greeting went through the relay
    await emu.sessions[call.legs["cs"].call_id].close("dropped by the test")
    await call.wait_ended(30)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["end_reason"] == "leg_failed"
    assert summary["artifacts"]["recording_cs"] == "cs.webm"
    assert opus_packets(folder / "cs.webm")[0] > 50  # more than a second of the greeting, readable
    rate, stereo = read_wav(folder / summary["artifacts"]["recording_wav"])
    half = rate // 2
    loudest = max(
        float(np.sqrt(np.mean(stereo[i : i + half, 1] ** 2))) for i in range(0, len(stereo) - half, half)
    )
    assert loudest > LOUD, "the greeting is not in the CS channel of recording.wav"
    assert float(np.abs(stereo[:, 0]).max()) == 0.0  # the caller agent never spoke

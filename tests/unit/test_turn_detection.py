"""turn_detection settings (server_vad, semantic_vad eagerness), the idle timer and the token bucket."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.unit.test_hearing import Turns
from tests.unit.test_voicing import silence, speech, through_opus
from voicebridge.emulator.hearing import VadSettings
from voicebridge.emulator.rate_limits import OUTPUT_RESERVE_INF, TokenBucket, output_reserve
from voicebridge.emulator.schema import ApiError
from voicebridge.emulator.turn_detection import (
    IdleTimer,
    idle_timeout_ms,
    vad_settings,
    with_defaults,
)

pytestmark = pytest.mark.unit


def test_semantic_eagerness_sets_the_end_of_turn_silence() -> None:
    eagerness = ("low", "medium", "auto", "high")
    waits = {e: vad_settings({"type": "semantic_vad", "eagerness": e}).silence_duration_ms for e in eagerness}
    assert waits == {"low": 1000, "medium": 500, "auto": 500, "high": 250}
    assert vad_settings({"type": "semantic_vad"}).silence_duration_ms == 500  # auto
    assert vad_settings({"type": "semantic_vad"}) == VadSettings(0.5, prefix_padding_ms=300, silence_duration_ms=500)
    server = vad_settings(
        {"type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 100, "silence_duration_ms": 900}
    )
    assert server == VadSettings(threshold=0.7, prefix_padding_ms=100, silence_duration_ms=900)
    assert vad_settings(None) == VadSettings()
    with pytest.raises(ApiError) as info:
        vad_settings({"type": "server_vad", "silence_duration_ms": 60_000})
    assert info.value.param == "session.audio.input.turn_detection"


def test_defaults_and_idle_timeout_by_type() -> None:
    assert with_defaults({"type": "semantic_vad", "eagerness": "high"}) == {
        "type": "semantic_vad", "eagerness": "high", "create_response": True, "interrupt_response": True,
    }
    assert with_defaults({"type": "server_vad"})["silence_duration_ms"] == 500
    assert idle_timeout_ms({"type": "server_vad", "idle_timeout_ms": 5000}) == 5000
    assert idle_timeout_ms({"type": "server_vad", "idle_timeout_ms": None}) is None
    assert idle_timeout_ms({"type": "semantic_vad", "idle_timeout_ms": 5000}) is None  # server_vad only
    assert idle_timeout_ms(None) is None


def _trimmed(pcm: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    """Without espeak's leading and trailing silence, so the gap between two lines is exactly the one made."""
    loud = np.flatnonzero(np.abs(pcm) > 200)
    return pcm[loud[0] : loud[-1] + 1]


async def _two_lines(gap_ms: int) -> list[object]:
    a = _trimmed(await speech("Hello, my order has not arrived."))
    b = _trimmed(await speech("The order number is four two one seven."))
    return through_opus(np.concatenate([silence(300), a, silence(gap_ms), b]))


@pytest.mark.parametrize(
    ("eagerness", "gap_ms", "turns"),
    [("high", 300, 2), ("medium", 300, 1), ("auto", 300, 1), ("medium", 750, 2), ("low", 750, 1)],
)
async def test_eagerness_decides_whether_a_pause_ends_the_turn(eagerness: str, gap_ms: int, turns: int) -> None:
    heard = Turns()
    ear = heard.ear(vad_settings({"type": "semantic_vad", "eagerness": eagerness}))
    for frame in await _two_lines(gap_ms) + through_opus(silence(1500)):
        ear.feed(frame)  # type: ignore[arg-type]
    assert len(heard.started) == turns and len(heard.stopped) == turns
    wait = {"high": 260, "medium": 500, "auto": 500, "low": 1000}[eagerness]  # in whole 20 ms frames
    assert heard.stopped[-1][0] - ear.speech_end_ms == wait  # the turn ends that long after the speech


async def test_configure_keeps_the_clock_and_the_turn_in_progress() -> None:
    frames = await _two_lines(400)
    heard = Turns()
    ear = heard.ear(VadSettings(silence_duration_ms=250))
    half = len(frames) // 3
    for frame in frames[:half]:
        ear.feed(frame)  # type: ignore[arg-type]
    assert ear.speaking
    before = ear.audio_ms
    ear.configure(VadSettings(silence_duration_ms=1000))  # session.update mid-turn
    assert ear.speaking and ear.audio_ms == before
    for frame in frames[half:] + through_opus(silence(1500)):
        ear.feed(frame)  # type: ignore[arg-type]
    assert len(heard.started) == 1 and len(heard.stopped) == 1  # the 400 ms pause no longer ends it
    assert heard.stopped[0][0] - ear.speech_end_ms == 1000


async def test_idle_timer_fires_from_its_anchor_and_can_be_disarmed() -> None:
    fired: asyncio.Queue[int] = asyncio.Queue()
    timer = IdleTimer(fired.put_nowait)
    timer.anchor(1234, None)  # no timeout configured: nothing is armed, but the anchor is kept
    assert not timer.armed
    timer.rearm(10)  # session.update sets idle_timeout_ms: it counts from the anchor
    assert timer.armed
    assert await asyncio.wait_for(fired.get(), 5) == 1234
    assert not timer.armed
    timer.rearm(10)  # fired once: no anchor until the next response's audio ends
    assert not timer.armed
    timer.anchor(2000, 60_000)
    assert timer.armed
    timer.disarm()  # speech started
    assert not timer.armed
    timer.rearm(10)
    assert not timer.armed and fired.empty()


def test_token_bucket_reserves_settles_and_refills() -> None:
    now = [100.0]
    bucket = TokenBucket(limit=6000, clock=lambda: now[0])
    first = bucket.reserve(1000 + output_reserve(None))
    assert first == {"name": "tokens", "limit": 6000, "remaining": 6000 - 1000 - OUTPUT_RESERVE_INF,
                     "reset_seconds": round((1000 + OUTPUT_RESERVE_INF) / 100, 3)}
    bucket.settle(1000 + OUTPUT_RESERVE_INF, 1200)  # the response used 1200 of its reservation
    now[0] += 6.0  # 600 tokens refilled (6000 a minute)
    second = bucket.reserve(100)
    assert second["remaining"] == 6000 - (1200 - 600) - 100
    assert bucket.reserve(100_000)["remaining"] == 0  # reported, never below zero, never enforced
    assert output_reserve(250) == 250

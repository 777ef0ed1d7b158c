"""The speech track: cached packets out in order, silence between lines, continuous timestamps, and a line
reports "finished" only once the sender has come back for the packet after its last one."""

from __future__ import annotations

import pytest

from voicebridge.emulator.track import FRAME_SAMPLES, SpeechTrack

pytestmark = pytest.mark.unit
SILENCE = b"\xf8\xff\xfe"


async def test_packets_in_order_then_silence_with_continuous_pts() -> None:
    track = SpeechTrack(SILENCE)
    first = track.play([b"a1", b"a2"], "resp_a")
    second = track.play([b"b1"], "resp_b")
    out = [await track.recv() for _ in range(5)]
    assert [bytes(p) for p in out] == [b"a1", b"a2", b"b1", SILENCE, SILENCE]
    assert [p.pts for p in out] == [i * FRAME_SAMPLES for i in range(5)]
    assert first.started.result() is True and first.finished.result() is True
    assert second.finished.result() is True and not track.busy
    track.stop()


async def test_finished_only_after_the_last_packet_was_taken_and_sent() -> None:
    track = SpeechTrack(SILENCE)
    line = track.play([b"x1", b"x2"], "resp")
    await track.recv()
    await track.recv()  # the last packet is handed out, but not yet sent
    assert not line.finished.done()
    await track.recv()  # the sender is back for more: the last packet has left
    assert line.finished.result() is True
    track.stop()


async def test_clear_reports_what_was_heard_and_drops_the_rest() -> None:
    track = SpeechTrack(SILENCE)
    playing = track.play([b"p"] * 10, "resp_1")
    queued = track.play([b"q"] * 5, "resp_2")
    for _ in range(3):
        await track.recv()
    dropped = track.clear()
    assert dropped == [playing, queued]
    assert playing.sent_ms == 60 and playing.finished.result() is False
    assert queued.started.result() is False
    assert bytes(await track.recv()) == SILENCE
    track.stop()


async def test_drop_removes_only_one_responses_audio() -> None:
    track = SpeechTrack(SILENCE)
    keep = track.play([b"k"], "keep")
    gone = track.play([b"g"], "gone")
    assert track.drop("gone") == [gone]
    assert bytes(await track.recv()) == b"k"
    assert not keep.finished.done()
    track.stop()
    assert keep.finished.result() is True

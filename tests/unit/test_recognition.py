"""Recognition in worker processes (emulator/recognition.py): the same transcripts as in this process, errors
carried back, and a worker that dies costs that turn a thread, never its transcript."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from tests.unit.test_hearing import GREETING, ORDER, PHRASES, VOICE, decode, pcm16k, silence
from voicebridge.emulator.hearing import HearingError, recognizer_for
from voicebridge.emulator.recognition import Recognition
from voicebridge.scenarios import normalize_phrase

pytestmark = pytest.mark.unit


async def test_a_worker_hears_what_this_process_hears_and_a_dead_worker_is_replaced() -> None:
    rec = Recognition(workers=1)
    try:
        line = list((await VOICE.speak(GREETING)).packets)
        greeting = pcm16k(decode(silence(300) + line + silence(300)))
        other = pcm16k(decode((await VOICE.speak("The weather is lovely in Paris this time of year.")).packets))
        await rec.warm(PHRASES)
        assert await rec.transcribe(PHRASES, greeting) == normalize_phrase(GREETING)
        assert await rec.transcribe(PHRASES, other) is None  # outside the grammar, as in this process
        assert recognizer_for(PHRASES).transcribe(other) is None
        assert rec.jobs == 2 and rec.fallbacks == 0
        with pytest.raises(HearingError, match="int16"):  # raised in the worker, carried back as it is
            await rec.transcribe(PHRASES, np.zeros(320, dtype=np.float32))  # type: ignore[arg-type]

        pool = rec._pool(0)
        (pid,) = list(pool._processes)  # the worker that has the grammar loaded
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        order = pcm16k(decode(list((await VOICE.speak(ORDER)).packets)))
        assert await rec.transcribe(PHRASES, order) == normalize_phrase(ORDER)  # in a thread, this once
        assert rec.fallbacks == 1
        again = pcm16k(decode(silence(200) + line + silence(300)))  # other samples: not one already recognised
        assert await rec.transcribe(PHRASES, again) == normalize_phrase(GREETING)  # a new worker
        assert rec._pool(0) is not pool and rec.jobs == 3
    finally:
        rec.shutdown()


async def test_in_process_recognition_is_the_old_way() -> None:
    rec = Recognition(workers=1)
    Recognition.in_process = True
    try:
        greeting = pcm16k(decode(list((await VOICE.speak(GREETING)).packets)))
        assert await rec.transcribe(PHRASES, greeting) == normalize_phrase(GREETING)
        assert rec.jobs == 0 and rec._pools == [None]  # no worker was started
    finally:
        Recognition.in_process = False
        rec.shutdown()


async def test_where_no_worker_may_start_recognition_stays_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemonic process (the bench's old emulator processes) may not have children: threads, not a failure."""
    import multiprocessing

    monkeypatch.setitem(multiprocessing.current_process()._config, "daemon", True)  # type: ignore[attr-defined]
    rec = Recognition(workers=1)
    try:
        greeting = pcm16k(decode(list((await VOICE.speak(GREETING)).packets)))
        await rec.warm(PHRASES)
        assert await rec.transcribe(PHRASES, greeting) == normalize_phrase(GREETING)
        assert rec.no_workers is not None and "daemonic" in rec.no_workers
        assert rec.jobs == 0 and rec._pools == [None]
    finally:
        rec.shutdown()


async def test_a_turn_with_the_samples_of_one_already_recognised_is_not_recognised_again() -> None:
    """Offline calls repeat their audio to the sample (one encoding of each line, relayed as it is): such a turn gets
    the transcript pocketsphinx gave the first time, or its refusal, without a worker; other samples are recognised."""
    rec = Recognition(workers=1)
    try:
        line = list((await VOICE.speak(GREETING)).packets)
        greeting = pcm16k(decode(silence(300) + line + silence(300)))
        other = pcm16k(decode((await VOICE.speak("The weather is lovely in Paris this time of year.")).packets))
        await rec.warm(PHRASES)
        assert await rec.transcribe(PHRASES, greeting) == normalize_phrase(GREETING)
        assert await rec.transcribe(PHRASES, greeting.copy()) == normalize_phrase(GREETING)
        assert (rec.jobs, rec.remembered) == (1, 1)
        assert await rec.transcribe(PHRASES, other) is None
        assert await rec.transcribe(PHRASES, other) is None  # a refusal is remembered too: still refused
        assert (rec.jobs, rec.remembered) == (2, 2)
        shifted = pcm16k(decode(silence(320) + line + silence(280)))  # the same line 20 ms later: other samples
        assert await rec.transcribe(PHRASES, shifted) == normalize_phrase(GREETING)
        assert await rec.transcribe(PHRASES[:2], greeting) == normalize_phrase(GREETING)  # another grammar
        assert (rec.jobs, rec.remembered) == (4, 2)
        nudged = greeting.copy()
        nudged[len(nudged) // 2] ^= 1  # one sample's lowest bit
        await rec.transcribe(PHRASES, nudged)
        assert (rec.jobs, rec.remembered) == (5, 2)

        rec.remember = 2  # the least recently heard are forgotten first
        await rec.transcribe(PHRASES, pcm16k(decode(silence(340) + line + silence(260))))
        assert (rec.jobs, rec.remembered) == (6, 2)
        await rec.transcribe(PHRASES, greeting)  # forgotten: recognised again
        assert (rec.jobs, rec.remembered, len(rec._heard)) == (7, 2, 2)

        rec.remember = 0  # off (the bench's `hearing, new audio`): a turn remembered goes to pocketsphinx again
        assert await rec.transcribe(PHRASES, greeting) == normalize_phrase(GREETING)
        assert await rec.transcribe(PHRASES, greeting.copy()) == normalize_phrase(GREETING)
        assert (rec.jobs, rec.remembered) == (9, 2)
        rec.remember = 2  # on again: what it remembered is still there
        assert await rec.transcribe(PHRASES, greeting) == normalize_phrase(GREETING)
        assert (rec.jobs, rec.remembered) == (9, 3)
    finally:
        rec.shutdown()

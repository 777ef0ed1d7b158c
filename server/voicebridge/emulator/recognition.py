"""Speech recognition off the emulator's process: pocketsphinx in worker processes.

pocketsphinx holds the GIL for a whole utterance (`process_raw` does not release it: measured, a thread running it
leaves the event loop's thread nothing for 60 ms per 5 s of speech on a quiet core, far longer on a loaded one), so
recognising in a thread still stalls the event loop that paces every session's audio and events. Each worker is a
process of its own (spawned, one job at a time) that keeps its recognizers warm (hearing.recognizer_for's cache);
a turn goes to the worker with the fewest jobs in flight, and a persona's grammar is loaded in every worker when its
session starts, so no turn waits for a grammar load. The audio and the phrases go over a pipe (~150 KB for 5 s of
speech at 16 kHz); the transcript comes back. A worker that dies is replaced, and that turn is recognised in a
thread instead, so a crash costs latency, never a transcript. Where no worker can be started (a daemonic process
may not have children; or spawning fails), recognition stays in threads of this process, said once in the log.

`Recognition.in_process = True` recognises in threads of this process, as before (the bench's baseline).

Each process remembers what its recognizers made of the last REMEMBER turns, by grammar and a digest of the audio:
a turn whose samples are exactly those of one already recognised gets that transcript (or that refusal) without
pocketsphinx, the pipe or a worker. Offline calls repeat their audio to the sample: a scenario's lines are synthesised
and encoded once, relayed without transcoding, and each listener decodes them from the same silence into the same
turn, so in a batch of calls of one scenario nearly every turn after the first few is one already heard (and each
turn of the bench's looped line). Audio that differs in one sample (a lossy path, a person) is recognised as ever.
The transcript is the one pocketsphinx gave for that audio, so what a session hears does not change.

A worker dies with the process that started it (parent_death.py): ProcessPoolExecutor stops its workers only on an
orderly exit, so a SIGTERMed or killed emulator left them running, holding its stdout and stderr open (whoever
waited for the emulator's output to end waited forever) and a core's worth of memory each.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from hashlib import blake2b
from typing import Any

import numpy as np
import numpy.typing as npt

from voicebridge.parent_death import die_with_parent

from .hearing import phrase_key, recognizer_for

log = logging.getLogger(__name__)

# Beside the emulator's own process; two cores here. A worker of `voicebridge emulator --workers N` gets its share
# of the cores (VOICEBRIDGE_RECOGNITION_WORKERS, set by workers.py).
WORKERS = int(os.environ.get("VOICEBRIDGE_RECOGNITION_WORKERS", "0") or 0) or max(1, min(2, os.cpu_count() or 1))
REMEMBER = 1024  # turns whose transcripts are remembered (a few KiB: a digest and a line each)


def _transcribe(phrases: tuple[str, ...], pcm16k: npt.NDArray[np.int16]) -> str | None:
    """In a worker: recognise one turn."""
    return recognizer_for(phrases).transcribe(pcm16k)


def _warm(phrases: tuple[str, ...]) -> None:
    """In a worker: load this phrase set's recognizer now."""
    recognizer_for(phrases)


class Recognition:
    """The worker processes, started on first use."""

    in_process = False  # True: recognise in threads of this process, as before (the bench's baseline)
    remember = REMEMBER  # 0: recognise every turn, as before (the bench's baseline)

    def __init__(self, workers: int = WORKERS) -> None:
        self._pools: list[ProcessPoolExecutor | None] = [None] * workers
        self._busy = [0] * workers
        self._lock = threading.Lock()
        self._heard: OrderedDict[tuple[tuple[str, ...], bytes], str | None] = OrderedDict()
        self.remembered = 0  # turns answered from what an identical turn was recognised as
        self.jobs = 0  # turns recognised in a worker
        self.fallbacks = 0  # turns recognised in a thread because a worker died
        self.no_workers: str | None = None  # why workers cannot be started here, if they cannot
        self._said = False

    def _pool(self, i: int) -> ProcessPoolExecutor:
        with self._lock:
            pool = self._pools[i]
            if pool is None:
                pool = self._pools[i] = ProcessPoolExecutor(
                    1,
                    mp_context=multiprocessing.get_context("spawn"),
                    # SIGKILL when the thread that spawned it ends: here the emulator's event-loop thread, so
                    # the emulator's end too (parent_death.py).
                    initializer=die_with_parent,
                    initargs=(os.getpid(),),
                )
            return pool

    def _submit(self, i: int, fn: Any, *args: Any) -> asyncio.Future[Any] | None:
        """fn(*args) in worker i, or None when no worker can be started here (then: threads, from now on)."""
        if self.no_workers is None and multiprocessing.current_process().daemon:
            self.no_workers = "a daemonic process may not start processes"
        if self.no_workers is None:
            try:
                return asyncio.wrap_future(self._pool(i).submit(fn, *args))
            except BrokenProcessPool:  # a RuntimeError too, but the caller replaces that worker
                raise
            except (OSError, RuntimeError, AssertionError) as e:  # AssertionError: multiprocessing's own checks
                self.no_workers = f"{type(e).__name__}: {e}"
        if not self._said:
            self._said = True
            log.warning("recognition stays in this process's threads: %s", self.no_workers)
        return None

    def _replace(self, i: int, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pools[i] is broken:
                self._pools[i] = None
        broken.shutdown(wait=False, cancel_futures=True)

    async def transcribe(self, phrases: Sequence[str], pcm16k: npt.NDArray[np.int16]) -> str | None:
        """The recognised words (normalized), or None; raises HearingError as Recognizer.transcribe does."""
        key = phrase_key(phrases)
        if not self.remember or not isinstance(pcm16k, np.ndarray) or pcm16k.dtype != np.int16:
            return await self._recognise(key, pcm16k)
        turn = (key, blake2b(pcm16k.tobytes(), digest_size=16).digest() + len(pcm16k).to_bytes(8, "little"))
        if turn in self._heard:
            self._heard.move_to_end(turn)
            self.remembered += 1
            return self._heard[turn]
        text = await self._recognise(key, pcm16k)
        self._heard[turn] = text
        while len(self._heard) > self.remember:
            self._heard.popitem(last=False)
        return text

    async def _recognise(self, key: tuple[str, ...], pcm16k: npt.NDArray[np.int16]) -> str | None:
        if self.in_process:
            return await asyncio.to_thread(_transcribe, key, pcm16k)
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        pool = self._pools[i]
        try:
            job = self._submit(i, _transcribe, key, pcm16k)
            if job is None:
                return await asyncio.to_thread(_transcribe, key, pcm16k)
            pool = self._pools[i]
            text: str | None = await job
            self.jobs += 1
            return text
        except BrokenProcessPool:
            log.warning("a recognition worker died; recognising this turn in a thread and starting another")
            if pool is not None:
                self._replace(i, pool)
            self.fallbacks += 1
            return await asyncio.to_thread(_transcribe, key, pcm16k)
        finally:
            self._busy[i] -= 1

    async def warm(self, phrases: Sequence[str]) -> None:
        """Load the phrase set's recognizer in every worker (in this process, for `in_process`)."""
        key = phrase_key(phrases)
        if self.in_process:
            await asyncio.to_thread(_warm, key)
            return
        # Every worker's job is submitted before any is awaited: a session closed during the first worker's grammar
        # load (its task cancelled) must not leave the others unstarted, to be spawned by a later session instead.
        jobs: list[tuple[int, ProcessPoolExecutor | None, asyncio.Future[Any]]] = []
        for i in range(len(self._pools)):
            job = self._submit(i, _warm, key)
            if job is None:
                await asyncio.to_thread(_warm, key)
                return
            jobs.append((i, self._pools[i], job))
        for i, pool, job in jobs:
            try:
                await job
            except BrokenProcessPool:
                if pool is not None:
                    self._replace(i, pool)

    def shutdown(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, [None] * len(self._pools)
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


_shared: Recognition | None = None
_shared_lock = threading.Lock()


def shared() -> Recognition:
    """This process's recognition workers, shared by every emulator in it (like the recognizers' cache)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Recognition()
            atexit.register(_shared.shutdown)
        return _shared

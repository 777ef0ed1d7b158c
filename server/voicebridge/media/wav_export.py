"""recording.wav: a call's WebM recordings decoded into one stereo WAV, in worker processes off the bridge's.

Why other processes: decoding both parties' Opus and writing the WAV costs about 0.17 s of CPU per 18 s call.
In a thread of the bridge's process it holds the GIL against the relay's event loop; 50 calls of a batch ending
together put ~8.5 s of it on the one core the live calls' packets depend on. ``ExportPool`` runs it in a few
worker processes at a lower CPU priority (``os.nice``), so live media (the bridge's relay, the emulator's
sessions) wins the cores and the export takes what is left.

The pool is made on first use and shared by the process (serve's bridge workers each get their own). Its workers
are spawned, not forked: the bridge has threads and an event loop whose locks a forked child would inherit. They
import this module only (PyAV, numpy), not the bridge; as in every spawned process, Python re-imports the
parent's main script in them, so a script that runs calls needs the ``if __name__ == "__main__":`` guard.
The export only reads the WebM files: whatever goes wrong (a broken file, a worker killed), the files stay as they
are. A worker that dies breaks its pool: the export is tried once more in a fresh pool, then in a thread of this
process; an export that fails is the caller's to report.
Workers die with the bridge (parent_death.py): a killed bridge leaves none behind.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import wave
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np

from voicebridge.parent_death import die_with_parent

log = logging.getLogger(__name__)

RATE = 48000
LEFT_PARTIES = ("caller", "human")
RIGHT_PARTIES = ("cs",)
WORKERS = 2  # at most: the machine's cores are for the live calls; exports of a burst of ends queue up
NICE = 10  # added to the workers' niceness: a live packet wins the CPU over an export

T = TypeVar("T")


def read_party(path: Path | str) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Decode one recording to mono float32 at 48 kHz, placed on the call's timeline (silence in the gaps)."""
    chunks: list[tuple[int, np.ndarray[Any, np.dtype[np.float32]]]] = []
    resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            start = round(float(frame.time or 0.0) * RATE)
            for mono in resampler.resample(frame):
                chunks.append((start, mono.to_ndarray().reshape(-1).astype(np.float32)))
                start += mono.samples
    end = max((s + len(c) for s, c in chunks), default=0)
    track = np.zeros(end, dtype=np.float32)
    for start, chunk in chunks:
        track[start : start + len(chunk)] += chunk
    return track


def export_wav(recordings: Mapping[str, Path | str], out: Path | str) -> Path:
    """Stereo 16-bit 48 kHz WAV of a call: caller + human left, CS right, on one timeline."""
    unknown = set(recordings) - set(LEFT_PARTIES) - set(RIGHT_PARTIES)
    if unknown:
        raise ValueError(f"export_wav: unknown parties {sorted(unknown)} (expected caller, human, cs)")
    missing = [str(p) for p in recordings.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"export_wav: recording files not found: {missing}")
    decoded = {party: read_party(path) for party, path in recordings.items()}
    length = max((len(a) for a in decoded.values()), default=0)
    stereo = np.zeros((length, 2), dtype=np.float32)
    for party, audio in decoded.items():
        stereo[: len(audio), 0 if party in LEFT_PARTIES else 1] += audio
    pcm = (np.clip(stereo, -1.0, 1.0) * 32767).astype("<i2")
    out = Path(out)
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm.tobytes())
    return out


def _init_worker(parent: int, increment: int) -> None:
    """A worker's initializer: die with the bridge (parent_death.py) and be the first to yield the CPU."""
    die_with_parent(parent)
    try:
        os.nice(increment)
    except OSError:  # not allowed here: the export still works, at the normal priority
        pass


class ExportPool:
    """Worker processes for end-of-call exports, made on first use; ``run`` awaits one job in them.

    Where no worker can be started (a daemonic process may not have children; a worker that cannot start, e.g. a
    script without the ``if __name__ == "__main__":`` guard that spawned processes need, dies twice in a row), jobs
    run in a thread of this process, as before the pool, and a warning says why once."""

    def __init__(self, workers: int | None = None, nice: int = NICE) -> None:
        self.workers = workers or max(1, min(WORKERS, os.cpu_count() or 1))
        self.nice = nice
        self._lock = threading.Lock()  # several event loops (threads) of one process may share the pool
        self._pool: ProcessPoolExecutor | None = None
        self.replaced = 0  # pools replaced because a worker died
        self.no_workers: str | None = None  # why jobs run in threads here, if they do

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(os.getpid(), self.nice),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
                self.replaced += 1
        pool.shutdown(wait=False, cancel_futures=True)

    def _in_threads(self, why: str) -> None:
        if self.no_workers is None:
            self.no_workers = why
            log.warning("recording.wav exports run in this process's threads: %s", why)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker (fn and args must pickle); its exception is raised here. A broken pool (a
        worker died) is replaced and the job tried once more there, then in a thread."""
        if self.no_workers is None and multiprocessing.current_process().daemon:
            self._in_threads("a daemonic process may not start processes")
        for _ in range(2):
            if self.no_workers is not None:
                break
            pool = self._executor()
            try:
                job = pool.submit(fn, *args)
            except BrokenProcessPool:  # a RuntimeError too: first
                self._discard(pool)
                continue
            except (OSError, RuntimeError, AssertionError) as e:  # AssertionError: multiprocessing's own checks
                self._in_threads(f"{type(e).__name__}: {e}")
                continue
            try:
                return await asyncio.wrap_future(job)  # the job's own exception is raised as it is
            except BrokenProcessPool:
                self._discard(pool)
                log.warning("the export pool lost a worker; %s again in a new pool", fn.__name__)
        else:
            self._in_threads("its workers died twice in a row")
        return await asyncio.to_thread(fn, *args)

    def shutdown(self) -> None:
        """Stop the workers (they also go when the process exits); the next ``run`` makes a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


POOL = ExportPool()  # the process's pool, shared by its calls


async def export_wav_off_process(recordings: Mapping[str, Path], out: Path, pool: ExportPool = POOL) -> Path:
    """``export_wav`` in the export pool's worker processes."""
    return await pool.run(export_wav, {party: str(p) for party, p in recordings.items()}, str(out))

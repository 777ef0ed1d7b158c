"""recording.wav made in the export pool's worker processes (media/wav_export.py): the same file as in the
bridge's process, at a lower CPU priority, and a failed export (a worker killed, a file that cannot be written)
costs neither the pool nor the call's WebM files."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import pytest

from tests.unit.test_recording import T0, opus_packets, talk
from voicebridge.bridge.turns import CallRecording
from voicebridge.media.passthrough import RtpAudio
from voicebridge.media.recording import Recorder
from voicebridge.media.relay import PacketHook, PacketHooks
from voicebridge.media.wav_export import NICE, ExportPool, export_wav, export_wav_off_process

pytestmark = pytest.mark.unit


class TapOnly(PacketHooks):
    """The relay's packet hook and nothing else: the test plays the relay's part, packet by packet."""

    def __init__(self) -> None:
        self.hooks: list[PacketHook] = []

    def on_packet(self, fn: PacketHook) -> Callable[[], None]:
        self.hooks.append(fn)
        return lambda: self.hooks.remove(fn)

    def forward(self, party: str, packets: list[RtpAudio]) -> None:
        for pkt in packets:
            for hook in list(self.hooks):
                hook(party, pkt)


def record_a_call(folder: Path) -> dict[str, Path]:
    rec = Recorder(folder, t0=T0)
    for pkt in talk(0.1, opus_packets(440.0, 25), ts0=1000):
        rec.feed("caller", pkt)
    for pkt in talk(0.8, opus_packets(660.0, 25), ts0=90000):
        rec.feed("cs", pkt)
    return rec.close()


@pytest.fixture
def pool() -> ExportPool:
    return ExportPool(workers=1)


async def test_the_pool_writes_the_same_wav_as_the_bridge_process_at_a_lower_priority(
    tmp_path: Path, pool: ExportPool
) -> None:
    paths = record_a_call(tmp_path)
    try:
        here = export_wav(paths, tmp_path / "here.wav")
        there = await export_wav_off_process(paths, tmp_path / "there.wav", pool)
        assert there == tmp_path / "there.wav"
        assert there.read_bytes() == here.read_bytes()
        assert await pool.run(os.nice, 0) == min(19, os.nice(0) + NICE)
    finally:
        pool.shutdown()


async def test_a_killed_worker_is_replaced_and_the_export_still_made(tmp_path: Path, pool: ExportPool) -> None:
    paths = record_a_call(tmp_path)
    try:
        worker = await pool.run(os.getpid)
        assert worker != os.getpid()
        os.kill(worker, signal.SIGKILL)  # as the OOM killer would; the next job finds its pool broken
        wav = await export_wav_off_process(paths, tmp_path / "after.wav", pool)
        assert (pool.replaced, pool.no_workers) == (1, None)  # a new pool, not the thread fallback
        assert wav.read_bytes() == export_wav(paths, tmp_path / "here.wav").read_bytes()
        assert await pool.run(os.getpid) not in (worker, os.getpid())
    finally:
        pool.shutdown()


ORPHAN = """
import asyncio, os, sys
from voicebridge.media.wav_export import ExportPool

async def main() -> None:
    print(await ExportPool(workers=1).run(os.getpid), flush=True)
    sys.stdin.read()  # until the test kills this process

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_the_workers_die_with_a_killed_bridge(tmp_path: Path) -> None:
    script = tmp_path / "bridge.py"
    script.write_text(ORPHAN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as bridge:
        assert bridge.stdout is not None
        worker = int(bridge.stdout.readline())
        gone = os.pidfd_open(worker)  # readable once the worker has exited
        try:
            bridge.kill()
            bridge.wait()
            readable, _, _ = select.select([gone], [], [], 60)
            assert readable, f"export worker {worker} outlived the killed bridge"
        finally:
            os.close(gone)


async def test_a_failed_export_keeps_the_webm_files_and_says_why(tmp_path: Path, pool: ExportPool) -> None:
    relay = TapOnly()
    recording = CallRecording(relay, tmp_path, T0)
    relay.forward("caller", talk(0.1, opus_packets(440.0, 25), ts0=1000))
    relay.forward("cs", talk(0.8, opus_packets(660.0, 25), ts0=90000))
    (tmp_path / "recording.wav").mkdir()  # the WAV cannot be written there
    try:
        files = await recording.export(pool)
    finally:
        pool.shutdown()
    assert files == {"caller": "caller.webm", "cs": "cs.webm"}  # listed in summary.json, without the WAV
    assert recording.error is not None and "IsADirectoryError" in recording.error
    assert pool.no_workers is None, pool.no_workers  # it failed in a worker
    assert relay.hooks == []  # the tap let go
    for party in ("caller", "cs"):
        with av.open(str(tmp_path / f"{party}.webm")) as container:
            assert sum(1 for p in container.demux(audio=0) if p.size > 0) == 25

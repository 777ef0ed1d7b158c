"""The emulator's recognition workers (emulator/recognition.py) die with the process that started them.

ProcessPoolExecutor stops its workers only on an orderly exit; before parent_death.py, an emulator killed with
SIGKILL (or ended by SIGTERM) left its recognizers running, holding its stdout open, so whoever read that output to
its end hung. A real child process starts the workers, is killed, and the workers must be gone; the wait is on the
processes' disappearance, bounded only to catch a hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import asyncio, multiprocessing, sys
    from voicebridge.emulator.recognition import Recognition

    async def main():
        rec = Recognition(workers=2)
        await rec.warm(["hello", "goodbye"])  # starts both workers and loads a grammar in each
        pids = [p.pid for c in multiprocessing.active_children() for p in [c]]
        print(" ".join(str(p) for p in pids), flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(main())
    """
)


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1].split()[0] != "Z"  # a zombie has exited
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_recognition_workers_die_with_their_parent(sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    assert child.stdout is not None
    line = child.stdout.readline().decode()
    workers = [int(p) for p in line.split()]
    assert len(workers) == 2 and all(alive(p) for p in workers), line
    child.send_signal(sig)
    child.wait(timeout=60)
    deadline = time.monotonic() + 60  # catches a hang only: the workers go within moments of their parent
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers), f"orphaned recognition workers: {workers}"
    # Nothing holds the child's stdout open any more: reading it to the end returns.
    assert child.stdout.read() == b""

"""The emulator in a process of its own (`voicebridge emulator --port 0`), for soaks and batches whose load
should not share one interpreter (and one GIL) with the bridge it tests; and what that process holds
(descriptors, threads, RSS), read from /proc, so its leaks are measured as well as the bridge's.

The child is started through a two-line bootstrap that lets the parent ask it for a full garbage collection
(SIGUSR2), so both processes are measured the same way: after the cyclic GC, not before it. (Sessions that
end up in reference cycles hold their native codec threads until the GC runs; see `collect_garbage`.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from voicebridge.extras import require
from voicebridge.scenarios.model import BUILTIN_DIR, Scenario

START_TIMEOUT_S = 120.0  # a cold start imports aiortc, av and pocketsphinx (per worker): seconds when loaded
STOP_TIMEOUT_S = 15.0
_READY = "serving the Realtime GA API at "
_BOOTSTRAP = (
    "import gc, signal, sys; signal.signal(signal.SIGUSR2, lambda *_: gc.collect()); "
    "from voicebridge.cli import main; sys.exit(main(sys.argv[1:]))"
)


class EmulatorProcessError(RuntimeError):
    pass


@dataclass(frozen=True)
class ProcessResources:
    fds: int
    threads: int
    rss_mb: float

    @classmethod
    def of(cls, pid: int) -> ProcessResources:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads, rss_kb = 0, 0
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
        return cls(fds=fds, threads=threads, rss_mb=round(rss_kb / 1024.0, 1))


@dataclass
class EmulatorProcess:
    url: str
    pid: int
    log_path: Path | None  # None: its log went to this process's stderr

    def resources(self) -> ProcessResources | None:
        try:
            return ProcessResources.of(self.pid)
        except OSError:  # not Linux, or the process is gone
            return None

    def collect_garbage(self) -> None:
        """Ask the child for a full gc.collect() (it runs between two bytecodes of its main thread)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR2)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None:
            return ""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def emulator_process(
    scenarios: Sequence[Scenario], log_path: Path | None, workers: str = "1", env_defaults: dict[str, str] | None = None
) -> AsyncIterator[EmulatorProcess]:
    """Start the emulator as a child process on a free loopback port (`workers`: its `--workers`, N processes
    behind the one URL); stop it (SIGTERM, then SIGKILL). Its log goes to `log_path` (None: this stderr). It is
    given no OpenAI key: it needs none. `env_defaults`: variables it gets unless this environment sets them."""
    require("emulator")  # here, not as a child that dies into its log file
    args = [sys.executable, "-c", _BOOTSTRAP, "emulator", "--host", "127.0.0.1", "--port", "0"]
    if workers != "1":
        args += ["--workers", workers]
    for s in scenarios:
        if s.path is not None and s.path.parent.resolve() != BUILTIN_DIR.resolve():
            args += ["--scenario", str(s.path)]
    log = open(log_path, "ab") if log_path is not None else None  # noqa: ASYNC230 (once, before anything runs)
    env = {**(env_defaults or {}), **{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}}
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL, env=env
    )
    try:
        url = await asyncio.wait_for(_ready_url(proc), START_TIMEOUT_S)
        # Keep reading stdout so the child never blocks on a full pipe.
        drain = asyncio.ensure_future(_drain(proc))
        try:
            yield EmulatorProcess(url=url, pid=proc.pid, log_path=log_path)
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
    except TimeoutError:
        raise EmulatorProcessError(f"the emulator did not start within {START_TIMEOUT_S:.0f} s") from None
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if log is not None:
            log.close()


async def _ready_url(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise EmulatorProcessError(f"the emulator exited ({await proc.wait()}) before serving")
        text = line.decode(errors="replace").strip()
        if _READY in text:
            return text.split(_READY, 1)[1].strip()


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass

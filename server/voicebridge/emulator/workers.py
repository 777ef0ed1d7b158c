"""`voicebridge emulator --workers N`: N emulator processes behind one URL, and the parent that supervises them.

One process paces every session's audio on one event loop, so it holds what one core can pace; N workers hold N
times that. Each worker is a whole emulator (`voicebridge emulator` with the same flags, group.py says what
changes): its own sessions, personas, voice cache, recognition workers and capacity.

How connections reach the workers: the parent makes one listening socket per worker, all on the public port with
SO_REUSEPORT, and one private loopback socket per worker; worker i inherits the two sockets i. The kernel spreads
new connections over the public sockets by a hash of their addresses: even, whatever the workers are doing, and
with no thundering herd (one socket shared by every worker instead hands a burst of connections to whichever
worker wakes first, as asyncio accepts up to 100 at a time). The parent keeps every socket open, so a worker that
dies and is restarted gets the same sockets back: the connections the kernel queued for it wait for it instead of
being reset, and the private ports the other workers pass requests on to never change (nothing to discover). A
request about a session that lands on another worker is passed on to the owner's private port (group.py).

The parent prints `serving the Realtime GA API at URL` once every worker serves (what `emulator_process` and
scripts wait for), and a line per worker. A worker that exits is logged and restarted (after 0.5 s, doubling up
to 30 s while it keeps dying young); its sessions ended with it. A worker that fails to start START_FAILURES times
in a row (it exits before it serves: a scenario file removed, out of memory) is given up on: an error on stderr,
its sockets closed (the kernel sends its share of connections to the others, none waits for it) and /readyz says
so; the others go on serving, since a group that still serves degrades instead of collapsing. When every worker
has been given up on, the parent says so and exits with status 1. SIGTERM or SIGINT stops them all (each closes its
sessions), then the parent; the workers end with the parent however it ends (prctl PR_SET_PDEATHSIG in each).

The group's state is one SQLite file in a directory the parent makes and removes: the ephemeral keys every worker
mints and redeems (keys.py) and the parent's view of each worker (roster.py), which /readyz and /healthz show.

Each worker budgets its share of the cores (VOICEBRIDGE_CORES = the usable cores / N, at least 1, unless set, as
`serve --workers N` does), 50 sessions per core of it unless VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE or
`--sessions-per-core` say otherwise (limits.WORKER_SESSIONS_PER_CORE), and runs one recognition worker per core of
its share (VOICEBRIDGE_RECOGNITION_WORKERS).
Limits are per worker: `--max-sessions`, `--max-sessions-per-key` and the capacity count what each worker holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voicebridge.edge.signals import stop_on_signals
from voicebridge.observability.capacity import CORES_ENV, env_number, usable_cores
from voicebridge.observability.capacity import worker_count as parse_worker_count

from .group import GROUP_ENV, WORKER_READY, Group
from .keys import connect as open_key_store
from .limits import ENV_SESSIONS_PER_CORE, WORKER_SESSIONS_PER_CORE
from .roster import GAVE_UP, RESTARTING, SERVING, STARTING, STOPPING, Roster

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # N workers importing aiortc, av and pocketsphinx at once on a loaded machine
STOP_TIMEOUT_S = 20.0  # each worker closes its sessions; then it is killed
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
YOUNG_S = 30.0  # a worker that dies sooner than this after its start waits longer before its next start
START_FAILURES = 3  # a worker that exits before it serves this many times in a row is given up on
START_FAILURES_ENV = "VOICEBRIDGE_EMULATOR_START_FAILURES"  # another count (a whole number >= 1)
RECOGNITION_ENV = "VOICEBRIDGE_RECOGNITION_WORKERS"


def worker_count(text: str) -> int:
    """`--workers`: a whole number >= 1, or `auto` (the usable cores)."""
    return parse_worker_count(text, minimum=1, auto=usable_cores)


@dataclass
class Slot:
    index: int
    public: socket.socket
    private: socket.socket
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row of a young worker
    start_failures: int = 0  # exits in a row before serving
    given_up: bool = False
    ready: asyncio.Future[bool] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def listening_sockets(host: str, port: int, n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """N sockets listening on host:port with SO_REUSEPORT (port 0: the first one picks it), and N on 127.0.0.1."""
    publics: list[socket.socket] = []
    privates: list[socket.socket] = []
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            publics.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
            s.listen(511)
        for _ in range(n):
            p = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            privates.append(p)
            p.bind(("127.0.0.1", 0))
            p.listen(511)
    except OSError:
        for s in publics + privates:
            s.close()
        raise
    for s in publics + privates:
        s.set_inheritable(True)
    return publics, privates


def _flags(args: argparse.Namespace) -> list[str]:
    """The worker's command line: the parent's flags but --workers."""
    argv = ["--host", args.host, "--port", str(args.port)]
    for s in args.scenario:
        argv += ["--scenario", str(s)]
    for h in args.allowed_host:
        argv += ["--allowed-host", h]
    for flag, value in (
        ("--connect-timeout", args.connect_timeout), ("--max-sessions", args.max_sessions),
        ("--max-sessions-per-key", args.max_sessions_per_key), ("--sessions-per-core", args.sessions_per_core),
        ("--max-lag-ms", args.max_lag_ms), ("--response-delay-ms", args.response_delay_ms),
    ):
        if value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv


class Supervisor:
    def __init__(self, args: argparse.Namespace, n: int, state_dir: str) -> None:
        self.args = args
        self.n = n
        self.flags = _flags(args)
        self.slots: list[Slot] = []
        self.private_ports: tuple[int, ...] = ()
        self.stopping = False
        self.all_given_up = asyncio.Event()
        self.start_failures = start_failures(os.environ)
        self.state_dir = state_dir
        self.state = os.path.join(state_dir, "group.sqlite3")
        open_key_store(self.state).close()  # its tables and WAL mode, before any worker opens it
        self.roster = Roster(self.state)
        self.env = dict(os.environ)
        # The workers share this machine: each counts its share of the cores in its budget, and recognises
        # with as many worker processes, unless the operator said otherwise.
        share = max(1, usable_cores() // n)
        self.env.setdefault(CORES_ENV, str(share))
        self.env.setdefault(RECOGNITION_ENV, str(share))
        # A worker's loop paces more sessions per core than a lone process's (limits.py says why and what was
        # measured); `--sessions-per-core` or the variable set by the operator still win.
        self.env.setdefault(ENV_SESSIONS_PER_CORE, f"{WORKER_SESSIONS_PER_CORE:g}")
        self.env.pop("OPENAI_API_KEY", None)  # the emulator needs no key: it never holds one

    async def spawn(self, slot: Slot) -> None:
        group = Group(
            index=slot.index, size=self.n, private_ports=self.private_ports, parent=os.getpid(),
            public_fd=slot.public.fileno(), private_fd=slot.private.fileno(), state=self.state,
        )
        env = {**self.env, GROUP_ENV: group.to_env()}
        slot.ready = asyncio.get_running_loop().create_future()
        slot.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicebridge.cli", "emulator", *self.flags, env=env,
            pass_fds=(slot.public.fileno(), slot.private.fileno()), stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C reaches the parent alone, which stops the workers in
            # order (a worker that saw it too would exit first and be taken for a crash). They still end with it.
            start_new_session=True,
        )
        slot.started = time.monotonic()
        self.roster.set(slot.index, STARTING, slot.proc.pid)
        slot.tasks = [asyncio.ensure_future(self._read(slot, slot.proc, slot.ready))]

    async def _read(self, slot: Slot, proc: asyncio.subprocess.Process, ready: asyncio.Future[bool]) -> None:
        """The worker's stdout: its ready line, and anything else passed on with its index."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text.startswith(WORKER_READY):
                if not ready.done():
                    ready.set_result(True)
                    if not self.stopping:
                        self.roster.set(slot.index, SERVING, proc.pid)
                continue
            print(f"[worker {slot.index}] {text}", flush=True)
        if not ready.done():
            ready.set_result(False)

    async def supervise(self, slot: Slot) -> None:
        """Restart the worker whenever it exits, until the group stops or it failed to start too often."""
        while True:
            assert slot.proc is not None and slot.ready is not None
            status = await slot.proc.wait()
            if self.stopping:
                return
            lived = time.monotonic() - slot.started
            with contextlib.suppress(TimeoutError):  # its ready line may still be in the pipe
                await asyncio.wait_for(asyncio.shield(slot.ready), 5.0)
            served = slot.ready.done() and slot.ready.result()
            slot.start_failures = 0 if served else slot.start_failures + 1
            if slot.start_failures >= self.start_failures:
                self.give_up(slot, status)
                return
            slot.failures = slot.failures + 1 if lived < YOUNG_S else 0
            delay = min(RESTART_MAX_S, RESTART_FIRST_S * 2 ** max(0, slot.failures - 1))
            what = "its sessions ended with it" if served else "before it served"
            log.warning(
                "emulator worker %d (pid %d) exited with %s after %.0f s, %s; restarting it in %.1f s",
                slot.index, slot.proc.pid, _status(status), lived, what, delay,
            )
            self.roster.set(
                slot.index, RESTARTING, slot.proc.pid,
                f"exited with {_status(status)} {what}; restarting in {delay:.1f} s",
            )
            await asyncio.sleep(delay)
            if self.stopping:
                return
            await self.spawn(slot)
            assert slot.ready is not None
            if await slot.ready:
                log.info("emulator worker %d restarted (pid %d)", slot.index, slot.proc.pid)

    def give_up(self, slot: Slot, status: int) -> None:
        """No more starts for this worker: its sockets closed, so the kernel stops queueing connections for it and
        a request passed on to it is refused at once; the group ends when no worker is left."""
        slot.given_up = True
        why = f"failed to start {slot.start_failures} times in a row (the last exited with {_status(status)})"
        left = [s.index for s in self.slots if not s.given_up]
        assert slot.proc is not None
        self.roster.set(slot.index, GAVE_UP, slot.proc.pid, f"{why}; not restarted")
        slot.public.close()
        slot.private.close()
        if left:
            log.error(
                "emulator worker %d %s: giving up on it; the group goes on with worker(s) %s (its output above "
                "says why it failed)", slot.index, why, ", ".join(map(str, left)),
            )
        else:
            log.error("emulator worker %d %s, and no worker is left: the emulator stops", slot.index, why)
            self.all_given_up.set()

    async def stop(self) -> None:
        self.stopping = True
        for s in self.slots:
            if not s.given_up and s.proc is not None:
                self.roster.set(s.index, STOPPING, s.proc.pid)
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_TIMEOUT_S)
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        for s in self.slots:
            for t in s.tasks:
                t.cancel()
            s.public.close()
            s.private.close()
        self.roster.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def start_failures(env: Mapping[str, str]) -> int:
    """How many failed starts in a row give a worker up (START_FAILURES_ENV, else START_FAILURES)."""
    value = env_number(env, START_FAILURES_ENV, START_FAILURES)
    if value < 1 or value != int(value):
        raise ValueError(f"{START_FAILURES_ENV} must be a whole number >= 1, got {env[START_FAILURES_ENV]!r}")
    return int(value)


def _status(status: int) -> str:
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
    return f"status {status}"


async def serve(args: argparse.Namespace, n: int) -> int:
    try:
        publics, privates = listening_sockets(args.host, args.port, n)
    except OSError as e:
        print(f"voicebridge emulator: cannot listen on {args.host}:{args.port}: {e.strerror}", flush=True)
        return 1
    sup = Supervisor(args, n, tempfile.mkdtemp(prefix="voicebridge-emulator-"))
    sup.slots = [Slot(i, publics[i], privates[i]) for i in range(n)]
    sup.private_ports = tuple(p.getsockname()[1] for p in privates)
    stop = stop_on_signals()
    try:
        for slot in sup.slots:
            await sup.spawn(slot)
        ready: asyncio.Future[list[bool]] = asyncio.gather(*(s.ready for s in sup.slots if s.ready is not None))
        waiting: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        both: list[asyncio.Future[Any]] = [ready, waiting]
        done, _ = await asyncio.wait(both, timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if ready not in done or not all(ready.result()):
            failed = [s for s in sup.slots if s.ready is not None and s.ready.done() and not s.ready.result()]
            why = (
                f"worker {failed[0].index} exited before serving" if failed
                else "stopped" if stop.is_set() else f"not every worker served within {START_TIMEOUT_S:g} s"
            )
            print(f"voicebridge emulator: {why}", flush=True)
            statuses = [s.proc.returncode for s in failed if s.proc is not None]
            await sup.stop()
            return next((c for c in statuses if c), 1) if failed else (0 if stop.is_set() else 1)
        port = publics[0].getsockname()[1]
        url = f"http://{args.host}:{port}/v1"
        print(f"voicebridge emulator: serving the Realtime GA API at {url}", flush=True)
        for s in sup.slots:
            assert s.proc is not None
            print(
                f"voicebridge emulator: worker {s.index} pid {s.proc.pid}, private "
                f"http://127.0.0.1:{s.private.getsockname()[1]}/v1", flush=True,
            )
        print(
            f"voicebridge emulator: {n} workers, each budgeting {sup.env[CORES_ENV]} core(s) and recognising in "
            f"{sup.env[RECOGNITION_ENV]} process(es); a worker that exits is restarted", flush=True,
        )
        watchers = [asyncio.ensure_future(sup.supervise(s)) for s in sup.slots]
        ended = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(sup.all_given_up.wait())]
        await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        for w in [*watchers, *ended]:
            w.cancel()
        if sup.all_given_up.is_set():
            print(
                f"voicebridge emulator: every worker failed to start {sup.start_failures} times in a row; stopping",
                file=sys.stderr, flush=True,
            )
            return 1
        print("voicebridge emulator: stopping its workers", flush=True)
    finally:
        await sup.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    """`voicebridge emulator --workers N` (N >= 2; 1 is server.main alone, no extra process)."""
    try:
        n = worker_count(args.workers)
        start_failures(os.environ)
    except ValueError as e:
        print(f"voicebridge emulator: {e}", file=sys.stderr)
        return 2
    if n == 1:  # `auto` on one core: the emulator alone, as without --workers
        from .server import main as serve_alone

        return serve_alone(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(args, n))

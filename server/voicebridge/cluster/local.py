"""`voicebridge serve --workers N --redis URL`: a front door in this process and N worker processes beside it.

The workers are `voicebridge worker` children (the Redis URL reaches them in their environment, never on a command
line where `ps` would show its password), advertising the address the front door listens on (or `--advertise`).
`--workers 0` runs the front door alone, for workers started elsewhere. The console line is printed once the N
workers have registered (bounded: a worker that never comes up is reported, and the front door serves anyway).
A worker that dies is not restarted: its calls are recorded `worker_lost` and new calls go to the others.
SIGTERM/SIGINT: the workers drain (SIGTERM to each, then wait), then the front door stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
import time

from aiohttp import web

from voicebridge.config import Settings
from voicebridge.edge.signals import stop_on_signals
from voicebridge.observability.capacity import CORES_ENV, usable_cores
from voicebridge.observability.capacity import worker_count as parse_worker_count
from voicebridge.signaling.security import SecurityPolicy

from .front_door import create_front_door
from .registry import Registry, RegistryUnavailable
from .worker import REDIS_URL_ENV, SUPERVISED_ENV

WORKERS_UP_WITHIN_S = 60.0  # an embedded emulator per worker loads its speech models first
DRAIN_WITHIN_S = 40.0  # a worker's own shutdown is bounded at 15 s per call batch; this only catches a hang
_WILDCARDS = ("0.0.0.0", "::", "")


def worker_count(text: str) -> int:
    """`serve --workers`: a whole number >= 0 (0: the front door alone), or `auto` (one per core)."""
    return parse_worker_count(text, minimum=0, auto=lambda: os.cpu_count() or 1)


async def serve_cluster(
    args: argparse.Namespace, workers: int, redis_url: str, policy: SecurityPolicy, ssl_context: ssl.SSLContext | None
) -> int:
    advertise = args.advertise or args.host
    if workers and advertise in _WILDCARDS:
        print(
            f"voicebridge serve: listening on {args.host!r} the workers need an address browsers reach them at: "
            "give --advertise ADDRESS",
            file=sys.stderr,
        )
        return 2
    try:
        registry = await Registry.connect(redis_url)
    except RegistryUnavailable as e:
        print(f"voicebridge serve: {e}", file=sys.stderr)
        return 2
    try:
        return await _serve(args, workers, redis_url, advertise, registry, policy, ssl_context)
    finally:
        await registry.close()


async def _serve(
    args: argparse.Namespace,
    workers: int,
    redis_url: str,
    advertise: str,
    registry: Registry,
    policy: SecurityPolicy,
    ssl_context: ssl.SSLContext | None,
) -> int:
    app = create_front_door(registry, Settings.from_env(), security=policy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context).start()
    except OSError as e:
        print(f"voicebridge serve: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    before = {w.id for w in await registry.workers()}
    children = [await _spawn(args, advertise, redis_url, workers) for _ in range(workers)]
    try:
        await _wait_registered(registry, before, children)
        scheme = "https" if ssl_context is not None else "http"
        port = runner.addresses[0][1] if runner.addresses else args.port
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"voicebridge serve: console at {scheme}://{host}:{port}/ (front door, {workers} worker(s), "
            f"Redis {registry.where})",
            flush=True,
        )
        stop = stop_on_signals()
        watchers = [asyncio.ensure_future(_report_exit(c)) for c in children]
        await stop.wait()
        print("voicebridge serve: shutting down (the workers drain, then the front door stops)", flush=True)
        for w in watchers:
            w.cancel()
        for c in children:
            if c.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.send_signal(signal.SIGTERM)
        await _wait_exited(children, DRAIN_WITHIN_S)
    finally:
        for c in children:  # whatever went wrong above, no worker outlives its front door
            if c.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.kill()
                await c.wait()
        await runner.cleanup()
    return 0


async def _spawn(args: argparse.Namespace, advertise: str, redis_url: str, workers: int) -> asyncio.subprocess.Process:
    argv = [
        sys.executable,
        "-m",
        "voicebridge.cli",
        "worker",
        "--advertise",
        advertise,
        "--port",
        "0",
        "--artifacts",
        str(args.artifacts),
    ]
    if args.emulator_url:
        argv += ["--emulator-url", args.emulator_url]
    env = {**os.environ, REDIS_URL_ENV: redis_url, SUPERVISED_ENV: "1"}
    # The workers share this machine: each counts its share of the cores in its call and session budgets (the
    # event-loop lag limit still guards against the rest), unless the operator set VOICEBRIDGE_CORES.
    env.setdefault(CORES_ENV, str(max(1, usable_cores() // max(1, workers))))
    # stdin: a pipe nobody writes to, whose end tells the worker this process is gone (worker.py)
    return await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.PIPE)


async def _wait_registered(registry: Registry, before: set[str], children: list[asyncio.subprocess.Process]) -> None:
    """Until each child has registered, one has exited, or the bound has passed (said on stderr)."""
    deadline = time.monotonic() + WORKERS_UP_WITHIN_S
    while children:
        with contextlib.suppress(RegistryUnavailable):
            mine = {w.pid for w in await registry.workers() if w.id not in before}
            if all(c.pid in mine for c in children):
                return
        dead = [c for c in children if c.returncode is not None]
        if dead or time.monotonic() > deadline:
            what = (
                f"worker pid {dead[0].pid} exited with status {dead[0].returncode}"
                if dead
                else (f"not every worker registered within {WORKERS_UP_WITHIN_S:g} s")
            )
            print(f"voicebridge serve: {what}; serving with those that did", file=sys.stderr, flush=True)
            return
        await asyncio.sleep(0.1)  # polling the registry; bounded by the deadline above


async def _report_exit(child: asyncio.subprocess.Process) -> None:
    status = await child.wait()
    print(
        f"voicebridge serve: worker pid {child.pid} exited with status {status}; its calls are recorded "
        "worker_lost and new calls go to the others",
        file=sys.stderr,
        flush=True,
    )


async def _wait_exited(children: list[asyncio.subprocess.Process], within_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in children)), within_s)

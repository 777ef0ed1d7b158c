"""A bridge worker: the single-process server's calls, owned by this process, known to the cluster through Redis.

`voicebridge worker --redis URL --advertise HOST` (and each child of `serve --workers N`) runs the same aiohttp
application as `voicebridge serve` (signaling/app.py), listening on HOST, with three differences:

* it answers only a front door: every request but /healthz and /readyz must carry the cluster's shared secret
  (`X-Voicebridge-Cluster`, from Redis; registry.py) or gets 403. Browsers reach it only with media: their ICE
  candidates are this worker's own (its advertised address; 127.0.0.1 on loopback), never the front door's;
* `Member` heartbeats into Redis every second (key expiring after 5 s) and writes each call's record (the API's list
  row plus "worker") when it is created (the front door writes the first one from the 201 before it answers), when
  its state changes, and every 5 s while live;
* SIGTERM drains: the heartbeat says `draining` (no new calls are placed here), the calls end with `shutdown` as
  in a single process, their final records are written, then the worker leaves the registry.

Redis going away does not touch live calls: they go on, heartbeats fail (logged once), /readyz fails (`redis`) and
new calls are refused with 503 `redis_unavailable` until Redis answers again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from voicebridge import eventloop
from voicebridge.backend import Backend, realtime_backend
from voicebridge.edge.hosts import HostConfigError, host_policy, is_ip_literal
from voicebridge.edge.signals import stop_on_signals
from voicebridge.media.loopback import set_host_addresses
from voicebridge.scenarios.model import Scenario
from voicebridge.signaling.app import create_app, default_call_factory
from voicebridge.signaling.calls import CallFactory, CallLike, CallManager
from voicebridge.signaling.http import MANAGER, error_body, json_response
from voicebridge.signaling.lifecycle import READY_CHECKS, graceful_shutdown
from voicebridge.signaling.security import RateLimit, SecurityPolicy, is_loopback_host

from .job_loop import BatchJobs
from .registry import HEARTBEAT_S, TTL_S, Registry, RegistryUnavailable, WorkerInfo

REFRESH_S = 5.0  # how often every live call's record is rewritten (its duration and counts in GET /api/calls)

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Voicebridge-Cluster"
REDIS_URL_ENV = "VOICEBRIDGE_REDIS_URL"
# Set by `serve --workers N` for its children: their stdin is a pipe from it, whose end means it is gone (even
# killed with -9), and a worker never outlives its front door.
SUPERVISED_ENV = "VOICEBRIDGE_SUPERVISED"
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The front door limits each client; here every request comes from a front door, so per-address limits would
# throttle the whole cluster as one client.
_NO_LIMIT = RateLimit(burst=1_000_000, per_s=1_000_000.0)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Member:
    """This worker in the registry: its heartbeat and its calls' records."""

    def __init__(self, registry: Registry, info: WorkerInfo, secret: str | None = None) -> None:
        self.registry = registry
        self.secret = secret
        self._manager: CallManager | None = None  # attach() gives it once the app exists
        self.info = info
        self.draining = False
        self.redis_problem: str | None = None  # why the last write failed; None while Redis answers
        self._open: set[str] = set()  # calls whose record says live
        self._touched: set[str] = set()  # calls whose state changed since their record was written
        self._refreshed_at = 0.0  # when every live call's record was last rewritten
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self.batch_calls: Callable[[], int] = lambda: 0  # the batch jobs' calls it runs (they load it too)

    @property
    def manager(self) -> CallManager:
        if self._manager is None:
            raise RuntimeError("Member.attach() was not called")
        return self._manager

    def attach(self, manager: CallManager) -> None:
        self._manager = manager
        manager.row_fields["worker"] = self.info.id

    def observe(self, factory: CallFactory) -> CallFactory:
        """`factory` whose calls wake the sync on their state changes and their end."""

        def make(scenario: Scenario) -> CallLike:
            call = factory(scenario)

            def changed(*_: object) -> None:
                self._touched.add(call.id)
                self._dirty.set()  # written now rather than at the next heartbeat

            self._dirty.set()  # a new call: its record at the next turn of the loop

            call.on("state", changed)
            call.on("ended", changed)
            return call

        return make

    async def sync(self) -> None:
        """Heartbeat and write the records of live calls and of calls that ended since the last sync."""
        async with self._lock:
            try:
                await self._sync(everything=self.redis_problem is not None)  # Redis may be back empty
            except RegistryUnavailable as e:
                if self.redis_problem is None:
                    log.warning("worker %s: %s; live calls go on, new ones are refused", self.info.id, e)
                self.redis_problem = str(e)
                raise
            if self.redis_problem is not None:
                log.info("worker %s: Redis answers again", self.info.id)
                self.redis_problem = None

    async def _sync(self, everything: bool = False) -> None:
        live = self.manager.live()
        now = time.time()
        self.info = dataclasses.replace(
            self.info, heartbeat_at=now, calls=len(live) + self.batch_calls(), draining=self.draining
        )
        if await self.registry.heartbeat(self.info, TTL_S, self.secret):
            # We were declared lost (stalled past the TTL, or cut off from Redis): our calls are recorded
            # `worker_lost` already, so end them for real rather than let the records lie.
            log.error("worker %s was declared lost; ending its %d call(s) with worker_lost", self.info.id, len(live))
            for rec in live:
                self.manager.hangup(rec, "worker_lost", "server")
            self._open.clear()
            return
        # A row is the call's summary made now: new and changed calls at once, the rest (their duration and turn
        # counts) every REFRESH_S rather than each heartbeat.
        everything = everything or now - self._refreshed_at >= REFRESH_S
        touched = set(self._touched)
        rows = [
            self.manager.view(rec)
            for rec in live
            if everything or rec.call.id in touched or rec.call.id not in self._open
        ]
        live_ids = {rec.call.id for rec in live}
        for call_id in sorted(self._open - live_ids):
            ended = self.manager.get(call_id)
            if ended is not None:
                rows.append(self.manager.view(ended))
        await self.registry.put_calls(self.info.id, rows)
        self._open = live_ids
        self._touched -= touched
        if everything:
            self._refreshed_at = now

    async def run(self) -> None:
        """Sync each heartbeat, and at once when a call changes; until cancelled."""
        while True:
            with contextlib.suppress(RegistryUnavailable):
                await self.sync()
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.reap()  # a dead peer's calls are recorded even with no front door running
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), HEARTBEAT_S)
            self._dirty.clear()


def only_front_doors(secret: str, member: Member) -> Middleware:
    """Refuse what does not come from a front door (no or wrong secret), and new calls while Redis is away."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN_PATHS:
            return await handler(request)
        shown = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(shown.encode(), secret.encode()):
            body = error_body(
                "this is a voicebridge worker: it answers only its cluster's front doors (send requests to the "
                "front door, `voicebridge serve`)",
                "forbidden",
            )
            return json_response(request, body, 403)
        if request.method == "POST" and request.path.rstrip("/") == "/api/calls":
            if member.redis_problem is not None:
                body = error_body(
                    f"no new calls while the registry is unavailable: {member.redis_problem}", "redis_unavailable"
                )
                return json_response(request, body, 503, headers={"Retry-After": "5"})
        # A new call's first record is the front door's to write (from the 201's body, before it answers): waiting
        # for Redis here would hold the answer while the call's set-up keeps this loop busy.
        return await handler(request)

    return guard


def worker_id() -> str:
    return f"w-{secrets.token_hex(4)}"


async def run_worker(
    registry: Registry,
    backend: Backend,
    *,
    bind: str,
    advertise: str,
    port: int,
    ready: Callable[[WorkerInfo], None] | None = None,
    jobs: BatchJobs | None = None,
) -> int:
    """Serve calls until SIGTERM/SIGINT, then drain; the exit status."""
    secret = await registry.cluster_secret()
    policy = SecurityPolicy(hosts=host_policy(bind, [advertise]), call_rate=_NO_LIMIT, join_rate=_NO_LIMIT)
    backend_kind = "openai" if backend.settings.uses_openai else "emulator"
    info = WorkerInfo(
        id=worker_id(), host=advertise, port=0, pid=os.getpid(), started_at=time.time(), backend=backend_kind
    )
    member = Member(registry, info, secret)
    if jobs is not None:
        member.batch_calls = lambda: jobs.running
    factory = member.observe(default_call_factory(backend.settings))
    app = await create_app(backend.settings, call_factory=factory, security=policy)
    member.attach(app[MANAGER])
    app.middlewares.insert(2, only_front_doors(secret, member))  # after the headers and the JSON errors

    async def redis_check() -> str | None:
        try:
            await registry.ping()
        except RegistryUnavailable as e:
            return str(e)
        return None

    app[READY_CHECKS]["redis"] = redis_check
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, bind, port).start()
    except OSError as e:
        print(f"voicebridge worker: cannot listen on {bind}:{port}: {e.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    real_port = runner.addresses[0][1] if runner.addresses else port
    member.info = dataclasses.replace(member.info, port=real_port)
    try:
        await member.sync()
    except RegistryUnavailable as e:
        print(f"voicebridge worker: {e}", file=sys.stderr)
        await runner.cleanup()
        return 1
    syncing = asyncio.ensure_future(member.run())
    # Batch calls (`voicebridge batch --redis`) taken off the jobs stream, beside the calls the front door places.
    taking = asyncio.ensure_future(jobs.run(member.info.id, backend.settings)) if jobs is not None else None
    print(
        f"voicebridge worker: {member.info.id} at {member.info.url} (pid {member.info.pid}, Redis {registry.where}, "
        f"Realtime backend: {backend.description})",
        flush=True,
    )
    if ready is not None:
        ready(member.info)
    stop = stop_on_signals()
    orphaned = asyncio.ensure_future(_parent_gone(stop)) if os.environ.get(SUPERVISED_ENV) == "1" else None
    await stop.wait()
    if orphaned is not None:
        orphaned.cancel()
    print(f"voicebridge worker: {member.info.id} draining (no new calls, ending live ones)", flush=True)
    member.draining = True
    with contextlib.suppress(RegistryUnavailable):
        await member.sync()  # placement skips us from now on
    if jobs is not None and taking is not None:
        await jobs.drain(taking)  # no new batch calls; the running ones end with `shutdown`, their results sent
    await graceful_shutdown(app, runner)
    syncing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await syncing
    with contextlib.suppress(RegistryUnavailable):
        await member.sync()  # the calls' final records
        await registry.deregister(member.info.id)
    return 0


async def _parent_gone(stop: asyncio.Event) -> None:
    """Drain when stdin (the pipe from `serve`) reaches its end."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while await reader.read(4096):
            pass
        log.warning("worker: its `voicebridge serve` is gone; draining")
        stop.set()
    finally:
        transport.close()


async def _main(args: argparse.Namespace) -> int:
    advertise: str = args.advertise
    bind: str = args.host or advertise
    try:
        host_policy(bind, [advertise])
    except HostConfigError as e:
        print(f"voicebridge worker: {e}", file=sys.stderr)
        return 2
    try:
        registry = await Registry.connect(args.redis or os.environ.get(REDIS_URL_ENV, ""))
    except RegistryUnavailable as e:
        print(f"voicebridge worker: {e}", file=sys.stderr)
        return 2
    url = args.redis or os.environ.get(REDIS_URL_ENV, "")
    try:
        jobs = BatchJobs(url, args.artifacts, args.batch_slots)
    except ValueError as e:  # VOICEBRIDGE_JOB_LEASE_S
        print(f"voicebridge worker: {e}", file=sys.stderr)
        await registry.close()
        return 2
    off_loopback = not is_loopback_host(advertise)
    if off_loopback and is_ip_literal(advertise):
        set_host_addresses([advertise])  # browsers reach this worker's media at its advertised address only
    try:
        async with realtime_backend(
            emulator_url=args.emulator_url, browsers_off_loopback=off_loopback, artifacts_dir=args.artifacts
        ) as backend:
            return await run_worker(registry, backend, bind=bind, advertise=advertise, port=args.port, jobs=jobs)
    finally:
        await registry.close()


def main(args: argparse.Namespace) -> int:
    """`voicebridge worker --redis URL --advertise HOST [--host BIND] [--port N]`"""
    from voicebridge.observability.logs import setup_logging_from_env

    setup_logging_from_env()
    return eventloop.run(_main(args))

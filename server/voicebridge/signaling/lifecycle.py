"""Readiness and graceful shutdown of the signaling server.

GET /readyz is 200 only when the server is not shutting down, is not full (observability/capacity.py: calls per
core and event-loop lag; POST /api/calls then gets 503 with Retry-After) and the Realtime endpoint (the emulator
or OpenAI) accepts a TCP connection; otherwise 503 with the failing check named. GET /healthz (api.py) only says
the process is alive.

Shutdown (SIGTERM/SIGINT in `serve`): first refuse new work (503 with Retry-After on call creation, tokens
and joins; /readyz turns 503 so a load balancer stops sending), then end every live call with end_reason
`shutdown` (their artifacts are flushed as they end), bounded, and only then close the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from .http import CAPACITY, MANAGER, SETTINGS, error_body, json_response

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBE_TIMEOUT_S = 2.0
SHUTDOWN_TIMEOUT_S = 15.0  # live calls get this long to say goodbye and write their artifacts
_NEW_WORK = re.compile(r"^/api/calls/?$|^/api/calls/[^/]+/(join|tokens)$")


@dataclass
class Lifecycle:
    started_at: float
    shutting_down: bool = False


LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
ReadyCheck = Callable[[], Awaitable[str | None]]  # None when fine, else what is wrong
# More readiness checks by name (a cluster worker adds "redis"), each failing one named in /readyz's `failing`.
READY_CHECKS: web.AppKey[dict[str, ReadyCheck]] = web.AppKey("ready_checks", dict)


async def backend_reachable(base_url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the base URL's host and port succeeds, else why not."""
    if not base_url:
        return "no Realtime base URL configured"
    parts = urlsplit(base_url)
    host = parts.hostname
    if not host:
        return f"the Realtime base URL {base_url!r} has no host"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return f"the Realtime base URL {base_url!r} has a bad port"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except TimeoutError:
        return f"{host}:{port} did not accept a connection within {timeout_s:g} s"
    except OSError as e:
        return f"cannot connect to {host}:{port}: {e.strerror or e}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def readyz(request: web.Request) -> web.Response:
    life = request.app[LIFECYCLE]
    checks: dict[str, str] = {}
    if life.shutting_down:
        checks["shutdown"] = "the server is shutting down"
    live = len(request.app[MANAGER].live())
    capacity = request.app[CAPACITY]
    full = capacity.full(live)
    if full is not None:
        checks["capacity"] = f"the server is full: {full.message}"
    problem = await backend_reachable(request.app[SETTINGS].base_url)
    if problem is not None:
        checks["realtime_backend"] = problem
    for name, check in request.app[READY_CHECKS].items():
        if (failing := await check()) is not None:
            checks[name] = failing
    body = {"ready": not checks, "failing": checks, "live_calls": live, "capacity": capacity.status(live)}
    return json_response(request, body, 200 if not checks else 503)


@web.middleware
async def refuse_when_shutting_down(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[LIFECYCLE].shutting_down and request.method == "POST" and _NEW_WORK.match(request.path):
        return json_response(
            request,
            error_body("the server is shutting down and takes no new calls or joins", "shutting_down"),
            503,
            headers={"Retry-After": "30"},
        )
    return await handler(request)


def install_lifecycle(app: web.Application) -> None:
    app[LIFECYCLE] = Lifecycle(started_at=time.time())
    app[READY_CHECKS] = {}
    app.middlewares.append(refuse_when_shutting_down)
    app.router.add_get("/readyz", readyz)


async def graceful_shutdown(app: web.Application, runner: web.AppRunner, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Refuse new work, end live calls with `shutdown` (bounded), then close the listener and the app."""
    app[LIFECYCLE].shutting_down = True
    manager = app[MANAGER]
    live = len(manager.live())
    log.info("shutting down: ending %d live call(s)", live)
    await manager.shutdown(timeout_s)
    await runner.cleanup()

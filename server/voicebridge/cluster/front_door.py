"""The front door of a cluster: the console and the REST API, each call's requests routed to the worker owning it.

It keeps no state of its own (two front doors on two machines answer the same): what it knows it reads from Redis
(registry.py) on each request.

    POST /api/calls             placed on the least loaded live worker (placement.py), the request proxied there;
                                a worker that refuses (503, 429) or does not answer is skipped for the next one
    GET  /api/calls             every worker's calls, from their records in Redis (each with "worker")
    GET  /api/workers           [{"id", "host", "port", "pid", "calls", "heartbeat_age_s", "draining"}]
    /api/calls/{id}[/...]       proxied to the owner (REST, the browser's tokens, join and SDP exchange, hang-up,
                                the events WebSocket). The SDP answer is the worker's, with the worker's ICE
                                candidates: media flows between the browser and the worker, never through here.
                                The owner gone: GET /api/calls/{id} answers the record from Redis; anything else is
                                410 naming why (`worker_lost`, or `worker_gone` for a worker that left cleanly).
    GET  /readyz                503 when Redis does not answer or no worker is live
    GET  /api/scenarios, /api/schema, /healthz, the console's files: served here.

The guards of a single server apply here, to the clients (security.py: Host names, the management token, per-client
rate limits, CORS); the management token is not passed on. Each proxied request carries the cluster's shared secret
(worker.py) and the client's join token when it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from voicebridge.config import Settings
from voicebridge.edge.websocket import LimitedWebSocketResponse
from voicebridge.signaling.api import body_schemas, list_scenarios
from voicebridge.signaling.app import add_console, security_headers
from voicebridge.signaling.http import MAX_BODY_BYTES, SETTINGS, SETTINGS_BODY, ApiError, errors_as_json, json_response
from voicebridge.signaling.security import SecurityPolicy, install_security

from .placement import candidates
from .registry import HEARTBEAT_S, Registry, RegistryUnavailable, WorkerInfo
from .worker import SECRET_HEADER

log = logging.getLogger(__name__)

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
SECRET: web.AppKey[list[str]] = web.AppKey("cluster_secret", list)  # [secret], read from Redis at start
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
# Proxied request headers: what the worker's routes read. Never Host, Origin or cookies (the guards ran here).
_REQUEST_HEADERS = ("Content-Type", "Accept", "Authorization")
_RESPONSE_HEADERS = (
    "Content-Type",
    "Location",
    "Retry-After",
    "X-Participant-Id",
    "WWW-Authenticate",
    "Content-Disposition",
    "Cache-Control",
    "Content-Security-Policy",  # the timeline SVG's: opened alone, it must run nothing
)
# A join waits for the worker's answer SDP (ICE gathering, the call's session): generous, but bounded.
_PROXY_TIMEOUT = aiohttp.ClientTimeout(total=60.0, sock_connect=3.0)
_WORKER_EVENTS_MAX_BYTES = 16 * 1024 * 1024  # a raw Realtime event can be large; the browser gets what it would
_CLIENT_MESSAGE_BYTES = 4096  # as events_ws.py: the console sends nothing


def _unavailable(e: RegistryUnavailable) -> ApiError:
    return ApiError(
        503, f"the cluster's registry is unavailable, so no call can be placed or found: {e}", "redis_unavailable"
    )


async def _secret(app: web.Application) -> str:
    if not app[SECRET]:
        app[SECRET].append(await app[REGISTRY].cluster_secret())
    return app[SECRET][0]


def _forward_headers(request: web.Request, secret: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    for name in _REQUEST_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    headers[SECRET_HEADER] = secret
    if request.remote:
        headers["X-Forwarded-For"] = request.remote  # for the worker's log; it trusts only the secret
    return headers


class WorkerUnreachable(Exception):
    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent  # the request may have reached it (a time-out, a dropped connection): not safe to resend


async def _proxy(request: web.Request, worker: WorkerInfo, body: bytes) -> web.Response:
    """Send the request on to `worker` and its answer back; WorkerUnreachable when it does not answer."""
    session = request.app[SESSION]
    query = [(k, v) for k, v in request.query.items() if k != "access_token"]  # the management token stays here
    try:
        async with session.request(
            request.method,
            URL(worker.url + request.rel_url.raw_path, encoded=True),  # the path as the client encoded it
            params=query,
            data=body if body else None,
            headers=_forward_headers(request, await _secret(request.app)),
            allow_redirects=False,
            timeout=_PROXY_TIMEOUT,
        ) as upstream:
            payload = await upstream.read()
            headers = {k: upstream.headers[k] for k in _RESPONSE_HEADERS if k in upstream.headers}
            return web.Response(body=payload, status=upstream.status, headers=headers)
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        sent = not isinstance(e, aiohttp.ClientConnectorError)
        raise WorkerUnreachable(f"{worker.id} at {worker.url}: {type(e).__name__}: {e}", sent) from None


# -- placement -------------------------------------------------------------------------------------------------
async def create_call(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    body = await request.read()
    tried: list[str] = []
    last: web.Response | None = None
    while True:
        try:
            workers = await registry.workers()
            order = candidates(workers, await registry.loads([w.id for w in workers]), tried)
        except RegistryUnavailable as e:
            raise _unavailable(e) from None
        if not order:
            break
        worker = order[0]
        tried.append(worker.id)
        try:
            response = await _proxy(request, worker, body)
        except WorkerUnreachable as e:
            log.warning("placing a call: worker %s", e)
            if e.sent:  # it may have started the call: placing it again could make two
                raise ApiError(
                    502,
                    f"the worker placing the call did not answer in time ({e}); see GET /api/calls",
                    "worker_unreachable",
                ) from None
            continue
        if response.status in (429, 503):  # full or draining: the next one may take it
            last = response
            continue
        if response.status == 201 and isinstance(response.body, bytes):
            try:  # listed, found and counted in its worker's load from now on, whoever asks next
                await registry.put_new_call(worker.id, json.loads(response.body))
            except RegistryUnavailable as e:
                log.warning("call placed on %s but not recorded: %s", worker.id, e)  # the worker records it soon
        return response
    if last is not None:
        return last
    if tried:
        raise ApiError(503, f"no live worker answered (tried {', '.join(tried)}); retry shortly", "no_workers")
    raise ApiError(503, "no live worker takes calls now: start one with `voicebridge worker --redis URL`", "no_workers")


async def list_calls(request: web.Request) -> web.Response:
    try:
        rows = await request.app[REGISTRY].calls()
    except RegistryUnavailable as e:
        raise _unavailable(e) from None
    return json_response(request, {"calls": rows, "live": sum(1 for r in rows if r.get("state") != "ended")})


async def list_workers(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY]
    try:
        workers = await registry.workers()
        loads = await registry.loads([w.id for w in workers])
    except RegistryUnavailable as e:
        raise _unavailable(e) from None
    now = time.time()
    rows = [
        {
            "id": w.id,
            "host": w.host,
            "port": w.port,
            "pid": w.pid,
            "calls": loads.get(w.id, w.calls),
            "heartbeat_age_s": round(max(0.0, now - w.heartbeat_at), 3),
            "draining": w.draining,
        }
        for w in workers
    ]
    return json_response(request, {"workers": rows})


# -- routing to a call's owner ----------------------------------------------------------------------------------
async def _owner(request: web.Request) -> tuple[dict[str, Any], WorkerInfo | None]:
    """The call's record and its live owner (None when the owner is gone: then the record is final)."""
    registry = request.app[REGISTRY]
    call_id = request.match_info["call_id"]
    try:
        record = await registry.call(call_id)
        if record is None:
            raise ApiError(404, f"no call with id {call_id[:80]!r}", "not_found")
        worker = await registry.worker(str(record.get("worker")))
        if worker is None and record.get("state") != "ended":
            await registry.reap()  # its heartbeat has expired: record its calls lost now, not at the next sweep
            record = await registry.call(call_id) or record
    except RegistryUnavailable as e:
        raise _unavailable(e) from None
    return record, worker


def _gone(record: dict[str, Any]) -> ApiError:
    call_id, worker = record.get("id"), record.get("worker")
    if record.get("end_reason") == "worker_lost":
        return ApiError(
            410,
            f"call {call_id} was lost with its worker {worker} (end_reason worker_lost); nobody can join it",
            "worker_lost",
        )
    return ApiError(
        410,
        f"call {call_id} is {record.get('state')} and its worker {worker} has left; only its record remains "
        f"(GET /api/calls/{call_id})",
        "worker_gone",
    )


async def call_route(request: web.Request) -> web.StreamResponse:
    record, worker = await _owner(request)
    body = await request.read()
    if worker is None:
        if request.method == "GET" and request.match_info.get("rest", "") == "":
            return json_response(request, record)
        raise _gone(record)
    try:
        return await _proxy(request, worker, body)
    except WorkerUnreachable as e:
        raise ApiError(
            502,
            f"the worker owning call {record.get('id')} does not answer ({e}); if it died, its calls are "
            "recorded worker_lost within a few seconds",
            "worker_unreachable",
        ) from None


async def call_events(request: web.Request) -> web.StreamResponse:
    """The events WebSocket, relayed message for message from the owner's."""
    record, worker = await _owner(request)
    if worker is None:
        raise _gone(record)
    session = request.app[SESSION]
    query = [(k, v) for k, v in request.query.items() if k != "access_token"]
    headers = {SECRET_HEADER: await _secret(request.app)}
    try:
        upstream = await session.ws_connect(
            URL(worker.url + request.rel_url.raw_path, encoded=True),
            params=query,
            headers=headers,
            max_msg_size=_WORKER_EVENTS_MAX_BYTES,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            heartbeat=20.0,
        )
    except aiohttp.WSServerHandshakeError as e:  # the worker's JSON error (404, 400): said again here
        raise ApiError(e.status, f"the call's worker refused its events: {e.message}", "upstream_error") from None
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        raise ApiError(
            502, f"the worker owning call {record.get('id')} does not answer ({e})", "worker_unreachable"
        ) from None
    ws = LimitedWebSocketResponse(heartbeat=20.0, max_msg_size=_CLIENT_MESSAGE_BYTES)
    try:
        await ws.prepare(request)

        async def down() -> None:
            async for msg in upstream:
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
            await ws.close(code=upstream.close_code or 1000)

        relay = asyncio.ensure_future(down())
        async for incoming in ws:  # the console sends nothing; reading is how its close is noticed
            if incoming.type == WSMsgType.ERROR:
                break
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await relay
    except ConnectionResetError:
        pass
    finally:
        await upstream.close()
    return ws


# -- health --------------------------------------------------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    """Alive; with the workers' Realtime backend and live calls when Redis answers (the console shows them)."""
    body: dict[str, Any] = {"ok": True, "role": "front_door"}
    with contextlib.suppress(RegistryUnavailable):
        workers = await request.app[REGISTRY].workers()
        backends = sorted({w.backend for w in workers if w.backend})
        body.update(
            backend=backends[0] if len(backends) == 1 else "+".join(backends) or None,
            live_calls=sum(w.calls for w in workers),
            workers=len(workers),
        )
    return json_response(request, body)


async def readyz(request: web.Request) -> web.Response:
    failing: dict[str, str] = {}
    live = 0
    try:
        live = sum(1 for w in await request.app[REGISTRY].workers() if not w.draining)
    except RegistryUnavailable as e:
        failing["redis"] = str(e)
    else:
        if live == 0:
            failing["workers"] = "no live worker takes calls"
    return json_response(
        request, {"ready": not failing, "failing": failing, "workers": live}, 200 if not failing else 503
    )


async def _reaper(app: web.Application) -> None:
    """Record the calls of dead workers as lost even when nobody asks for them."""
    while True:
        with contextlib.suppress(RegistryUnavailable):
            await app[REGISTRY].reap()
            if app[SECRET]:  # put it back should Redis have restarted empty
                await app[REGISTRY].cluster_secret(app[SECRET][0])
        await asyncio.sleep(HEARTBEAT_S)  # a periodic sweep: nothing to wait on but time


def create_front_door(
    registry: Registry,
    settings: Settings,
    *,
    security: SecurityPolicy | None = None,
    web_dir: Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> web.Application:
    """The front door as an aiohttp Application (settings: only for the API key, which is checked never to
    leave in a response; it is never sent anywhere)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[security_headers, errors_as_json])
    app[SETTINGS] = settings
    app[SETTINGS_BODY] = max_body_bytes
    app[REGISTRY] = registry
    app[SECRET] = []
    app.router.add_post("/api/calls", create_call)
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/workers", list_workers)
    app.router.add_get("/api/scenarios", list_scenarios)
    app.router.add_get("/api/schema", body_schemas)
    app.router.add_get("/api/calls/{call_id}/events", call_events)
    app.router.add_route("*", "/api/calls/{call_id}", call_route)
    app.router.add_route("*", "/api/calls/{call_id}/{rest:.+}", call_route)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    install_security(app, security or SecurityPolicy())
    add_console(app, web_dir)

    async def _running(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession()
        reaper = asyncio.ensure_future(_reaper(app))
        yield
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await app[SESSION].close()

    app.cleanup_ctx.append(_running)
    return app

"""`voicebridge serve`: the signaling server (REST API, event WebSockets) and the web console.

`create_app(settings)` builds the aiohttp application (tests drive it with aiohttp's TestServer/TestClient);
`main(args)` runs it, with the embedded emulator as the Realtime backend unless OPENAI_API_KEY or
--emulator-url says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from voicebridge.backend import Backend, realtime_backend
from voicebridge.config import Settings
from voicebridge.observability.http import add_metrics_route, observed
from voicebridge.observability.logs import setup_logging_from_env
from voicebridge.observability.metrics import Metrics
from voicebridge.scenarios.model import Scenario

from .api import MANAGER, MAX_BODY_BYTES, SETTINGS, SETTINGS_BODY, add_routes, errors_as_json
from .calls import CallFactory, CallLike, CallManager
from .debug import add_debug_routes
from .events_ws import call_events
from .join import add_join_routes
from .lifecycle import graceful_shutdown, install_lifecycle
from .security import (
    SecurityConfigError,
    SecurityPolicy,
    install_security,
    is_loopback_host,
    policy_for_serve,
)
from .tls import TlsError, server_ssl_context

log = logging.getLogger(__name__)

# The console (HTML, ES modules, CSS) is package data: found where the package is installed, not in a source tree.
CONSOLE = resources.files("voicebridge") / "web"


def default_call_factory(settings: Settings) -> CallFactory:
    def make(scenario: Scenario) -> CallLike:
        from voicebridge.bridge.call import Call

        return Call(scenario, settings)

    return make


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _index(request: web.Request) -> web.StreamResponse:
    index = request.app[WEB_DIR_KEY] / "index.html"
    if not index.is_file():
        return web.Response(text="voicebridge: the web console is not installed (voicebridge/web/index.html missing)\n")
    return web.FileResponse(index)


async def _static(request: web.Request) -> web.StreamResponse:
    root = request.app[WEB_DIR_KEY]
    target = (root / request.match_info["path"]).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise web.HTTPNotFound(text=f"not found: {request.path}")
    return web.FileResponse(target)


WEB_DIR_KEY: web.AppKey[Path] = web.AppKey("web_dir", Path)


async def create_app(
    settings: Settings,
    *,
    call_factory: CallFactory | None = None,
    web_dir: Path | None = None,
    max_live_calls: int = 20,
    max_body_bytes: int = MAX_BODY_BYTES,
    security: SecurityPolicy | None = None,
) -> web.Application:
    """The server as an aiohttp Application; on cleanup it hangs up every live call (reason `shutdown`)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_security_headers, errors_as_json])
    metrics = Metrics()  # this server's own registry: two apps in one process never share counters
    factory = observed(call_factory or default_call_factory(settings), metrics)
    manager = CallManager(factory, max_live=max_live_calls)
    app[SETTINGS] = settings
    app[SETTINGS_BODY] = max_body_bytes
    app[MANAGER] = manager
    if web_dir is None:
        # A directory on disk for the file responses: the installed package's own (as_file copies only from a zip).
        files = contextlib.ExitStack()
        web_dir = files.enter_context(resources.as_file(CONSOLE))

        async def _release(_: web.Application) -> None:
            files.close()

        app.on_cleanup.append(_release)
    app[WEB_DIR_KEY] = web_dir.resolve()
    add_routes(app)
    add_join_routes(app)
    add_debug_routes(app)
    add_metrics_route(app, metrics)
    app.router.add_get("/api/calls/{call_id}/events", call_events)
    install_security(app, security or SecurityPolicy())  # Host names, management token, rate limits, CORS
    install_lifecycle(app)  # /readyz, 503 for new work while shutting down
    app.router.add_get("/", _index)
    # Everything else outside /api/ is a file of the console (so an unknown /api/ path stays a JSON 404 or 405).
    app.router.add_get(r"/{path:(?!api/).+}", _static)

    async def _shutdown(_: web.Application) -> None:
        await manager.shutdown()

    app.on_shutdown.append(_shutdown)
    return app


async def _serve(args: argparse.Namespace) -> int:
    try:  # off loopback, no management token means no server; a bad --allowed-host neither (security.py)
        policy = policy_for_serve(
            args.host,
            os.environ,
            getattr(args, "allow_origin", None) or (),
            getattr(args, "allowed_host", None) or (),
        )
    except SecurityConfigError as e:
        print(f"voicebridge serve: {e}", file=sys.stderr)
        return 2
    try:  # before anything starts: off loopback, no certificate means no server (tls.py says why)
        ssl_context = server_ssl_context(args.host, getattr(args, "cert", None), getattr(args, "key", None))
    except TlsError as e:
        print(f"voicebridge serve: {e}", file=sys.stderr)
        return 2
    async with realtime_backend(
        emulator_url=args.emulator_url,
        browsers_off_loopback=not is_loopback_host(args.host),
        artifacts_dir=args.artifacts,
    ) as backend:
        return await _run_server(args, backend, policy, ssl_context)


async def _run_server(
    args: argparse.Namespace, backend: Backend, policy: SecurityPolicy, ssl_context: ssl.SSLContext | None
) -> int:
    settings = backend.settings
    app = await create_app(settings, security=policy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port, ssl_context=ssl_context)
        await site.start()
    except OSError as e:
        print(f"voicebridge serve: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    scheme = "https" if ssl_context is not None else "http"
    port = runner.addresses[0][1] if runner.addresses else args.port  # the real one when --port 0
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"voicebridge serve: console at {scheme}://{host}:{port}/ (Realtime backend: {backend.description})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("voicebridge serve: shutting down (refusing new calls, ending live ones)", flush=True)
    await graceful_shutdown(app, runner)
    return 0


def main(args: argparse.Namespace) -> int:
    """`voicebridge serve [--host] [--port] [--artifacts DIR] [--emulator-url URL]`"""
    setup_logging_from_env()  # VOICEBRIDGE_LOG_FORMAT=json: one JSON object per line, with call_id
    return asyncio.run(_serve(args))

"""The signaling server (REST API, event WebSockets) and the web console.

`create_app(settings)` builds the aiohttp application (tests drive it with aiohttp's TestServer/TestClient);
`voicebridge serve` (commands/serve.py) runs it against the Realtime backend it picks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from voicebridge.config import Settings
from voicebridge.observability.capacity import Capacity, CapacityLimits, LagSource
from voicebridge.observability.http import add_metrics_route, observed
from voicebridge.observability.metrics import Metrics
from voicebridge.scenarios.model import Scenario

from .api import add_routes
from .calls import CallFactory, CallLike, CallManager
from .debug import add_debug_routes
from .events_ws import call_events
from .http import CAPACITY, MANAGER, MAX_BODY_BYTES, SETTINGS, SETTINGS_BODY, errors_as_json
from .join import add_join_routes
from .lifecycle import install_lifecycle
from .security import SecurityPolicy, install_security

log = logging.getLogger(__name__)

# The console (HTML, ES modules, CSS) is package data: found where the package is installed, not in a source tree.
CONSOLE = resources.files("voicebridge") / "web"


def default_call_factory(settings: Settings) -> CallFactory:
    def make(scenario: Scenario) -> CallLike:
        from voicebridge.bridge.call import Call

        return Call(scenario, settings)

    return make


@web.middleware
async def security_headers(
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
# The bridge's capacity (observability/capacity.py). Alone in its process it carries 50 calls without loss on this
# project's 2-vCPU machine (`make bench`), so 25 calls per core; the smoothed loop lag limit as the emulator's.
CALLS_PER_CORE = 25.0
MAX_LAG_MS = 150.0
LAG_FLOOR = 4  # the lag refuses only while this many calls are live (below, it is not the calls' doing)
ENV_CALLS_PER_CORE = "VOICEBRIDGE_CALLS_PER_CORE"
ENV_MAX_LAG_MS = "VOICEBRIDGE_MAX_LAG_MS"


def capacity_limits(calls_per_core: float | None = None, max_lag_ms: float | None = None) -> CapacityLimits:
    """The defaults, then VOICEBRIDGE_CALLS_PER_CORE / VOICEBRIDGE_MAX_LAG_MS, then the flags given (not None);
    ValueError names a bad variable."""
    env = CapacityLimits.from_env(os.environ, ENV_CALLS_PER_CORE, ENV_MAX_LAG_MS, CALLS_PER_CORE, MAX_LAG_MS)
    return CapacityLimits(
        per_core=env.per_core if calls_per_core is None else calls_per_core,
        max_lag_ms=env.max_lag_ms if max_lag_ms is None else max_lag_ms,
    )


def add_console(app: web.Application, web_dir: Path | None = None) -> None:
    """The web console's files: `/` and everything outside /api/ (the front door of a cluster serves them too)."""
    if web_dir is None:
        # A directory on disk for the file responses: the installed package's own (as_file copies only from a zip).
        files = contextlib.ExitStack()
        web_dir = files.enter_context(resources.as_file(CONSOLE))

        async def _release(_: web.Application) -> None:
            files.close()

        app.on_cleanup.append(_release)
    app[WEB_DIR_KEY] = web_dir.resolve()
    app.router.add_get("/", _index)
    # Everything else outside /api/ is a file of the console (so an unknown /api/ path stays a JSON 404 or 405).
    app.router.add_get(r"/{path:(?!api/).+}", _static)


async def create_app(
    settings: Settings,
    *,
    call_factory: CallFactory | None = None,
    web_dir: Path | None = None,
    max_live_calls: int = 20,
    max_body_bytes: int = MAX_BODY_BYTES,
    security: SecurityPolicy | None = None,
    capacity: CapacityLimits | None = None,
    lag_meter: LagSource | None = None,
) -> web.Application:
    """The server as an aiohttp Application; on cleanup it hangs up every live call (reason `shutdown`).
    `capacity`: calls per core and the loop lag beyond which POST /api/calls gets 503 (`capacity_limits()` when
    None); `lag_meter`: what measures the loop's lag (tests inject one)."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[security_headers, errors_as_json])
    metrics = Metrics()  # this server's own registry: two apps in one process never share counters
    factory = observed(call_factory or default_call_factory(settings), metrics)
    manager = CallManager(factory, max_live=max_live_calls, artifacts_dir=settings.artifacts_dir)
    app[SETTINGS] = settings
    app[SETTINGS_BODY] = max_body_bytes
    app[MANAGER] = manager
    app[CAPACITY] = cap = Capacity("calls", capacity or capacity_limits(), lag_meter, lag_floor=LAG_FLOOR)

    async def _measure(_: web.Application) -> None:
        cap.start()

    async def _stop_measuring(_: web.Application) -> None:
        cap.stop()

    app.on_startup.append(_measure)
    app.on_cleanup.append(_stop_measuring)
    add_routes(app)
    add_join_routes(app)
    add_debug_routes(app)
    add_metrics_route(app, metrics)
    app.router.add_get("/api/calls/{call_id}/events", call_events)
    install_security(app, security or SecurityPolicy())  # Host names, management token, rate limits, CORS
    install_lifecycle(app)  # /readyz, 503 for new work while shutting down
    add_console(app, web_dir)

    async def _shutdown(_: web.Application) -> None:
        await manager.shutdown()

    app.on_shutdown.append(_shutdown)
    return app

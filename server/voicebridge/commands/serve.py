"""`voicebridge serve`: the console and its REST API on HOST:PORT, with the embedded emulator as the Realtime
backend unless OPENAI_API_KEY or --emulator-url says otherwise (backend.py), until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys

from aiohttp import web

from voicebridge import eventloop
from voicebridge.backend import Backend, realtime_backend
from voicebridge.edge.signals import stop_on_signals
from voicebridge.observability.logs import setup_logging_from_env
from voicebridge.signaling.app import capacity_limits, create_app
from voicebridge.signaling.lifecycle import graceful_shutdown
from voicebridge.signaling.security import SecurityConfigError, SecurityPolicy, is_loopback_host, policy_for_serve
from voicebridge.signaling.tls import TlsError, server_ssl_context


async def _serve(args: argparse.Namespace) -> int:
    try:
        workers, redis_url = _cluster_args(args)
    except ValueError as e:
        print(f"voicebridge serve: {e}", file=sys.stderr)
        return 2
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
    try:  # the capacity's environment variables, checked before anything starts
        capacity_limits(getattr(args, "calls_per_core", None), getattr(args, "max_lag_ms", None))
    except ValueError as e:
        print(f"voicebridge serve: {e}", file=sys.stderr)
        return 2
    try:  # before anything starts: off loopback, no certificate means no server (tls.py says why)
        ssl_context = server_ssl_context(args.host, getattr(args, "cert", None), getattr(args, "key", None))
    except TlsError as e:
        print(f"voicebridge serve: {e}", file=sys.stderr)
        return 2
    if workers != 1:  # a cluster: this process is its front door (cluster/local.py)
        from voicebridge.cluster.local import serve_cluster

        return await serve_cluster(args, workers, redis_url, policy, ssl_context)
    async with realtime_backend(
        emulator_url=args.emulator_url,
        browsers_off_loopback=not is_loopback_host(args.host),
        emulator_workers_flag=getattr(args, "emulator_workers", None),
        artifacts_dir=args.artifacts,
    ) as backend:
        return await _run_server(args, backend, policy, ssl_context)


async def _run_server(
    args: argparse.Namespace, backend: Backend, policy: SecurityPolicy, ssl_context: ssl.SSLContext | None
) -> int:
    settings = backend.settings
    app = await create_app(
        settings, security=policy,
        capacity=capacity_limits(getattr(args, "calls_per_core", None), getattr(args, "max_lag_ms", None)),
    )
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
    stop = stop_on_signals()
    await stop.wait()
    print("voicebridge serve: shutting down (refusing new calls, ending live ones)", flush=True)
    await graceful_shutdown(app, runner)
    return 0


def _cluster_args(args: argparse.Namespace) -> tuple[int, str]:
    """(workers, Redis URL): 1 is today's single process, with no Redis; any other number needs Redis."""
    text = str(getattr(args, "workers", "1") or "1")
    if text == "1":
        return 1, ""
    from voicebridge.extras import require

    require("cluster", "voicebridge serve --workers")  # before the cluster's modules import redis
    from voicebridge.cluster.local import worker_count

    workers = worker_count(text)
    redis_url = getattr(args, "redis", "") or os.environ.get("VOICEBRIDGE_REDIS_URL", "")
    if workers != 1 and not redis_url:
        raise ValueError(
            f"--workers {text} shares calls through Redis: give --redis redis://[:PASSWORD@]HOST:PORT/DB or set "
            "VOICEBRIDGE_REDIS_URL (without them, --workers 1 runs one process)"
        )
    return workers, redis_url


def main(args: argparse.Namespace) -> int:
    """`voicebridge serve [--host] [--port] [--artifacts DIR] [--emulator-url URL]`"""
    setup_logging_from_env()  # VOICEBRIDGE_LOG_FORMAT=json: one JSON object per line, with call_id
    return eventloop.run(_serve(args))

"""Metrics and log context for the signaling server: GET /metrics, and a call factory wrapper that makes
every call the server creates measured (Metrics.observe) and its tasks log with its call_id."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from .logs import CALL_ID
from .metrics import Metrics, ObservedCall

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
S = TypeVar("S")
C = TypeVar("C", bound=ObservedCall)


def observed(factory: Callable[[S], C], metrics: Metrics) -> Callable[[S], C]:
    """`factory` whose calls are measured; the caller's context (and so the call's start task, created right
    after in the same context) gets the call's id for logging."""

    def make(scenario: S) -> C:
        call = factory(scenario)
        metrics.observe(call)
        CALL_ID.set(call.id)
        return call

    return make


async def metrics_endpoint(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept", ""))
    # The content type carries its own version/charset parameters, so it goes in as a raw header.
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_metrics_route(app: web.Application, metrics: Metrics) -> None:
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_endpoint)

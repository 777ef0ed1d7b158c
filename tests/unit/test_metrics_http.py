"""GET /metrics and the `observed` call factory: every call the server makes is measured, per app."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.summaries import make_summary
from tests.unit.test_metrics import FakeCall
from voicebridge.observability.http import METRICS, add_metrics_route, observed
from voicebridge.observability.logs import CALL_ID
from voicebridge.observability.metrics import Metrics

pytestmark = pytest.mark.unit


async def test_metrics_endpoint_serves_the_apps_own_registry() -> None:
    apps = []
    for _ in range(2):
        app = web.Application()
        add_metrics_route(app, Metrics())
        apps.append(app)
    factory = observed(lambda scenario: FakeCall(f"call_{scenario}"), apps[0][METRICS])
    call: Any = factory("a")
    assert CALL_ID.get() == "call_a"  # the start task the manager creates next inherits it
    call.emit("state", "connecting")
    call.emit("ended", make_summary(call_id="call_a"))
    async with TestClient(TestServer(apps[0])) as c0, TestClient(TestServer(apps[1])) as c1:
        r0, r1 = await c0.get("/metrics"), await c1.get("/metrics")
        assert r0.status == 200 and r0.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        t0, t1 = await r0.text(), await r1.text()
        om = await c0.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await om.text()).rstrip().endswith("# EOF")
    assert 'voicebridge_calls_ended_total{end_reason="caller_hangup"} 1.0' in t0
    assert "voicebridge_calls_started_total 1.0" in t0
    assert "voicebridge_calls_started_total 0.0" in t1  # the other server saw nothing

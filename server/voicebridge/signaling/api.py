"""The REST API: start, list, inspect and hang up calls (a call's timeline figure too); list scenarios and the
bodies' schemas; health.

Errors are JSON with a 4xx status and no response carries the API key (http.py, shared with the other routes).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from voicebridge.diagnostics.sdp_explain import SdpError, explain
from voicebridge.lab.timeline_figure import render_timeline
from voicebridge.media.loopback import is_local_url
from voicebridge.scenarios.model import ScenarioError, builtin_names, load_scenario

from .bodies import NoFields, StartCall, schemas
from .calls import CallRecord, TooManyCalls
from .ended import EndedCall
from .http import CAPACITY, MANAGER, SETTINGS, ApiError, find_record, json_response, read_body, verify_grant


async def create_call(request: web.Request) -> web.Response:
    name = (await read_body(request, StartCall)).scenario
    # Only built-in names over the network: a path would let any client read files on the server.
    if name not in builtin_names():
        raise ApiError(422, f"unknown scenario {name!r}; built-in: {', '.join(builtin_names())}")
    try:
        scenario = load_scenario(name)
    except ScenarioError as e:
        raise ApiError(422, f"scenario {name!r} is invalid: {e}") from None
    manager = request.app[MANAGER]
    # Full (calls per core, event-loop lag): refuse now, clearly, rather than start a call that would starve the
    # ones already running. A call accepted is never dropped for load.
    full = request.app[CAPACITY].refusal(len(manager.live()))
    if full is not None:
        raise ApiError(
            503, f"the server is full: {full.message}; try again in {full.retry_after_s} s", "overloaded",
            headers={"Retry-After": str(full.retry_after_s)},
        )
    try:
        rec = manager.start(scenario)
    except TooManyCalls as e:
        raise ApiError(429, str(e), "too_many_calls") from None
    location = f"/api/calls/{rec.call.id}"
    return json_response(request, manager.view(rec), 201, headers={"Location": location})


async def list_calls(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    rows = [manager.view(r) for r in manager.records()]
    return json_response(request, {"calls": rows, "live": sum(1 for r in rows if r["state"] != "ended")})


async def get_call(request: web.Request) -> web.Response:
    return json_response(request, await request.app[MANAGER].detail(find_record(request)))


async def call_timeline(request: web.Request) -> web.Response:
    """The call's timeline figure (SVG, voicebridge/lab/timeline_figure.py), drawn from its summary now: so far
    for a live call, from summary.json once it has ended."""
    rec = find_record(request)
    if isinstance(rec.call, EndedCall):
        svg = await asyncio.to_thread(lambda: render_timeline(rec.call.summary()))
    else:
        svg = render_timeline(rec.call.summary())
    # An SVG opened on its own is a document: it must not run anything or pull anything in.
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}
    return web.Response(text=svg, content_type="image/svg+xml", headers=headers)


async def hangup_call(request: web.Request) -> web.Response:
    """The operator's hang-up; with a takeover token (join.py issues them) the taking-over human's, which ends the
    whole call as `human_hangup` by `human`."""
    rec = find_record(request)
    human = "Authorization" in request.headers
    if human:
        verify_grant(request, rec, "takeover")
    await read_body(request, NoFields)  # an empty body or {}; a malformed one is still an error
    manager = request.app[MANAGER]
    if rec.ended or rec.call.state in ("ending", "ended"):
        raise ApiError(409, f"call {rec.call.id} is already {rec.call.state}", "conflict")
    if human:
        manager.hangup(rec, "human_hangup", "human")
    else:
        manager.hangup(rec)
    return json_response(request, manager.view(rec), 202)


_ICE_PWD = re.compile(r"^(a=ice-pwd:)\S+", re.MULTILINE)


async def call_sdp(request: web.Request) -> web.Response:
    """Each agent leg's offer and answer, raw (ICE passwords masked) and explained, with pair warnings."""
    rec = find_record(request)
    loopback = is_local_url(request.app[SETTINGS].base_url)
    legs = []
    for role, offer, answer in await _leg_sdps(rec):
        row: dict[str, Any] = {"role": role, "offer": _ICE_PWD.sub(r"\1***", offer),
                               "answer": _ICE_PWD.sub(r"\1***", answer), "explained": None, "error": None}
        if offer:
            try:
                row["explained"] = explain(offer, answer or None, expect_loopback=loopback)
            except SdpError as e:
                row["error"] = str(e)
        legs.append(row)
    return json_response(request, {"call_id": rec.call.id, "legs": legs})


async def _leg_sdps(rec: CallRecord) -> list[tuple[str, str, str]]:
    """(role, offer, answer) of each agent leg: from the live call, or from debug.json once it has ended."""
    if isinstance(rec.call, EndedCall):
        saved = await asyncio.to_thread(rec.call.saved_debug)
        return [
            (str(leg.get("role")), str(leg.get("offer") or ""), str(leg.get("answer") or ""))
            for leg in saved.get("legs") or []
            if isinstance(leg, dict)
        ]
    return [
        (role, getattr(leg, "offer_sdp", ""), getattr(leg, "answer_sdp", ""))
        for role, leg in (getattr(rec.call, "legs", None) or {}).items()
    ]


async def list_scenarios(request: web.Request) -> web.Response:
    rows: list[dict[str, Any]] = []
    for name in builtin_names():
        try:
            s = load_scenario(name)
        except ScenarioError as e:
            rows.append({"name": name, "error": str(e)})
            continue
        rows.append(
            {
                "name": s.name,
                "title": s.title,
                "first_speaker": s.first_speaker,
                "tools": bool(s.tools),
                "max_duration_s": s.max_duration_s,
            }
        )
    return json_response(request, {"scenarios": rows})


async def body_schemas(request: web.Request) -> web.Response:
    """The JSON schema of each route's body, for clients that generate or check their requests."""
    return json_response(request, {"bodies": schemas()})


async def healthz(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    backend = "openai" if settings.uses_openai else "emulator"
    return json_response(
        request, {"ok": True, "backend": backend, "live_calls": len(request.app[MANAGER].live())}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls", create_call)
    app.router.add_get("/api/calls", list_calls)
    app.router.add_get("/api/calls/{call_id}", get_call)
    app.router.add_post("/api/calls/{call_id}/hangup", hangup_call)
    app.router.add_get("/api/calls/{call_id}/sdp", call_sdp)
    app.router.add_get("/api/calls/{call_id}/timeline.svg", call_timeline)
    app.router.add_get("/api/scenarios", list_scenarios)
    app.router.add_get("/api/schema", body_schemas)
    app.router.add_get("/healthz", healthz)

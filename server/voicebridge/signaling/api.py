"""The REST API: start, list, inspect and hang up calls; list scenarios; health.

Every error is JSON `{"error": {"message", "type"}}` with a 4xx/5xx status, whatever raised it (aiohttp's
own 413/404/405 included), and no response body ever contains the API key (checked on the way out, not
trusted).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from voicebridge.config import Settings
from voicebridge.diagnostics.sdp_explain import SdpError, explain
from voicebridge.media.loopback import is_local_url
from voicebridge.scenarios.model import ScenarioError, builtin_names, load_scenario

from .bodies import B, BodyError, NoFields, StartCall, parse_body, schemas
from .calls import CallManager, CallRecord, TooManyCalls

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a start request is tiny; anything bigger is a mistake or an attack
MANAGER: web.AppKey[CallManager] = web.AppKey("manager", CallManager)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SETTINGS_BODY: web.AppKey[int] = web.AppKey("max_body", int)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REDACTED = "[redacted]"


class ApiError(Exception):
    """An error the client can fix, with the status it deserves."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status_code, self.message, self.kind = status, message, kind


def safe_dumps(app: web.Application, data: Any) -> str:
    """JSON text for a client. Defence in depth: nothing should ever carry the API key, but if it does it
    stops here."""
    text = json.dumps(data, default=str)
    key = app[SETTINGS].api_key
    if key and key in text:
        log.error("a message to a client contained the API key; redacted")
        text = text.replace(key, _REDACTED)
    return text


def json_response(request: web.Request, data: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.Response(
        text=safe_dumps(request.app, data), status=status, content_type="application/json", **kw
    )


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return json_response(request, error_body(e.message, e.kind), e.status_code)
    except web.HTTPRequestEntityTooLarge:
        msg = f"request body is over the {request.app[SETTINGS_BODY]}-byte limit"
        return json_response(request, error_body(msg, "request_too_large"), 413)
    except web.HTTPException as e:
        if e.status_code < 400 or not request.path.startswith("/api/"):
            raise
        msg = f"{request.method} {request.path}: {e.reason}"
        return json_response(request, error_body(msg, "invalid_request_error"), e.status_code)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response(
            request, error_body("internal server error (see the server log)", "server_error"), 500
        )


async def read_body(request: web.Request, model: type[B]) -> B:
    """The request's JSON body as `model` (bodies.py): 415 if it is not JSON, 413 over the size limit, 400
    naming the field otherwise."""
    ctype = request.content_type
    if request.can_read_body and ctype not in ("application/json", "application/octet-stream", ""):
        raise ApiError(415, f"send JSON (Content-Type: application/json), not {ctype}")
    raw = await request.read()  # bounded by the app's client_max_size (413 beyond it)
    try:
        return parse_body(raw, model)
    except BodyError as e:
        raise ApiError(400, str(e)) from None


def find_record(request: web.Request) -> CallRecord:
    call_id = request.match_info["call_id"]
    rec = request.app[MANAGER].get(call_id)
    if rec is None:
        raise ApiError(404, f"no call with id {call_id[:80]!r}", "not_found")
    return rec


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
    return json_response(request, request.app[MANAGER].view(find_record(request), detail=True))


async def hangup_call(request: web.Request) -> web.Response:
    if "Authorization" in request.headers:  # a taking-over human hangs up with a join token (join.py)
        from .join import human_hangup

        return await human_hangup(request)
    rec = find_record(request)
    await read_body(request, NoFields)  # an empty body or {}; a malformed one is still an error
    manager = request.app[MANAGER]
    if rec.ended or rec.call.state in ("ending", "ended"):
        raise ApiError(409, f"call {rec.call.id} is already {rec.call.state}", "conflict")
    manager.hangup(rec)
    return json_response(request, manager.view(rec), 202)


_ICE_PWD = re.compile(r"^(a=ice-pwd:)\S+", re.MULTILINE)


async def call_sdp(request: web.Request) -> web.Response:
    """Each agent leg's offer and answer, raw (ICE passwords masked) and explained, with pair warnings."""
    rec = find_record(request)
    loopback = is_local_url(request.app[SETTINGS].base_url)
    legs = []
    for role, leg in (getattr(rec.call, "legs", None) or {}).items():
        offer, answer = getattr(leg, "offer_sdp", ""), getattr(leg, "answer_sdp", "")
        row: dict[str, Any] = {"role": role, "offer": _ICE_PWD.sub(r"\1***", offer),
                               "answer": _ICE_PWD.sub(r"\1***", answer), "explained": None, "error": None}
        if offer:
            try:
                row["explained"] = explain(offer, answer or None, expect_loopback=loopback)
            except SdpError as e:
                row["error"] = str(e)
        legs.append(row)
    return json_response(request, {"call_id": rec.call.id, "legs": legs})


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
    app.router.add_get("/api/scenarios", list_scenarios)
    app.router.add_get("/api/schema", body_schemas)
    app.router.add_get("/healthz", healthz)

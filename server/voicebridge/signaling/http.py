"""What every route of the signaling API shares: the app's keys, the JSON error shape, reading a body, finding the
call a path names, checking a join token.

Every error is JSON `{"error": {"message", "type"}}` with a 4xx/5xx status, whatever raised it (aiohttp's own
413/404/405 included, through `errors_as_json`), and no response body ever contains the API key (`safe_dumps`
checks on the way out, it does not trust). The route modules (api.py, join.py, debug.py, events_ws.py, ...) import
from here and never from each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from voicebridge.config import Settings
from voicebridge.observability.capacity import Capacity

from .bodies import B, BodyError, parse_body
from .calls import CallManager, CallRecord
from .tokens import Grant, TokenError, TokenSigner, bearer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a start request is tiny; anything bigger is a mistake or an attack
MANAGER: web.AppKey[CallManager] = web.AppKey("manager", CallManager)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
SETTINGS_BODY: web.AppKey[int] = web.AppKey("max_body", int)
TOKENS: web.AppKey[TokenSigner] = web.AppKey("tokens", TokenSigner)
CAPACITY: web.AppKey[Capacity] = web.AppKey("capacity", Capacity)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REDACTED = "[redacted]"


class ApiError(Exception):
    """An error the client can fix (or, 5xx, retry), with the status it deserves and any headers it needs."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code, self.message, self.kind = status, message, kind
        self.headers = headers or {}


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
        return json_response(request, error_body(e.message, e.kind), e.status_code, headers=e.headers)
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


def verify_grant(request: web.Request, rec: CallRecord, role: str | None = None) -> Grant:
    """The join token in the Authorization header, checked against this call (and `role`): 401/403 otherwise."""
    try:
        return request.app[TOKENS].verify(bearer(request.headers.get("Authorization")), rec.call.id, role)
    except TokenError as e:
        raise ApiError(e.status, e.message, e.kind) from None

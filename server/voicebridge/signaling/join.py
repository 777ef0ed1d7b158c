"""Browser join endpoints: tokens, listen / take over (SDP offer -> answer), hand back, human hang-up.

  POST /api/calls/{id}/tokens     {"role": "listen"|"takeover", "ttl_s"?}  -> 201 {token, role, call_id, expires_at}
  POST /api/calls/{id}/join       Authorization: Bearer <token>; the offer as application/sdp (-> answer as
                                  application/sdp) or JSON {"sdp", "type": "offer"} (-> JSON {sdp, type,
                                  participant_id, role}). `?role=` may state the role wanted: it must match the
                                  token's (a listen token asking to take over gets 403). `?impair=SPEC` impairs
                                  this browser's own path (a profile or spec; a human may give
                                  `bridge>browser: SPEC; browser>bridge: SPEC`), `?impair_seed=N` seeds it
                                  (default: the scenario's impair_seed); a bad one is a 400 naming the field.
  POST /api/calls/{id}/handback   takeover token -> 200 {participant_id, reason, told_caller_agent}
  POST /api/calls/{id}/leave      any join token, JSON {"participant_id"} -> 200
  POST /api/calls/{id}/hangup     with a takeover token: the human hangs up (end_reason `human_hangup`;
                                  api.py, where the operator's hang-up without a token is too).
  GET  /api/calls/{id}/participants -> {participants: [...]}

The JSON bodies are bodies.py's models (unknown fields and wrong types are 400s naming the field). Token errors
are 401 (missing, malformed, forged, expired) or 403 (another call, another role), JSON like every other error.
Only the token's grant decides the role: a listener's answer is always send-only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from voicebridge.scenarios.impairment import BrowserImpairment, ImpairSpecError, parse_browser

from .bodies import Leave, NoFields, Offer, TokenRequest
from .calls import CallRecord
from .http import SETTINGS, TOKENS, ApiError, find_record, json_response, read_body, verify_grant
from .tokens import ROLES, TokenSigner

if TYPE_CHECKING:
    from voicebridge.bridge.participants import Participants

log = logging.getLogger(__name__)

PARTICIPANTS: web.AppKey[dict[str, Any]] = web.AppKey("participants", dict)


def _participants(request: web.Request, rec: CallRecord, create: bool = True) -> Participants | None:
    table: dict[str, Participants] = request.app[PARTICIPANTS]
    found = table.get(rec.call.id)
    if found is None and create:
        if rec.ended or rec.call.state in ("ending", "ended"):  # (a retired call is no Call object any more)
            raise ApiError(409, f"call {rec.call.id} is {rec.call.state}; nobody can join it", "conflict")
        from voicebridge.bridge.call import Call
        from voicebridge.bridge.participants import Participants

        if not isinstance(rec.call, Call):
            raise ApiError(501, "this server's calls do not support browser participants", "not_supported")
        settings = request.app[SETTINGS]
        found = table[rec.call.id] = Participants(
            rec.call, ice_servers=settings.ice_servers, connect_timeout_s=settings.join_connect_timeout_s
        )
        rec.call.on("ended", lambda _summary: table.pop(rec.call.id, None))
    return found


async def create_token(request: web.Request) -> web.Response:
    rec = find_record(request)
    body = await read_body(request, TokenRequest)
    if rec.ended or rec.call.state in ("ending", "ended"):
        raise ApiError(409, f"call {rec.call.id} is {rec.call.state}; nobody can join it", "conflict")
    try:
        token, grant = request.app[TOKENS].issue(rec.call.id, body.role, body.ttl_s)
    except ValueError as e:
        raise ApiError(400, str(e)) from None
    data = {"token": token, "role": grant.role, "call_id": grant.call_id, "expires_at": grant.expires_at}
    return json_response(request, data, 201)


async def join(request: web.Request) -> web.Response:
    from voicebridge.bridge.participants import JoinError

    rec = find_record(request)
    grant = verify_grant(request, rec)
    wanted = request.query.get("role")
    if wanted is not None and wanted != grant.role:
        if wanted not in ROLES:
            raise ApiError(400, f"`role` must be one of {list(ROLES)}, got {wanted[:40]!r}")
        raise ApiError(403, f"a {grant.role!r} token cannot {wanted}; ask for a {wanted!r} token", "wrong_role")
    impair, seed = _impairment(request)
    as_json = request.content_type == "application/json"
    if as_json:
        offer = (await read_body(request, Offer)).sdp
    elif request.content_type == "application/sdp":
        offer = await request.text()
    else:
        raise ApiError(415, f"send the SDP offer as application/sdp or JSON, not {request.content_type}")
    participants = _participants(request, rec)
    assert participants is not None
    try:
        p = await participants.join(grant.role, offer, request.app[SETTINGS].session_timeout_s, impair, seed)
    except JoinError as e:
        raise ApiError(e.status, e.message, e.kind) from None
    headers = {"X-Participant-Id": p.id, "Location": f"/api/calls/{rec.call.id}/participants/{p.id}"}
    if as_json:
        data = {"type": "answer", "sdp": p.answer_sdp, "participant_id": p.id, "role": p.role}
        return json_response(request, data, 201, headers=headers)
    return web.Response(text=p.answer_sdp, status=201, content_type="application/sdp", headers=headers)


MAX_IMPAIR_CHARS = 256  # `bridge>browser: 3g,loss=10%; browser>bridge: ...` is well under it


def _impairment(request: web.Request) -> tuple[BrowserImpairment | None, int | None]:
    """The join's `?impair=` and `?impair_seed=` (the offer may be SDP, so they are query parameters like `role`)."""
    text, seed_text = request.query.get("impair"), request.query.get("impair_seed")
    impair = seed = None
    if text is not None:
        if len(text) > MAX_IMPAIR_CHARS:
            raise ApiError(400, f"`impair` must be at most {MAX_IMPAIR_CHARS} characters")
        try:
            impair = parse_browser(text)
        except ImpairSpecError as e:
            raise ApiError(400, f"`impair`: {e}") from None
    if seed_text is not None:
        try:
            seed = int(seed_text)
        except ValueError:
            raise ApiError(400, f"`impair_seed` must be an integer, got {seed_text[:40]!r}") from None
        if not 0 <= seed < 2**31:
            raise ApiError(400, f"`impair_seed` must be 0 to {2**31 - 1}, got {seed}")
    return impair, seed


async def handback(request: web.Request) -> web.Response:
    from voicebridge.bridge.participants import JoinError

    rec = find_record(request)
    verify_grant(request, rec, "takeover")
    await read_body(request, NoFields)
    participants = _participants(request, rec, create=False)
    if participants is None:
        raise ApiError(409, "nobody has taken over this call", "conflict")
    try:
        result = await participants.handback("handback")
    except JoinError as e:
        raise ApiError(e.status, e.message, e.kind) from None
    return json_response(request, result)


async def leave(request: web.Request) -> web.Response:
    rec = find_record(request)
    grant = verify_grant(request, rec)
    pid = (await read_body(request, Leave)).participant_id
    participants = _participants(request, rec, create=False)
    if participants is None or pid not in participants.members:
        raise ApiError(404, f"no participant {pid!r} on this call", "not_found")
    if participants.members[pid].role != grant.role:
        raise ApiError(403, "a token of another role cannot remove this participant", "wrong_role")
    await participants.leave(pid, "left")
    return json_response(request, {"participant_id": pid, "left": True})


async def list_participants(request: web.Request) -> web.Response:
    rec = find_record(request)
    participants = _participants(request, rec, create=False)
    return json_response(request, {"participants": participants.view() if participants else []})


def add_join_routes(app: web.Application, tokens: TokenSigner | None = None) -> None:
    app[TOKENS] = tokens or TokenSigner.from_env()
    app[PARTICIPANTS] = {}
    app.router.add_post("/api/calls/{call_id}/tokens", create_token)
    app.router.add_post("/api/calls/{call_id}/join", join)
    app.router.add_post("/api/calls/{call_id}/handback", handback)
    app.router.add_post("/api/calls/{call_id}/leave", leave)
    app.router.add_get("/api/calls/{call_id}/participants", list_participants)

    async def _close_all(app: web.Application) -> None:
        for participants in list(app[PARTICIPANTS].values()):
            await participants.close()

    app.on_shutdown.append(_close_all)

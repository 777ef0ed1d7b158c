"""The JSON bodies the signaling API takes, as pydantic models: one per POST route (`BODIES`).

A body is read in two steps. `edge.json_body.parse_json` first, so hostile JSON (`[` x 16,000, a 5,000-digit
number, NaN) is refused with a reason before any model sees it; then the route's model: unknown fields are
refused (a misspelt `ttl` must not silently mean "the default lifetime"), types are strict (`"scenario": 7` or
`"ttl_s": "60"` is a client's mistake, not something to coerce), enumerations are Literals and numbers have
bounds. `parse_body` raises BodyError with one line naming the field, what was expected and what was given
(validation.explain); http.py's read_body turns it into the API's JSON error with status 400.

Semantic checks stay with the routes, with their own statuses: a scenario name that is not built in (422), a
call that has ended (409), a participant that is not on the call (404).

This module imports nothing from the routes, so every route module can use it.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voicebridge.edge.json_body import JsonBodyError, parse_json
from voicebridge.validation import explain, kind

from .tokens import MAX_TTL_S, MIN_TTL_S, Role

MAX_SCENARIO_NAME = 64  # built-in names are short identifiers; GET /api/scenarios lists them
MAX_PARTICIPANT_ID = 64  # ours are `p_` + 8 hex digits


class BodyError(ValueError):
    """A request body this API does not take; the message says what is wrong (a 400 for the client)."""


class Body(BaseModel):
    """A request body: a JSON object with only these fields, values of exactly these JSON types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class StartCall(Body):
    """`POST /api/calls`: start a call."""

    scenario: str = Field(
        "late_order",
        min_length=1,
        max_length=MAX_SCENARIO_NAME,
        description="a built-in scenario's name (GET /api/scenarios); never a path",
    )


class TokenRequest(Body):
    """`POST /api/calls/{call_id}/tokens`: a join token for one role on this call."""

    role: Role = Field(description="`listen` (receive only) or `takeover` (speak instead of the caller agent)")
    ttl_s: float | None = Field(
        None,
        ge=MIN_TTL_S,
        le=MAX_TTL_S,
        description="the token's lifetime in seconds (default 600, or VOICEBRIDGE_TOKEN_TTL_S)",
    )


class Offer(Body):
    """`POST /api/calls/{call_id}/join` as JSON: the browser's RTCSessionDescription (its toJSON())."""

    type: Literal["offer"] = Field("offer", description="always `offer`: the server answers")
    sdp: str = Field(min_length=1, description="the browser's SDP offer, with its ICE candidates")


class Leave(Body):
    """`POST /api/calls/{call_id}/leave`: one participant of the token's role leaves."""

    participant_id: str = Field(
        min_length=1, max_length=MAX_PARTICIPANT_ID, description="the id the join answered with"
    )


class NoFields(Body):
    """`hangup` and `handback` need nothing: an empty body or `{}`."""


BODIES: dict[str, type[Body]] = {
    "POST /api/calls": StartCall,
    "POST /api/calls/{call_id}/tokens": TokenRequest,
    "POST /api/calls/{call_id}/join": Offer,
    "POST /api/calls/{call_id}/leave": Leave,
    "POST /api/calls/{call_id}/handback": NoFields,
    "POST /api/calls/{call_id}/hangup": NoFields,
}

B = TypeVar("B", bound=Body)


def parse_body(raw: bytes, model: type[B]) -> B:
    """The body in `raw` as `model` (an empty body is `{}`: the model's defaults); BodyError saying why not."""
    value: Any = {}
    if raw.strip():
        try:  # depth and number sizes bounded: `[` x 16,000 or a 5,000-digit number is a 400, not a 500
            value = parse_json(raw)
        except JsonBodyError as e:
            raise BodyError(f"request body is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BodyError(f"request body must be a JSON object, got {kind(value)}")
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise BodyError(f"invalid request body: {explain(e, model)}") from None


def schemas() -> dict[str, dict[str, Any]]:
    """Each route's body as a JSON schema (GET /api/schema)."""
    return {route: model.model_json_schema() for route, model in BODIES.items()}

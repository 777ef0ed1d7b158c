"""The Leg interface: one Realtime session as the bridge sees it, whatever the transport.

Events out (pyee):
  "server_event"(dict)   every server event, in order (validated with the SDK's types; invalid ones are
                         logged, counted and still emitted with the rest, since an unknown event is not fatal)
  "client_event"(dict)   every client event we sent, with its event_id
  "failed"(str)          the transport broke (data channel or peer connection closed without our hang-up)
  "closed"()             the leg is closed (after hangup() or a failure)
  "peer_connection"(pc)  WebRTC legs: the new RTCPeerConnection, before any negotiation (for debug recorders)
  "state"(str)           every change of `state` (connecting, open, closing, closed, failed)
  "call_created"(id)     WebRTC legs: the Realtime call exists (answer received), before session.created
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
from typing import TYPE_CHECKING, Annotated, Any, Literal

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter, ValidationError
from pyee.asyncio import AsyncIOEventEmitter

if TYPE_CHECKING:
    from voicebridge.media.passthrough import InboundTap, OutboundAudio

log = logging.getLogger(__name__)

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])

LegState = Literal["new", "connecting", "open", "closing", "closed", "failed"]


MAX_PROBLEM_CHARS = 300  # pydantic lists every known tag for an unknown type: keep the start
MAX_INVALID_KEPT = 100  # invalid events kept for stats/debugging; a flood of junk must not grow memory
MAX_KEPT_EVENT_CHARS = 2000


def _bounded(event: dict[str, Any]) -> dict[str, Any]:
    """The event itself when small, else its type and a note (a huge bad event is not kept whole)."""
    size = len(json.dumps(event, default=str))
    if size <= MAX_KEPT_EVENT_CHARS:
        return event
    return {"type": event.get("type"), "truncated": f"{size} characters"}


class InvalidClientEvent(ValueError):
    """The bridge tried to send an event the API would reject; a bug in the bridge, raised at once."""


def validate_server_event(event: dict[str, Any]) -> str | None:
    """None when valid, else a short description of what is wrong."""
    try:
        SERVER_EVENT.validate_python(event)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{event.get('type')!r}: {where}: {first.get('msg')}"
    return None


class Leg(AsyncIOEventEmitter):
    """Base class with the parts every transport shares: event ids, validation, state and signals."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.call_id: str | None = None
        self._state: LegState = "new"
        self.failure: str | None = None
        self.invalid_events: list[dict[str, Any]] = []
        self.events_in = 0
        self.events_out = 0
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._prefix = f"vb_{role[:6]}_{secrets.token_hex(3)}_"
        self.audio_in: InboundTap | None = None
        self.audio_out: OutboundAudio | None = None
        self.session: dict[str, Any] = {}

    # -- subclasses implement --------------------------------------------------------------------------------
    async def connect(self, session: dict[str, Any]) -> None:
        raise NotImplementedError

    async def hangup(self) -> None:
        raise NotImplementedError

    async def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def _transmit(self, text: str) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------
    @property
    def state(self) -> LegState:
        return self._state

    @state.setter
    def state(self, value: LegState) -> None:
        if value != self._state:
            self._state = value
            self.emit("state", value)

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def send(self, event: dict[str, Any]) -> str:
        """Validate a client event, give it an event_id, send it; returns the event_id."""
        if self.state != "open":
            raise InvalidClientEvent(f"{self.role} leg is {self.state}; cannot send {event.get('type')!r}")
        event = dict(event)
        event.setdefault("event_id", f"{self._prefix}{next(self._ids)}")
        try:
            CLIENT_EVENT.validate_python(event)
        except ValidationError as e:
            raise InvalidClientEvent(
                f"{self.role} leg: invalid client event {event.get('type')!r}: {e}"
            ) from e
        self._transmit(json.dumps(event))
        self.events_out += 1
        self.emit("client_event", event)
        return str(event["event_id"])

    def _received(self, event: dict[str, Any]) -> None:
        problem = validate_server_event(event)
        if problem is not None:
            problem = problem if len(problem) <= MAX_PROBLEM_CHARS else problem[:MAX_PROBLEM_CHARS] + "..."
            log.warning("%s leg: server event failed validation: %s", self.role, problem)
            self.invalid_events.append({"problem": problem, "event": _bounded(event)})
            del self.invalid_events[:-MAX_INVALID_KEPT]
        self.events_in += 1
        self.emit("server_event", event)

    def _fail(self, reason: str) -> None:
        if self.state in ("closing", "closed", "failed"):
            return
        log.warning("%s leg failed: %s", self.role, reason)
        self.state = "failed"
        self.failure = reason
        self.emit("failed", reason)

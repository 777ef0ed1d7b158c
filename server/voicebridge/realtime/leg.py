"""The Leg interface: one Realtime session as the bridge sees it, whatever the transport.

`Leg` is an abstract base class. The transports (realtime/webrtc.py, realtime/websocket.py) implement four
methods: `connect`, `hangup`, `stats` and `_transmit` (the one primitive `send` needs); everything else (event
ids, validation of both directions, the state and its signals, the audio ends) is shared here. The Call uses
only what is declared here, so a new transport is a new subclass and nothing else.

States: new -> connecting -> open -> closing -> closed, or failed (from connecting or open). A failed leg still
gets `hangup()` (which ends whatever it created) and keeps the state "failed".

Events out (pyee):
  "server_event"(dict)   every server event, in order (validated with the SDK's types; invalid ones are
                         logged, counted and still emitted with the rest, since an unknown event is not fatal)
  "client_event"(dict)   every client event we sent, with its event_id
  "failed"(str)          the transport broke after connect() returned (while connecting, connect() raises)
  "closed"()             the leg is closed (after hangup() or a failure), once
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
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, TypedDict

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import Field, TypeAdapter, ValidationError
from pyee.asyncio import AsyncIOEventEmitter

if TYPE_CHECKING:
    from voicebridge.media.passthrough import InboundTap, OutboundAudio

log = logging.getLogger(__name__)

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])

LegState = Literal["new", "connecting", "open", "closing", "closed", "failed"]


class LegStats(TypedDict):
    """What every leg's `stats()` holds; each transport adds its own keys (a TypedDict extending this one)."""

    role: str
    call_id: str | None
    state: LegState
    events_in: int
    events_out: int
    invalid_events: int  # server events that failed validation or could not be parsed
    failure: NotRequired[str]  # why the leg failed, when it did


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


class Leg(AsyncIOEventEmitter, ABC):
    """One Realtime session. Subclasses implement the transport: `connect`, `hangup`, `stats`, `_transmit`.

    Shared here: `role`, `call_id`, `state` (and its "state" signal), `failure`, `session` (as applied),
    `send` (event ids, validation, "client_event"), `_received` (validation, counting, "server_event"),
    `_fail` ("failed"), `closed` (set once the leg is closed), and the audio ends the relay joins:
    `audio_in` (the agent's voice, as Opus packets) and `audio_out` (what the agent hears), both set by the
    time `connect()` returns.
    """

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

    # -- the transport implements -----------------------------------------------------------------------------
    @abstractmethod
    async def connect(self, session: dict[str, Any]) -> None:
        """Open the Realtime session with this `session` configuration; returns once it is ready.

        Called once, on a "new" leg (again: LegError). State "connecting" at once, "open" on return; by then
        `call_id`, `session`, `audio_in` and `audio_out` are set, `session.created` has been received (and
        emitted as a "server_event") and `send()` works.
        Raises LegError naming what went wrong (refused key or session, unreachable server, no answer within
        `session_timeout_s`); the state is then "failed" and "failed" is NOT emitted (the exception says it).
        Cancelled (a hang-up or shutdown while connecting): whatever it created, or is still creating, is ended
        before CancelledError propagates, and the leg ends "closed" ("failed" if it had failed first).
        """

    @abstractmethod
    async def hangup(self) -> None:
        """End the Realtime session and close the transport; returns once the leg is closed.

        May be called in any state, more than once and concurrently: every call waits for the one close.
        State "closing", then "closed" (a failed leg stays "failed"); `closed` is set and "closed" emitted once.
        Best effort: a session already gone is not an error, and nothing is raised for it (problems are logged).
        """

    @abstractmethod
    async def stats(self) -> LegStats:
        """A JSON-able snapshot: the shared counters (`_base_stats()`) plus the transport's own keys.

        May be called in any state; does not raise because the transport is closed or broken (it leaves out
        what it cannot read).
        """

    @abstractmethod
    def _transmit(self, text: str) -> None:
        """Put one serialised client event on the wire, without waiting (queue it if the transport must).

        Called only by `send()`, with an event already validated and numbered. Raises LegError when the
        transport cannot take it now (not open yet, or closed).
        """

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

    def _base_stats(self) -> LegStats:
        """The part of `stats()` every transport has."""
        out: LegStats = {
            "role": self.role,
            "call_id": self.call_id,
            "state": self.state,
            "events_in": self.events_in,
            "events_out": self.events_out,
            "invalid_events": len(self.invalid_events),
        }
        if self.failure:
            out["failure"] = self.failure
        return out

    def send(self, event: dict[str, Any]) -> str:
        """Validate a client event, give it an event_id, send it; returns the event_id.

        Only while "open": otherwise, or when the event is one the API would reject, InvalidClientEvent (a bug
        in the bridge). The transport's LegError passes through. Emits "client_event" once it is sent.
        """
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

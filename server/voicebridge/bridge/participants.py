"""Browsers on a call: silent listeners and a human who takes over as the caller (the server answers).

The browser is the offerer; the server answers with aiortc (no STUN) and binds pass-through audio to the
transceivers the offer created (``OutboundAudio.bind``):

* listener: the offer's first two audio m-lines carry the caller party and the CS party. The server's answer
  is ``sendonly`` on both whatever the offer asked for, and nothing ever taps a listener's receiver, so a
  listener can never put audio into the call.
* take-over: the first audio m-line is ``sendrecv``: the human's microphone in, the CS agent out. The switch
  happens on the human's FIRST packet (not when the answer is sent) so the CS leg hears the caller agent up
  to the moment it hears the human, with the stream re-based in between (no timestamp jump, no long gap).
  The caller agent is then on hold: muted, still connected, still hearing the CS agent but with its turn
  detection switched off (session.update), so it cannot answer a conversation it is no longer part of.
  Hand-back (asked for, or automatic when the browser vanishes: peer connection failed/closed, or no RTP for
  ``media_timeout_s``) gives the call back; once the CS agent is quiet (it may be mid-sentence) the caller
  agent's turn detection goes back on, its input buffer is cleared, and it is told what the CS agent said
  meanwhile (a user message, then response.create).

Seats are bounded (MAX_LISTENERS listeners and one human at once) and taken atomically: the limit is checked and
the seat reserved before the join's first await, so concurrent joins cannot all pass the same check. A browser
that got its answer but whose peer connection is not up within `connect_timeout_s` is dropped (its seat and peer
connection freed).

Both need a relay that can do it (media/relay.py): listeners a `FanOut`, a take-over a `Switchable`. A call
whose relay cannot (two WebSocket legs: `PcmRelay`) refuses the join with a 409 saying why, before any peer
connection is made.

A join may bring an impairment of its own (`impair`, scenarios/impairment.py parse_browser): the browser's
downlink streams go through an ImpairedSink each (caller party seed S, CS party S + 1) and a human's microphone
through an ImpairedTap (S + 2) before the relay sees it; S is the join's seed, else the scenario's impair_seed.
What they applied goes into the call summary's `browser_impairment` (docs/impairment.md).

Each of these is written to the call's event stream and events.jsonl as a `bridge` note (participant.joined/left,
takeover.started, takeover.handback, takeover.briefed). All peer connections close when the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from voicebridge.media.impair import ImpairedSink, ImpairedTap
from voicebridge.media.passthrough import InboundTap, OutboundAudio, RtpAudio
from voicebridge.media.relay import AudioSink, FanOut, PacketSource, Relay, Switchable
from voicebridge.results import BrowserImpairStats, EventRecord
from voicebridge.scenarios.impairment import BrowserImpairment

if TYPE_CHECKING:
    from .call import Call

log = logging.getLogger(__name__)

ParticipantRole = Literal["listen", "takeover"]
MAX_LISTENERS = 16  # at once, joining ones included
MAX_LEFT_KEPT = 64  # participants that left, kept for the participants view; older ones are forgotten
CONNECT_TIMEOUT_S = 30.0  # a browser whose peer connection is not up this long after its answer is dropped
MAX_OFFER_CHARS = 64 * 1024  # Chromium's offers are ~5 KB
MEDIA_TIMEOUT_S = 5.0  # a taking-over browser sends RTP every 20 ms; this long without any means it is gone
_WATCH_EVERY_S = 1.0
_SESSION = {"type": "realtime"}
BRIEF_WAIT_S = 15.0  # hand-back while the CS agent talks: brief the caller agent when it stops, at the latest this


class JoinError(Exception):
    """A join, hand-back or leave that cannot be done; ``status`` is the HTTP status it deserves."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class Participant:
    id: str
    role: ParticipantRole
    pc: RTCPeerConnection
    outs: list[OutboundAudio]
    tap: InboundTap | None = None
    answer_sdp: str = ""
    joined_at: float = field(default_factory=time.time)
    left_reason: str | None = None
    speaking: bool = False  # take-over: the CS agent hears this human now
    sinks: dict[str, ImpairedSink] = field(default_factory=dict)  # party -> its impaired downlink stream
    uplink: ImpairedTap | None = None  # a human's impaired microphone
    impair_origin_s: float = 0.0  # call time the stages started (blackout windows are given on the call's clock)
    _remove_listener: Callable[[], None] | None = None
    _unsub_first: Callable[[], None] | None = None
    _watchdog: asyncio.Future[Any] | None = None
    _connect_watch: asyncio.Future[Any] | None = None

    @property
    def left(self) -> bool:
        return self.left_reason is not None

    def out(self, index: int, party: str) -> AudioSink:
        """The party's stream as the relay sends it: through the browser's own stage when it has one."""
        return self.sinks.get(party) or self.outs[index]

    def impairment(self) -> BrowserImpairStats:
        origin = self.impair_origin_s
        return {
            "participant_id": self.id,
            "role": self.role,
            "downlink": {party: sink.stage.stats(origin) for party, sink in self.sinks.items()},
            "uplink": self.uplink.stage.stats(origin) if self.uplink is not None else None,
        }

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "state": "left" if self.left else self.pc.connectionState,
            "left_reason": self.left_reason,
            "joined_at": self.joined_at,
            "speaking": self.speaking,
            "packets_out": sum(o.packets_sent for o in self.outs),
            "packets_in": self.tap.packets if self.tap is not None else 0,
        }


class Participants:
    """The browsers on one call."""

    def __init__(
        self,
        call: Call,
        *,
        ice_servers: tuple[str, ...] = (),
        media_timeout_s: float = MEDIA_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_listeners: int = MAX_LISTENERS,
    ) -> None:
        self.call = call
        self.ice_servers = ice_servers
        self.media_timeout_s = media_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_listeners = max_listeners
        self.members: dict[str, Participant] = {}
        self.human: Participant | None = None  # the take-over participant, from join until hand-back
        # Seats taken by joins still in progress (participant id -> role): a limit is checked and the seat taken
        # in one synchronous step, before the first await, so concurrent joins cannot all pass the same check.
        self._joining: dict[str, ParticipantRole] = {}
        self.missed: list[str] = []  # the CS agent's lines while the caller agent was on hold
        self._collecting = False  # from take-over until the caller agent is briefed
        self._brief_pending = False
        self._brief_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._impaired: list[Participant] = []  # every participant with stages of its own, left ones included
        call.browser_impairment = self.impairment
        call.on("event", self._on_call_event)
        call.on("state", self._on_call_state)

    # -- joining --------------------------------------------------------------------------------------------
    async def join(
        self,
        role: ParticipantRole,
        offer_sdp: str,
        timeout_s: float = 10.0,
        impair: BrowserImpairment | None = None,
        impair_seed: int | None = None,
    ) -> Participant:
        """Answer a browser's offer, its path impaired by `impair` (seeded by impair_seed, else the scenario's);
        raises JoinError (4xx) naming what is wrong."""
        self._check_open()
        if not offer_sdp.strip() or len(offer_sdp) > MAX_OFFER_CHARS:
            raise JoinError(400, f"the SDP offer must be 1 to {MAX_OFFER_CHARS} characters")
        if impair is not None and role == "listen" and not impair.uplink.is_null:
            raise JoinError(
                400, f"`impair`: a listener sends no audio, so browser>bridge ({impair.uplink.describe()}) has"
                " nothing to impair; give bridge>browser: SPEC only"
            )
        if impair is not None and impair.is_null:
            impair = None
        seed = self.call.scenario.impair_seed if impair_seed is None else impair_seed
        pid = self._take_seat(role)
        try:
            return await self._join(pid, role, offer_sdp, timeout_s, impair, seed)
        finally:
            del self._joining[pid]

    def _take_seat(self, role: ParticipantRole) -> str:
        """Check the limit and take the seat at once (no await in between); returns the new participant's id."""
        if role == "takeover":
            joining = next((pid for pid, r in self._joining.items() if r == "takeover"), None)
            holder = self.human.id if self.human is not None else joining
            if holder is not None:
                raise JoinError(409, f"{holder} has already taken over this call; hand back first", "conflict")
        else:
            listening = sum(1 for p in self.members.values() if p.role == "listen" and not p.left)
            listening += sum(1 for r in self._joining.values() if r == "listen")
            if listening >= self.max_listeners:
                raise JoinError(
                    429, f"this call already has {self.max_listeners} listeners", "too_many_listeners"
                )
        pid = f"p_{secrets.token_hex(4)}"
        self._joining[pid] = role
        return pid

    async def _join(
        self, pid: str, role: ParticipantRole, offer_sdp: str, timeout_s: float, impair: BrowserImpairment | None,
        seed: int,
    ) -> Participant:
        relay = await self._wait_live(timeout_s)
        if role == "listen" and not isinstance(relay, FanOut):
            raise self._unable(relay, "take listeners")
        if role == "takeover" and not isinstance(relay, Switchable):
            raise self._unable(relay, "be taken over")
        servers = [RTCIceServer(urls=u) for u in self.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        p = Participant(pid, role, pc, [])
        connected = asyncio.Event()
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as e:
                raise JoinError(400, f"the SDP offer was refused: {type(e).__name__}: {e}") from None
            audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
            need = 2 if role == "listen" else 1
            if len(audio) < need:
                what = "two audio m-lines (caller, CS)" if role == "listen" else "an audio m-line (the microphone)"
                raise JoinError(400, f"a {role} offer needs {what}; this one has {len(audio)}")
            if role == "takeover" and getattr(audio[0], "_offerDirection", "sendrecv") not in ("sendrecv",):
                raise JoinError(400, "a take-over offer must be sendrecv on its first audio m-line (mic + CS agent)")
            for t in pc.getTransceivers():
                t.direction = "inactive"  # anything we do not use explicitly is switched off
            if role == "listen":
                p.outs = [OutboundAudio(), OutboundAudio()]
                for out, t in zip(p.outs, audio[:2], strict=True):
                    out.bind(t, "sendonly")  # forced receive-only for the browser
            else:
                p.outs = [OutboundAudio()]
                p.outs[0].bind(audio[0], "sendrecv")
                p.tap = InboundTap(audio[0].receiver)  # before the answer: no RTP can arrive untapped
            if impair is not None:
                self._impair(p, impair, seed)
            pc.on("connectionstatechange", lambda: connected.set() if pc.connectionState == "connected" else None)
            await pc.setLocalDescription(await pc.createAnswer())
            p.answer_sdp = pc.localDescription.sdp
            if self.closed or self.call.state != "live":
                raise JoinError(409, f"call {self.call.id} ended while joining", "conflict")
        except BaseException:
            await self._close_pc(p)
            raise
        pc.on("connectionstatechange", lambda: self._on_pc_state(p))
        self.members[p.id] = p
        if role == "listen":
            assert isinstance(relay, FanOut)  # checked above; a call's relay never changes
            p._remove_listener = relay.add_listener(p.out(0, "caller"), p.out(1, "cs"))
        else:
            self.human = p
            assert p.tap is not None
            p._unsub_first = p.tap.subscribe(lambda pkt: self._first_human_packet(p, pkt))
        p._connect_watch = self._spawn(self._drop_unless_connected(p, connected))
        if impair is not None:
            self._impaired.append(p)
            applied = {"downlink": impair.downlink.describe(), "uplink": impair.uplink.describe(), "seed": seed}
            self._note("participant.joined", participant_id=p.id, role=role, impair=applied)
        else:
            self._note("participant.joined", participant_id=p.id, role=role)
        self._forget_left()
        return p

    def _impair(self, p: Participant, impair: BrowserImpairment, seed: int) -> None:
        """The browser's own stages, started now (a blackout is timed from the join)."""
        p.impair_origin_s = round(self.call.now(), 3)
        parties = ["caller", "cs"] if p.role == "listen" else ["cs"]
        if not impair.downlink.is_null:
            for out, party in zip(p.outs, parties, strict=True):
                p.sinks[party] = ImpairedSink(out, impair.downlink, seed + (1 if party == "cs" else 0))
                p.sinks[party].stage.start()
        if p.tap is not None and not impair.uplink.is_null:
            p.uplink = ImpairedTap(p.tap, impair.uplink, seed + 2)
            p.uplink.stage.start()

    def impairment(self) -> list[BrowserImpairStats]:
        """What each browser's own stages applied, in join order (the call summary's `browser_impairment`)."""
        return [p.impairment() for p in self._impaired]

    async def _drop_unless_connected(self, p: Participant, connected: asyncio.Event) -> None:
        """A browser that got its answer but never connects (it vanished, or its candidates are unusable) holds
        a peer connection and, for a take-over, the seat: let both go after `connect_timeout_s`."""
        try:
            await asyncio.wait_for(connected.wait(), self.connect_timeout_s)
        except TimeoutError:
            if not p.left:
                await self.leave(p.id, f"the browser did not connect within {self.connect_timeout_s:g} s")

    def _forget_left(self) -> None:
        left = [pid for pid, p in self.members.items() if p.left]
        for pid in left[: max(0, len(left) - MAX_LEFT_KEPT)]:
            del self.members[pid]

    def _unable(self, relay: Relay, what: str) -> JoinError:
        """409: this call's relay lacks the capability a join needs (the relay says what it carries and why)."""
        why = f"its audio goes through the {relay.kind} relay: {relay.description}"
        return JoinError(409, f"call {self.call.id} cannot {what}: {why}", "unsupported_by_relay")

    async def _wait_live(self, timeout_s: float) -> Relay:
        """A join may come while the call is still connecting: wait (bounded) until its relay runs; returns it."""
        if self.call.state == "connecting":
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def changed(state: str) -> None:
                if state != "connecting" and not fut.done():
                    fut.set_result(None)

            self.call.on("state", changed)
            try:
                await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                raise JoinError(409, f"call {self.call.id} is still connecting; try again", "conflict") from None
            finally:
                self.call.remove_listener("state", changed)
        relay = self.call.relay
        if self.call.state != "live" or relay is None:
            raise JoinError(409, f"call {self.call.id} is {self.call.state}, not live", "conflict")
        self._check_open()
        return relay

    def _check_open(self) -> None:
        if self.closed or self.call.state in ("ending", "ended"):
            raise JoinError(409, f"call {self.call.id} is {self.call.state}; nobody can join it", "conflict")

    # -- take-over ------------------------------------------------------------------------------------------
    def _first_human_packet(self, p: Participant, pkt: RtpAudio) -> None:
        # Called inside aiortc's receive path: switch synchronously, so the very next packet goes to the CS leg.
        if p._unsub_first is not None:
            p._unsub_first()
            p._unsub_first = None
        relay = self.call.relay
        if p.left or self.human is not p or not isinstance(relay, Switchable) or self.call.state != "live":
            return
        assert p.tap is not None
        # On hold the caller agent keeps hearing the CS agent but with its turn detection off: it cannot answer
        # (no unheard lines, no hangup() from a conversation it is not in), and a sentence it was hearing when
        # the hold began still ends in its VAD instead of hanging open until the hand-back.
        relay.hold_hears_cs = True
        source: PacketSource = p.uplink if p.uplink is not None else p.tap
        relay.set_caller_source(source, p.out(0, "cs"))
        p.speaking = True
        self._collecting = True
        self._brief_pending = False  # a new take-over before the last briefing: that one is moot
        if self._brief_timer is not None:
            self._brief_timer.cancel()
            self._brief_timer = None
        self._send_caller(
            {"type": "session.update", "session": {**_SESSION, "audio": {"input": {"turn_detection": None}}}}
        )
        self.missed = []
        self._note("takeover.started", participant_id=p.id)
        p._watchdog = self._spawn(self._watch_media(p))

    async def _watch_media(self, p: Participant) -> None:
        """Hand back when the human's RTP stops: a vanished browser's peer connection may take ~30 s to fail."""
        assert p.tap is not None
        last, quiet_since = p.tap.packets, time.monotonic()
        while not p.left and self.human is p:
            await asyncio.sleep(_WATCH_EVERY_S)
            if p.tap.packets != last:
                last, quiet_since = p.tap.packets, time.monotonic()
            elif time.monotonic() - quiet_since >= self.media_timeout_s:
                await self.leave(p.id, f"no audio from the browser for {self.media_timeout_s:g} s")
                return

    async def handback(self, reason: str = "handback") -> dict[str, Any]:
        """Give the call back to the caller agent and tell it what it missed; the human's connection closes."""
        p = self.human
        if p is None:
            raise JoinError(409, "nobody has taken over this call", "conflict")
        return await self._handback(p, reason, close=True)

    async def _handback(self, p: Participant, reason: str, *, close: bool) -> dict[str, Any]:
        self.human = None
        relay = self.call.relay
        was_speaking = p.speaking
        p.speaking = False
        if p._unsub_first is not None:
            p._unsub_first()
            p._unsub_first = None
        if was_speaking and isinstance(relay, Switchable):
            relay.set_caller_source(None)
        told, briefing, missed = "", "none", list(self.missed)
        if was_speaking and self.call.state == "live":
            if self._cs_quiet():
                told, briefing = self._brief_now(), "now"
            else:
                # The CS agent is mid-sentence (or mid-tool-chain): give the caller agent the floor when it stops,
                # else its VAD would hear half a sentence and answer that instead of the briefing.
                briefing = "after the CS agent's current line"
                self._brief_pending = True
                loop = asyncio.get_running_loop()
                self._brief_timer = loop.call_later(BRIEF_WAIT_S, self._brief_if_pending)
        self._note("takeover.handback", participant_id=p.id, reason=reason, missed_lines=missed, briefing=briefing)
        if close:
            await self.leave(p.id, "handed back")
        return {"participant_id": p.id, "reason": reason, "briefing": briefing, "told_caller_agent": told}

    def _cs_quiet(self) -> bool:
        gate = self.call.gates.get("cs")
        return not self.call.transcript.speaking.get("cs") and not (gate is not None and gate.busy)

    def _brief_if_pending(self) -> None:
        if self._brief_pending and self.call.state == "live":
            self._brief_now()

    def _brief_now(self) -> str:
        self._brief_pending = False
        self._collecting = False
        if self._brief_timer is not None:
            self._brief_timer.cancel()
            self._brief_timer = None
        told = self._brief_caller_agent()
        if told:
            self._note("takeover.briefed", missed_lines=list(self.missed))
        self.missed = []
        return told

    def _brief_caller_agent(self) -> str:
        """conversation.item.create (what the CS agent said while on hold) + response.create on the caller leg."""
        leg = self.call.legs.get("caller")
        if leg is None or leg.state != "open":
            return ""
        if self.missed:
            said = " ".join(f'"{line}"' for line in self.missed)
            text = (
                "You were on hold while a colleague spoke with the agent for you; you are back on the call now. "
                f"Meanwhile the agent said: {said} Carry on from there."
            )
        else:
            text = "You were on hold for a moment and the agent said nothing meanwhile; you are back on the call now."
        turn_detection = ((leg.session.get("audio") or {}).get("input") or {}).get("turn_detection")
        try:
            leg.send(
                {
                    "type": "session.update",
                    "session": {**_SESSION, "audio": {"input": {"turn_detection": turn_detection}}},
                }
            )
            leg.send({"type": "input_audio_buffer.clear"})  # what it heard on hold was never meant for it
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
            leg.send({"type": "conversation.item.create", "item": item})
        except Exception as e:  # the leg just failed: the call is ending anyway
            log.warning("call %s: cannot brief the caller agent after hand-back: %s", self.call.id, e)
            return ""
        self.call.gates["caller"].request()
        return text

    def _send_caller(self, event: dict[str, Any]) -> None:
        leg = self.call.legs.get("caller")
        if leg is None or leg.state != "open":
            return
        try:
            leg.send(event)
        except Exception as e:  # the leg just failed: the call ends on its own
            log.warning("call %s: cannot send %s to the caller agent: %s", self.call.id, event.get("type"), e)

    # -- leaving --------------------------------------------------------------------------------------------
    async def leave(self, participant_id: str, reason: str = "left") -> None:
        p = self.members.get(participant_id)
        if p is None or p.left:
            return
        if self.human is p:
            await self._handback(p, reason, close=False)
        p.left_reason = reason
        if p._remove_listener is not None:
            p._remove_listener()
        for task in (p._watchdog, p._connect_watch):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self._close_pc(p)
        self._note("participant.left", participant_id=p.id, role=p.role, reason=reason)

    def _on_pc_state(self, p: Participant) -> None:
        state = p.pc.connectionState
        if state in ("failed", "closed") and not p.left:
            self._spawn(self.leave(p.id, f"browser connection {state}"))

    async def close(self) -> None:
        """Close every participant's peer connection (the call is ending)."""
        self.closed = True
        self._brief_pending = False
        if self._brief_timer is not None:
            self._brief_timer.cancel()
            self._brief_timer = None
        for pid in list(self.members):
            await self.leave(pid, "call ended")
        for t in list(self._tasks):
            if not t.done() and t is not asyncio.current_task():
                t.cancel()

    @staticmethod
    async def _close_pc(p: Participant) -> None:
        for out in p.outs:
            out.close()
        for sink in p.sinks.values():
            sink.close()
        if p.uplink is not None:
            p.uplink.close()
        if p.tap is not None:
            p.tap.close()
        with contextlib.suppress(Exception):
            await p.pc.close()

    # -- the call's side ------------------------------------------------------------------------------------
    def _on_call_event(self, record: dict[str, Any]) -> None:
        if not self._collecting or record.get("leg") != "cs" or record.get("direction") != "in":
            return
        event = record.get("event") or {}
        kind = event.get("type")
        if kind == "response.output_audio_transcript.done":
            text = str(event.get("transcript") or "").strip()
            if text:
                self.missed.append(text)
        elif kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared") and self._brief_pending:
            if self.call.state == "live" and self._cs_quiet():
                self._brief_now()

    def _on_call_state(self, state: str) -> None:
        if state in ("ending", "ended") and not self.closed:
            self.closed = True
            self._spawn(self.close())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _note(self, kind: str, **data: Any) -> None:
        """A bridge-side event in the call's stream and events.jsonl (no leg sent or received it)."""
        record: EventRecord = {
            "t": round(self.call.now(), 4), "leg": "bridge", "direction": "note", "event": {"type": kind, **data}
        }
        if self.call.artifacts is not None:
            with contextlib.suppress(Exception):
                self.call.artifacts.write_event(record)
        self.call.emit("event", record)

    def view(self) -> list[dict[str, Any]]:
        return [p.view() for p in self.members.values()]

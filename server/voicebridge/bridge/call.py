"""A call: a caller leg and a CS leg, relayed to each other, with tools, context, hang-up and artifacts.

States: connecting -> live -> ending -> ended. Every end has an `end_reason` and `ended_by`. Nothing here is
global: a process can run many calls at once, each with its own legs, tools and folder.

Events out (pyee), records of voicebridge/results.py: "state"(str), "event"(EventRecord), "turn"(TranscriptLine),
"tool_call"(ToolCallRecord), "ended"(CallSummary).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import JsonValue
from pyee.asyncio import AsyncIOEventEmitter

from voicebridge.config import Settings
from voicebridge.diagnostics.pc_debug import PcDebug, mask_sdp
from voicebridge.lab.criteria import evaluate
from voicebridge.lab.judge import judge_endpoint
from voicebridge.media.relay import PacketHooks, Relay
from voicebridge.realtime.leg import Leg
from voicebridge.results import (
    BrowserImpairStats,
    CallState,
    CallSummary,
    CriterionVerdict,
    EndReason,
    EventRecord,
    ImpairStats,
    LegSummary,
    RelayStats,
    RelayStatsError,
    ToolCallRecord,
    criteria_passed,
)
from voicebridge.scenarios.impairment import parse_directions
from voicebridge.scenarios.model import ROLES, Scenario, load_tools
from voicebridge.tools import ToolRegistry, ToolResult

from .artifacts import Artifacts
from .context import sync_context
from .functions import FunctionCall, FunctionCalls, Reply, ResponseGate
from .sessions import HANGUP_TOOL, build_session
from .transcript import OTHER, Transcript
from .turns import CallRecording, TurnLatency, artifact_files

log = logging.getLogger(__name__)

LegFactory = Callable[[str, Settings], Leg]

# Server events that mean someone is talking or about to: they reset the idle timer.
_ACTIVITY = (
    "input_audio_buffer.speech_started",
    "output_audio_buffer.started",
    "response.created",
    "response.done",
    "output_audio_buffer.stopped",
)
# At the end, how long debug.json waits for browsers' peer connections (closed by Participants as the call
# ends) so that it keeps their last states; the agent legs are closed by then.
PC_CLOSE_WAIT_S = 2.0


async def _all_or_cancel(aws: list[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first failure cancel the rest (a half-connected leg cleans itself up)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r


def _as_json(stats: Mapping[str, object]) -> dict[str, JsonValue]:
    """A leg's stats as plain JSON values (aiortc's getStats fields are mostly JSON already; the rest as text)."""
    data: dict[str, JsonValue] = json.loads(json.dumps(stats, default=str))
    return data


def _default_leg(role: str, settings: Settings) -> Leg:
    from voicebridge.realtime.webrtc import WebRtcLeg

    return WebRtcLeg(role, settings)


class Call(AsyncIOEventEmitter):
    def __init__(
        self,
        scenario: Scenario,
        settings: Settings,
        out_dir: Path | None = None,
        *,
        call_id: str | None = None,
        tools: ToolRegistry | None = None,
        leg_factory: LegFactory = _default_leg,
        relay: bool = True,
    ) -> None:
        super().__init__()
        self.id = call_id or f"call_{time.strftime('%Y%m%d_%H%M%S')}_{secrets.token_hex(3)}"
        self.scenario = scenario
        self.settings = settings
        self.out_dir = Path(out_dir) if out_dir is not None else settings.artifacts_dir / self.id
        self.state: CallState = "connecting"
        self.end_reason: EndReason | None = None
        self.ended_by: str | None = None
        self.error: str | None = None
        self.tools = tools
        self._leg_factory = leg_factory
        self._with_relay = relay  # False only for event-level tests with legs that carry no audio
        self.legs: dict[str, Leg] = {}
        self.gates: dict[str, ResponseGate] = {}
        self.functions: dict[str, FunctionCalls] = {}
        self.tool_calls: list[ToolCallRecord] = []
        self.verdicts: list[CriterionVerdict] = []  # the scenario's pass criteria, judged once the call has ended
        self.transcript = Transcript()
        # AudioRelay (any WebRTC leg) or PcmRelay (two WebSocket legs); what else it can do: media/relay.py.
        self.relay: Relay | None = None
        self._relay_started_s = 0.0  # on the call's clock
        self.artifacts: Artifacts | None = None
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._ended = asyncio.Event()
        self._activity = asyncio.Event()
        self._end_task: asyncio.Task[None] | None = None
        self._setup: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._idle: asyncio.TimerHandle | None = None
        # Each leg's last stats (LegStats, as JSON), taken before it closes; or {"error"} if they could not be.
        self._leg_stats: dict[str, dict[str, JsonValue]] = {}
        self.duration_s = 0.0
        # Every peer connection of the call (agent legs here, browsers via debug.attach) for the debug view.
        self.debug = PcDebug()
        # Media observers (bridge/turns.py): per-turn latency (events + relay packets) and the recording.
        self.turn_latency = TurnLatency(self.now)
        self.on("event", self.turn_latency.on_event)
        self.recording: CallRecording | None = None
        # Set by the call's browser participants (bridge/participants.py): what their own impairment applied.
        self.browser_impairment: Callable[[], list[BrowserImpairStats]] | None = None

    # -- public ---------------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self._t0

    async def start(self) -> None:
        """Connect both legs, start the relay, sync context, go live; on failure end with `error`, raise.

        Ended while connecting (hang-up, shutdown): the set-up is called off, every Realtime session created or
        being created is hung up (realtime/webrtc.py), and start() returns once the call has ended."""
        if self._end_task is not None or self.ended:
            await self.wait_ended()
            return
        self.artifacts = Artifacts(self.out_dir)
        self._set_state("connecting")
        try:
            if self.tools is None:
                self.tools = load_tools(self.scenario, self.out_dir, self.settings.tool_timeout_s)
            sessions = {
                "caller": build_session(self.scenario.caller, self.settings, [HANGUP_TOOL]),
                "cs": build_session(self.scenario.cs, self.settings, self.tools.declarations()),
            }
            for role in ROLES:
                self._add_leg(role)
            self._setup = asyncio.ensure_future(self._connect(sessions))
            await self._setup
        except BaseException as e:
            me = asyncio.current_task()
            if self._end_task is not None and not (me is not None and me.cancelling()):
                # Ended on purpose while connecting: that end stands, and it is no failure of start().
                if not isinstance(e, asyncio.CancelledError):
                    log.info("call %s: set-up stopped by the end: %s", self.id, e)
                await self.wait_ended()
                return
            if self.state == "connecting":
                await self._finish(
                    "error", "bridge", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                )
            raise
        if self.state != "connecting":  # a leg failed while we were syncing
            return
        self._set_state("live")
        loop = asyncio.get_running_loop()
        self._timers.append(
            loop.call_later(self.scenario.max_duration_s, self._begin_end, "max_duration", "bridge")
        )
        self._touch()
        self.gates[self.scenario.first_speaker].request()

    async def _connect(self, sessions: dict[str, dict[str, Any]]) -> None:
        """The set-up as one task, so an end while connecting can call it off (`_begin_end`)."""
        await _all_or_cancel([self.legs[r].connect(sessions[r]) for r in ROLES])
        if self._with_relay:
            self._start_relay()
            self._observe_media()
        timeout = self.settings.session_timeout_s
        await asyncio.gather(*(sync_context(self.legs[r], self.scenario.persona(r).context, timeout) for r in ROLES))

    async def hangup(self, reason: EndReason = "operator_hangup", by: str = "operator") -> None:
        """End the call gracefully (last words play out and reach the other side); wait until it has ended."""
        self.end(reason, by)
        await self.wait_ended()

    def end(self, reason: EndReason = "operator_hangup", by: str = "operator") -> None:
        """Begin ending the call now and return at once (`wait_ended()` waits for it); a second end is ignored."""
        self._begin_end(reason, by)

    async def wait_ended(self, timeout_s: float | None = None) -> None:
        await asyncio.wait_for(self._ended.wait(), timeout_s)

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    async def stats(self) -> dict[str, Any]:
        """Live statistics: each leg's (RTP, getStats, events) and the relay's (packets, latency)."""
        legs = {}
        for role, leg in self.legs.items():
            legs[role] = await leg.stats() if leg.state == "open" else self._leg_stats.get(role, {})
        return {
            "call_id": self.id,
            "state": self.state,
            "legs": legs,
            "relay": self.relay.stats() if self.relay is not None else None,
        }

    def summary(self) -> CallSummary:
        """The call as it stands (final once ended): what summary.json, --json and the API show."""
        legs = [
            LegSummary(
                role=role, call_id=leg.call_id, state=leg.state, failure=leg.failure,
                stats=self._leg_stats.get(role, {}),
            )
            for role, leg in self.legs.items()
        ]
        relay_stats: RelayStats | RelayStatsError | None = None
        if self.relay is not None:
            try:
                relay_stats = self.relay.stats()
            except Exception as e:
                relay_stats = {"error": str(e)}
        return CallSummary(
            call_id=self.id,
            scenario=self.scenario.name,
            title=self.scenario.title,
            state=self.state,
            end_reason=self.end_reason,
            ended_by=self.ended_by,
            error=self.error,
            started_at=self.started_at,
            duration_s=round(self.duration_s if self.state == "ended" else self.now(), 3),
            turns=[e.line() for e in self.transcript.said()],
            heard={r: [e.line() for e in self.transcript.heard(r)] for r in ("caller", "cs")},
            tool_calls=list(self.tool_calls),
            legs=legs,
            relay=relay_stats,
            impairment=self._impairment(),
            browser_impairment=self.browser_impairment() if self.browser_impairment is not None else [],
            turn_latency=self.turn_latency.summary(),
            artifacts=artifact_files(self.recording),
            events=self.artifacts.events_written if self.artifacts else 0,
            out_dir=str(self.out_dir),
            criteria=list(self.verdicts),
            passed=criteria_passed(self.verdicts),
            timing=self.turn_latency.timing() if isinstance(self.relay, PacketHooks) else None,
        )

    def _impairment(self) -> dict[str, ImpairStats] | None:
        from .audio import AudioRelay  # lazily, like _make_relay: aiortc is loaded only by a call that relays

        if not isinstance(self.relay, AudioRelay):
            return None
        return self.relay.impairment_stats(round(self._relay_started_s, 3))

    def saved_debug(self) -> dict[str, Any]:
        """What debug.json keeps: each agent leg's offer and answer (ICE passwords masked) and every peer
        connection's record (voicebridge.diagnostics.pc_debug), for the server to show once the call object is gone."""
        legs = [
            {
                "role": role,
                "offer": mask_sdp(str(getattr(leg, "offer_sdp", "") or "")),
                "answer": mask_sdp(str(getattr(leg, "answer_sdp", "") or "")),
            }
            for role, leg in self.legs.items()
        ]
        return {"call_id": self.id, "legs": legs, **self.debug.export()}

    # -- legs and events ------------------------------------------------------------------------------------
    def _add_leg(self, role: str) -> None:
        leg = self._leg_factory(role, self.settings)
        self.legs[role] = leg
        gate = ResponseGate(leg.send, role)
        self.gates[role] = gate
        execute = self._execute_cs if role == "cs" else self._execute_caller
        self.functions[role] = FunctionCalls(role, leg.send, gate, execute, self._on_function_result)
        leg.on("server_event", lambda ev: self._on_server_event(role, ev))
        leg.on("client_event", lambda ev: self._record(role, "out", ev))
        leg.on("failed", lambda reason: self._on_leg_failed(role, reason))
        leg.on("peer_connection", lambda pc: self.debug.attach(pc, role, kind="agent"))

    def _start_relay(self) -> None:
        self.relay = self._make_relay()
        self._relay_started_s = self.now()  # the impairment's blackout clock starts here
        self.relay.start()

    def _make_relay(self) -> Relay:
        from voicebridge.realtime.transports import PcmRelay
        from voicebridge.realtime.websocket import WebSocketLeg

        from .audio import AudioRelay

        c, s = self.legs["caller"], self.legs["cs"]
        if isinstance(c, WebSocketLeg) and isinstance(s, WebSocketLeg):
            if self.scenario.impair and not parse_directions(self.scenario.impair).is_null:
                raise RuntimeError(
                    "network impairment needs a WebRTC leg (RTP packets to impair); both legs are WebSocket"
                )
            return PcmRelay(c, s)  # PCM16 both sides: no codec at all
        # WebRTC legs relay Opus as it is; a WebSocket leg's tap/sink transcode (media/pcm.py) on its side only.
        if c.audio_in is None or c.audio_out is None or s.audio_in is None or s.audio_out is None:
            raise RuntimeError("a leg connected without its audio tap/sender")
        sc = self.scenario
        impair = parse_directions(sc.impair) if sc.impair else None
        return AudioRelay(c.audio_in, c.audio_out, s.audio_in, s.audio_out, impair=impair, impair_seed=sc.impair_seed)

    def _observe_media(self) -> None:
        """Per-turn latency and the recording, off the relay's packets; a relay with none (PcmRelay) has neither."""
        if not isinstance(self.relay, PacketHooks):
            return
        self.relay.on_packet(self.turn_latency.on_packet)
        # t0 = perf_counter at call time 0: positions in the recording are the transcript's times.
        self.recording = CallRecording(self.relay, self.out_dir, time.perf_counter() - self.now())

    def _record(self, role: str, direction: Literal["in", "out"], event: dict[str, Any]) -> None:
        record: EventRecord = {"t": round(self.now(), 4), "leg": role, "direction": direction, "event": event}
        if self.artifacts is not None:
            self.artifacts.write_event(record)
        self.emit("event", record)

    def _on_server_event(self, role: str, event: dict[str, Any]) -> None:
        self._record(role, "in", event)
        self.gates[role].observe(event)
        self.functions[role].observe(event)
        entry = self.transcript.observe(role, self.now(), event)
        if entry is not None:
            self.emit("turn", entry.line())
        if event.get("type") in _ACTIVITY:
            self._touch()
        self._activity.set()

    def _on_leg_failed(self, role: str, reason: str) -> None:
        if self.state == "connecting":
            return  # connect() raises; start() ends the call with `error`
        self._activity.set()  # an ending call stops waiting on a leg that is gone
        if self.state in ("ending", "ended"):
            log.warning("call %s: %s leg failed while ending: %s", self.id, role, reason)
            return
        self.error = f"{role} leg: {reason}"
        self._begin_end("leg_failed", role)

    # -- function calls -------------------------------------------------------------------------------------
    async def _execute_cs(self, call: FunctionCall) -> Reply:
        assert self.tools is not None
        return Reply(await self.tools.run(call.name, call.arguments, call.call_id))

    async def _execute_caller(self, call: FunctionCall) -> Reply:
        try:
            args: Any = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError:
            args = call.arguments
        if call.name == "hangup":
            # Acknowledge without asking for a response: the caller has said goodbye.
            return Reply(ToolResult(call.call_id, "hangup", args, '{"ok": true}', True), respond=False)
        msg = f"the caller may only call hangup(); {call.name!r} was refused and not executed"
        log.warning("call %s: %s", self.id, msg)
        output = json.dumps({"error": {"type": "refused", "message": msg}})
        return Reply(ToolResult(call.call_id, call.name, args, output, False, msg))

    def _on_function_result(self, call: FunctionCall, reply: Reply, sent: bool) -> None:
        record = reply.result.record(call.leg, sent, self.now())
        self.tool_calls.append(record)
        self.emit("tool_call", record)
        if call.leg == "caller" and call.name == "hangup" and sent:
            self._begin_end("caller_hangup", "caller")

    # -- timers ---------------------------------------------------------------------------------------------
    def _touch(self) -> None:
        if self.state != "live":
            return
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.scenario.idle_timeout_s, self._begin_end, "idle_timeout", "bridge")

    def _cancel_timers(self) -> None:
        for h in self._timers:
            h.cancel()
        if self._idle is not None:
            self._idle.cancel()

    # -- ending ---------------------------------------------------------------------------------------------
    def _begin_end(self, reason: EndReason, by: str) -> None:
        if self.state in ("ending", "ended") or self._end_task is not None:
            return
        if self.state == "connecting":
            # Nothing has been said yet, so nothing to drain: call the set-up off. Each leg then ends the Realtime
            # session it created or is still creating (an in-flight create is let finish, then hung up).
            log.info("call %s: %s while connecting", self.id, reason)
            if self._setup is not None:
                self._setup.cancel()
        graceful = reason not in ("leg_failed", "error") and self.state == "live"
        self._end_task = asyncio.ensure_future(self._end(reason, by, graceful))

    async def _wait_until(self, ok: Callable[[], bool], limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while not ok():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._activity.clear()
            try:
                await asyncio.wait_for(self._activity.wait(), left)
            except TimeoutError:
                return ok()
        return True

    async def _end(self, reason: EndReason, by: str, graceful: bool) -> None:
        self.end_reason, self.ended_by = reason, by
        self._set_state("ending")
        self._cancel_timers()
        if graceful:
            await self._drain(by)
        await self._finish(reason, by, self.error)

    async def _drain(self, by: str) -> None:
        """Let the last words play out (output_audio_buffer.stopped) and reach the other side."""
        roles = ["caller"] if by == "caller" else list(self.legs)
        limit = self.settings.hangup_drain_timeout_s
        played = await self._wait_until(
            lambda: all(
                not self.gates[r].busy and not self.transcript.speaking[r]
                for r in roles
                if not self.legs[r].failed
            ),
            limit,
        )
        if not played:
            log.warning("call %s: last words still playing after %.1f s; ending anyway", self.id, limit)
        hear_limit = self.settings.hangup_hear_timeout_s
        heard = await self._wait_until(
            lambda: not any(self.transcript.unheard[r] for r in roles if not self.legs[OTHER[r]].failed),
            hear_limit,
        )
        if not heard:
            log.info(
                "call %s: the other side did not confirm hearing the last words within %.1f s",
                self.id,
                hear_limit,
            )

    async def _finish(self, reason: EndReason, by: str, error: str | None) -> None:
        if self.end_reason is None:
            self.end_reason, self.ended_by = reason, by
        self.error = error
        if self.state != "ending":
            self._set_state("ending")
        self._cancel_timers()
        for role, leg in self.legs.items():
            if leg.state in ("open", "failed"):
                try:
                    self._leg_stats[role] = _as_json(await leg.stats())
                except Exception as e:
                    self._leg_stats[role] = {"error": str(e)}
        for gate in self.gates.values():
            gate.close()
        if self.relay is not None:
            try:
                self.relay.stop()
            except Exception:
                log.exception("call %s: relay stop failed", self.id)
        export: asyncio.Future[dict[str, str]] | None = None
        if self.recording is not None:
            # WebM files finalised on every end (the relay has stopped), then recording.wav made in the export
            # pool's processes while the legs hang up (the Realtime sessions are not kept open for it).
            self.recording.close()
            export = asyncio.ensure_future(self.recording.export())
        await asyncio.gather(*(f.close() for f in self.functions.values()))
        results = await asyncio.gather(*(leg.hangup() for leg in self.legs.values()), return_exceptions=True)
        for role, r in zip(self.legs, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("call %s: hanging up the %s leg: %s", self.id, role, r)
            self._leg_stats.setdefault(role, {})["final_state"] = self.legs[role].state
        if self.tools is not None:
            self.tools.close()
        await self.debug.wait_closed(PC_CLOSE_WAIT_S)
        # The call lasted until its legs were hung up; the recording's export after that is not the call's time
        # (it waits for a CPU the live calls do not want), though the call is "ended" only once it is done.
        self.duration_s = self.now()
        if export is not None:
            await export
        self._set_state("ended")
        if self.scenario.expect:
            # In a thread: a criterion reads the tool database and may run the scenario's own Python hook.
            self.verdicts = await asyncio.to_thread(
                evaluate, self.scenario.expect, self.summary(), self.out_dir,
                judge=judge_endpoint(self.settings),
            )
        summary = self.summary()
        if self.artifacts is not None:
            self.artifacts.write_transcript(self.transcript.entries)
            self.artifacts.write_debug(self.saved_debug())
            try:
                self.artifacts.write_timeline(summary)
            except Exception:  # a figure that cannot be drawn must not cost the call its summary
                log.exception("call %s: cannot write timeline.svg", self.id)
            self.artifacts.write_summary(summary)
            self.artifacts.close()
        self._ended.set()
        self.emit("ended", summary)

    def _set_state(self, state: CallState) -> None:
        if state == self.state and state != "connecting":
            return
        self.state = state
        self.emit("state", state)

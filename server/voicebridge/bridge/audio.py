"""The call's audio: pass-through relay between the two agent legs, a human who takes over, and listeners.

Every arrow below is an ``OutboundAudio.send`` of the packet as it arrived (no decode, no encode):

    caller agent  --(caller_in)-->  cs_out                      (only while the caller agent is the source)
    human browser --(human tap)-->  cs_out                      (while a human has taken over)
    CS agent      --(cs_in)---->    caller_out                  (not while on hold: see below)
                                    human_out                   (while a human has taken over)
    active caller source ------->   every listener's caller_out
    CS agent      ------------->    every listener's cs_out

On hold (a human took over) the caller agent hears nothing: if it kept hearing the CS agent it would answer
(unheard) and could even call hangup() on a conversation it is no longer part of. Pass
``hold_hears_cs=True`` to keep it listening instead.

A listener is two ``OutboundAudio`` (two audio transceivers on the listener's peer connection: caller, CS),
so the browser gets the parties as two tracks and mixes them itself; either may be None.

A browser with an impairment of its own (a join's `impair`, docs/impairment.md) comes as an ``ImpairedSink``
per stream it receives and, for a human, an ``ImpairedTap`` for its microphone: the relay sends and subscribes
to them as to the plain ones. A human's own downlink replaces the CS -> caller stage for that human (it is not
where the caller agent is); without one, the human hears the CS -> caller stage as the caller agent does.

It is the one relay with every capability of media/relay.py: packet hooks, listener fan-out and a switchable
caller source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypedDict

from voicebridge.media.impair import ImpairedSink, ImpairStage
from voicebridge.media.passthrough import InboundTap, OutboundAudio, OutboundStats, RtpAudio, latency_summary
from voicebridge.media.relay import AudioSink, FanOut, PacketHook, PacketHooks, PacketSource, Party, Relay, Switchable
from voicebridge.results import ImpairStats, RelayStats
from voicebridge.scenarios.impairment import Impairment, ImpairSpec

log = logging.getLogger(__name__)


class InboundCount(TypedDict):
    in_packets: int
    in_bytes: int


class DirectionStats(InboundCount, OutboundStats):
    """One direction: what its tap received, and what was handed to the other leg's transport."""


class ListenerStats(TypedDict):
    count: int
    packets: int  # sent to every listener, both parties
    dropped: int
    latency_ms: dict[str, float | int]


class PassthroughStats(RelayStats):
    caller_to_cs: DirectionStats
    cs_to_caller: DirectionStats
    human: InboundCount | None  # while a human has taken over
    human_out: OutboundStats | None
    listeners: ListenerStats
    on_hold: bool
    hook_errors: int
    impairment: dict[str, ImpairStats] | None  # per direction, when the relay impairs (media/impair.py)


class AudioRelay(Relay, PacketHooks, FanOut[AudioSink], Switchable):
    """caller_in -> cs_out and cs_in -> caller_out, pass-through; source switching and listener fan-out."""

    kind = "passthrough"
    description = "Opus RTP passed through untouched, fanned out to listeners, switchable to a human caller"

    def __init__(
        self,
        caller_in: InboundTap,
        caller_out: OutboundAudio,
        cs_in: InboundTap,
        cs_out: OutboundAudio,
        *,
        hold_hears_cs: bool = False,
        impair: Impairment | ImpairSpec | None = None,
        impair_seed: int = 0,
    ) -> None:
        self.caller_in = caller_in
        self.caller_out = caller_out
        self.cs_in = cs_in
        self.cs_out = cs_out
        self.hold_hears_cs = hold_hears_cs
        self._human: PacketSource | None = None
        self._human_out: AudioSink | None = None
        self._human_unsub: Callable[[], None] | None = None
        self._human_count = 0
        self._human_source = "human"
        self._unsubs: list[Callable[[], None]] = []
        self._listeners: list[tuple[AudioSink | None, AudioSink | None]] = []
        self._hooks: tuple[PacketHook, ...] = ()
        self._hook_errors = 0
        # The fan-out lists are rebuilt on every change so the per-packet path only iterates a tuple.
        self._to_caller_side: tuple[AudioSink, ...] = ()  # who hears the CS agent
        self._caller_listeners: tuple[AudioSink, ...] = ()  # listeners' caller tracks
        self._rebuild()
        # Impairment sits before OutboundAudio.send's seq rewrite, so a dropped packet is a sequence gap (real
        # loss) at the far end. Listeners and packet hooks see the packets as they arrived, unimpaired.
        self._impair_to_cs: ImpairStage | None = None
        self._impair_to_caller: ImpairStage | None = None
        if isinstance(impair, ImpairSpec):
            impair = Impairment(impair, impair)  # the same both ways
        if impair is not None and not impair.is_null:
            self._impair_to_cs = ImpairStage(impair.caller_to_cs, self._send_to_cs, seed=impair_seed)
            self._impair_to_caller = ImpairStage(impair.cs_to_caller, self._send_to_caller, seed=impair_seed + 1)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._unsubs:
            return
        self._unsubs = [
            self.caller_in.subscribe(self._on_caller_agent),
            self.cs_in.subscribe(self._on_cs),
        ]
        for stage in (self._impair_to_cs, self._impair_to_caller):
            if stage is not None:
                stage.start()

    def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        if self._human_unsub is not None:
            self._human_unsub()
            self._human_unsub = None
        for stage in (self._impair_to_cs, self._impair_to_caller):
            if stage is not None:
                stage.close()

    # -- control -----------------------------------------------------------------------------------------
    @property
    def on_hold(self) -> bool:
        """True while a human, not the caller agent, is the caller the CS agent hears."""
        return self._human is not None

    def set_caller_source(self, human: PacketSource | None, human_out: AudioSink | None = None) -> None:
        """None = the caller agent talks to the CS agent; else a human browser tap (human_out: they hear).

        The CS leg's outgoing stream is re-based on the switch (OutboundAudio), so it sees no timestamp jump.
        """
        if self._human_unsub is not None:
            self._human_unsub()
            self._human_unsub = None
        self._human = human
        self._human_out = human_out if human is not None else None
        if human is not None:
            self._human_count += 1
            # A new source name per take-over: a second human (or the same one again) re-bases as well.
            self._human_source = f"human{self._human_count}"
            self._human_unsub = human.subscribe(self._on_human)
        self._rebuild()

    def add_listener(
        self, caller_out: AudioSink | None, cs_out: AudioSink | None
    ) -> Callable[[], None]:
        """Fan both parties out to one more listener; returns the function that removes it."""
        entry = (caller_out, cs_out)
        self._listeners.append(entry)
        self._rebuild()

        def remove() -> None:
            if entry in self._listeners:
                self._listeners.remove(entry)
                self._rebuild()

        return remove

    def on_packet(self, fn: PacketHook) -> Callable[[], None]:
        """fn(party, packet) for each packet, party in {"caller","cs","human"}: recording, levels, metrics."""
        self._hooks = (*self._hooks, fn)

        def remove() -> None:
            self._hooks = tuple(h for h in self._hooks if h is not fn)

        return remove

    def _rebuild(self) -> None:
        to_caller: list[AudioSink] = []
        if self._human is None or self.hold_hears_cs:
            to_caller.append(self.caller_out)
        direct = [cs for _, cs in self._listeners if cs is not None]  # not through the CS -> caller stage
        if self._human_out is not None:
            # A human with a downlink stage of their own is on their own network, not the caller agent's.
            (direct if isinstance(self._human_out, ImpairedSink) else to_caller).append(self._human_out)
        self._to_caller_agent: tuple[AudioSink, ...] = tuple(to_caller)  # the impaired CS -> caller path
        self._cs_direct: tuple[AudioSink, ...] = tuple(direct)  # listeners' CS tracks, a self-impaired human
        self._to_caller_side = self._to_caller_agent + self._cs_direct
        self._caller_listeners = tuple(c for c, _ in self._listeners if c is not None)

    # -- per packet (called inside aiortc's receive path: keep it short) ---------------------------------
    def _send_to_cs(self, pkt: RtpAudio, _source: str) -> None:
        if self._human is None:  # a packet delayed across a take-over is not sent to the CS agent
            self.cs_out.send(pkt, "caller")

    def _send_to_caller(self, pkt: RtpAudio, _source: str) -> None:
        for out in self._to_caller_agent:
            out.send(pkt, "cs")

    def _on_caller_agent(self, pkt: RtpAudio) -> None:
        if self._human is None:
            if self._impair_to_cs is not None:
                self._impair_to_cs.push(pkt)
            else:
                self.cs_out.send(pkt, "caller")
            for out in self._caller_listeners:
                out.send(pkt, "caller")
        if self._hooks:
            self._emit("caller", pkt)

    def _on_human(self, pkt: RtpAudio) -> None:
        source = self._human_source
        self.cs_out.send(pkt, source)
        for out in self._caller_listeners:
            out.send(pkt, source)
        if self._hooks:
            self._emit("human", pkt)

    def _on_cs(self, pkt: RtpAudio) -> None:
        stage = self._impair_to_caller
        if stage is None:
            for out in self._to_caller_side:
                out.send(pkt, "cs")
        else:
            stage.push(pkt)  # the caller agent (and a human who took over) hear the impaired stream
            for out in self._cs_direct:
                out.send(pkt, "cs")
        if self._hooks:
            self._emit("cs", pkt)

    def _emit(self, party: Party, pkt: RtpAudio) -> None:
        for fn in self._hooks:
            try:
                fn(party, pkt)
            except Exception:
                self._hook_errors += 1
                if self._hook_errors <= 10:
                    log.exception("AudioRelay packet hook %r failed", fn)

    # -- observation -------------------------------------------------------------------------------------
    def stats(self) -> PassthroughStats:
        """Per direction: packets/bytes in and out, drops, bridge latency (tap arrival -> transport)."""
        listener_outs = [o for pair in self._listeners for o in pair if o is not None]
        return {
            "kind": self.kind,
            "caller_to_cs": {
                "in_packets": self.caller_in.packets,
                "in_bytes": self.caller_in.bytes,
                **self.cs_out.stats(),
            },
            "cs_to_caller": {
                "in_packets": self.cs_in.packets,
                "in_bytes": self.cs_in.bytes,
                **self.caller_out.stats(),
            },
            "human": (
                {"in_packets": self._human.packets, "in_bytes": self._human.bytes}
                if self._human is not None
                else None
            ),
            "human_out": self._human_out.stats() if self._human_out is not None else None,
            "listeners": {
                "count": len(self._listeners),
                "packets": sum(o.packets_sent for o in listener_outs),
                "dropped": sum(o.dropped for o in listener_outs),
                "latency_ms": latency_summary([s for o in listener_outs for s in o.latency_samples()]),
            },
            "on_hold": self.on_hold,
            "hook_errors": self._hook_errors,
            "impairment": self.impairment_stats(),
        }

    def impairment_stats(self, origin_s: float = 0.0) -> dict[str, ImpairStats] | None:
        """What the impairment stages applied per direction; None when this relay does not impair. `origin_s`:
        when start() ran on the caller's clock (blackout windows are given on it)."""
        if self._impair_to_cs is None or self._impair_to_caller is None:
            return None
        return {
            "caller_to_cs": self._impair_to_cs.stats(origin_s),
            "cs_to_caller": self._impair_to_caller.stats(origin_s),
        }

"""The relay contracts: what carries a call's audio between its two agent legs, and what else a relay can do.

Every relay is a `Relay` (start, stop, stats). What only some relays can do is a capability of its own, an ABC
that a relay implements only when it really can; nothing is stubbed "so callers get an answer". A caller
checks the capability with isinstance and, when the call's relay lacks it, tells the user why (a listener or a
take-over on a call whose two legs use the WebSocket transport is a 409 naming the reason: bridge/participants.py).

    relay                                   Relay  PacketHooks  FanOut           Switchable
    AudioRelay (Opus pass-through)          yes    yes          OutboundAudio    yes          bridge/audio.py
    PcmRelay (two WebSocket legs, PCM16)    yes    -            -                -            realtime/transports.py
    TranscodeRelay (the bench's baseline)   yes    -            ForwardTrack     -            bench/transcode.py

Here, below bridge/ and realtime/, so that every relay's module can import it and imports still run one way.
`RelayStats`, what every relay's stats() holds, lives with the call's other records in voicebridge/results.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Generic, Literal, Protocol, TypeVar

from voicebridge.results import RelayStats

from .passthrough import OutboundStats, RtpAudio

Party = Literal["caller", "cs", "human"]
PacketHook = Callable[[Party, RtpAudio], None]
Out = TypeVar("Out")


class AudioSink(Protocol):
    """Where the pass-through relay sends a party's packets: an OutboundAudio, or one behind a browser's own
    impairment stage (media/impair.py ImpairedSink)."""

    @property
    def packets_sent(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    def send(self, pkt: RtpAudio, source: str = "") -> None: ...

    def latency_samples(self) -> list[float]: ...

    def stats(self) -> OutboundStats: ...


class PacketSource(Protocol):
    """Where a human's packets come from: an InboundTap, or one behind the browser's own impairment stage
    (media/impair.py ImpairedTap)."""

    @property
    def packets(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    def subscribe(self, fn: Callable[[RtpAudio], None]) -> Callable[[], None]: ...


class Relay(ABC):
    """Carries both agents' audio to each other, from `start()` until `stop()`."""

    kind: ClassVar[str]  # "passthrough", "pcm", "transcode": also `stats()["kind"]`
    # One sentence on what it carries and how, for messages that say why it cannot do something.
    description: ClassVar[str]

    @abstractmethod
    def start(self) -> None:
        """Begin relaying in both directions. Called once both legs are connected (their audio ends exist).

        A second call does nothing. Raises RuntimeError when a leg's audio end is missing; nothing is then
        relayed and `stop()` is still safe.
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop relaying: no packet or frame is forwarded once it returns. Safe before `start()`, and more than
        once; does not raise. `stats()` still answers afterwards."""

    @abstractmethod
    def stats(self) -> RelayStats:
        """A JSON-able snapshot (counters per direction, latency); any time, before start or after stop."""


class PacketHooks(ABC):
    """A relay that forwards Opus packets and lets observers see each one (recording, turn latency, metrics)."""

    @abstractmethod
    def on_packet(self, fn: PacketHook) -> Callable[[], None]:
        """Call fn(party, packet) for each packet from now on, after it has been forwarded; returns the function
        that removes fn. fn runs inside the receive path: it must be quick, and an exception in it is logged and
        counted, never raised into the relay."""


class FanOut(ABC, Generic[Out]):
    """A relay that also sends both parties to listeners (`Out` is what a listener's party is sent through)."""

    @abstractmethod
    def add_listener(self, caller_out: Out | None, cs_out: Out | None) -> Callable[[], None]:
        """Send the caller party to caller_out and the CS party to cs_out (either may be None: that party is not
        sent) from now on, without disturbing the call; returns the function that removes this listener."""


class Switchable(ABC):
    """A relay whose caller source can be switched to a human (take-over) and back, with the agent on hold."""

    # On hold, the caller agent still hears the CS agent (True) or hears nothing (False); read at each switch.
    hold_hears_cs: bool

    @property
    @abstractmethod
    def on_hold(self) -> bool:
        """True while a human, not the caller agent, is the caller the CS agent hears."""

    @abstractmethod
    def set_caller_source(self, human: PacketSource | None, human_out: AudioSink | None = None) -> None:
        """None: the caller agent talks to the CS agent again. Else the human's packets (tap) go to the CS agent
        instead, and the CS agent is sent to human_out; the CS agent's stream stays continuous (no timestamp
        jump). Takes effect at the next packet."""

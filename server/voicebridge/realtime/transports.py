"""Choosing a leg's transport, and linking two WebSocket legs.

* `leg_factory(caller, cs)`: a Call's leg factory with a transport per role, "webrtc" (Opus over a peer
  connection, relayed without transcoding) or "ws" (the WebSocket transport, PCM16 in JSON events).
* `PcmRelay`: when both legs are WebSocket legs there is no Opus anywhere, so each leg's played PCM frames go
  straight into the other's input buffer. It is a `Relay` and nothing more (media/relay.py): no packets to
  hook, fan out or switch, so such a call has no recording, listeners or take-over.

Kept apart from websocket.py so that module stays the leg itself (its events, playout and barge-in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from voicebridge.config import Settings
from voicebridge.media.relay import Relay
from voicebridge.results import RelayStats

from .leg import Leg
from .websocket import WebSocketLeg

Direction = Literal["caller_to_cs", "cs_to_caller"]


class PcmRelayStats(RelayStats):
    frames: dict[Direction, int]  # 20 ms PCM16 frames handed over, per direction
    on_hold: bool  # always False: nobody can take over such a call (kept so every relay's stats say it)


class PcmRelay(Relay):
    """Two WebSocket legs: each one's played frames go straight to the other's input, PCM16 as it is."""

    kind = "pcm"
    description = (
        "both legs use the WebSocket transport, so their PCM16 frames are handed over as they are, with no Opus "
        "packets to send to listeners or to switch to a human caller; those need at least one WebRTC leg "
        "(--caller-transport/--cs-transport webrtc)"
    )

    def __init__(self, caller: WebSocketLeg, cs: WebSocketLeg) -> None:
        self.caller, self.cs = caller, cs
        self._unsubs: list[Callable[[], None]] = []
        self.frames: dict[Direction, int] = {"caller_to_cs": 0, "cs_to_caller": 0}

    def start(self) -> None:
        if self._unsubs:
            return
        self._unsubs = [
            self.caller.on_pcm(lambda pcm, _at: self._forward("caller_to_cs", self.cs, pcm)),
            self.cs.on_pcm(lambda pcm, _at: self._forward("cs_to_caller", self.caller, pcm)),
        ]

    def _forward(self, direction: Direction, to: WebSocketLeg, pcm: bytes) -> None:
        self.frames[direction] += 1
        to.append_pcm(pcm)

    def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []

    def stats(self) -> PcmRelayStats:
        return {"kind": self.kind, "frames": dict(self.frames), "on_hold": False}


def leg_factory(caller: str = "webrtc", cs: str = "webrtc") -> Callable[[str, Settings], Leg]:
    """A Call's leg factory with a transport per role ("webrtc" or "ws")."""
    chosen = {"caller": caller, "cs": cs}
    for role, name in chosen.items():
        if name not in ("webrtc", "ws", "websocket"):
            raise ValueError(f"{role} transport must be 'webrtc' or 'ws', got {name!r}")

    def make(role: str, settings: Settings) -> Leg:
        if chosen.get(role, "webrtc") == "webrtc":
            from .webrtc import WebRtcLeg

            return WebRtcLeg(role, settings)
        return WebSocketLeg(role, settings)

    return make

"""Choosing a leg's transport, and linking two WebSocket legs.

* `leg_factory(caller, cs)`: a Call's leg factory with a transport per role, "webrtc" (Opus over a peer
  connection, relayed without transcoding) or "ws" (the WebSocket transport, PCM16 in JSON events).
* `PcmRelay`: when both legs are WebSocket legs there is no Opus anywhere, so each leg's played PCM frames go
  straight into the other's input buffer; it answers the AudioRelay methods the call uses.

Kept apart from websocket.py so that module stays the leg itself (its events, playout and barge-in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voicebridge.config import Settings

from .leg import Leg
from .websocket import WebSocketLeg


class PcmRelay:
    """Two WebSocket legs: each one's played frames go straight to the other's input, PCM16 as it is."""

    def __init__(self, caller: WebSocketLeg, cs: WebSocketLeg) -> None:
        self.caller, self.cs = caller, cs
        self._unsubs: list[Callable[[], None]] = []
        self.frames = {"caller_to_cs": 0, "cs_to_caller": 0}

    def start(self) -> None:
        if self._unsubs:
            return
        self._unsubs = [
            self.caller.on_pcm(lambda pcm, _at: self._forward("caller_to_cs", self.cs, pcm)),
            self.cs.on_pcm(lambda pcm, _at: self._forward("cs_to_caller", self.caller, pcm)),
        ]

    def _forward(self, direction: str, to: WebSocketLeg, pcm: bytes) -> None:
        self.frames[direction] += 1
        to.append_pcm(pcm)

    def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []

    def stats(self) -> dict[str, Any]:
        return {"kind": "pcm", "frames": dict(self.frames), "on_hold": False}

    # AudioRelay's other methods, so callers written for it get an answer instead of an AttributeError.
    on_hold = False

    def on_packet(self, fn: Callable[[str, Any], None]) -> Callable[[], None]:
        """No Opus packets cross this relay: packet hooks (metrics, recording) are accepted and never called."""
        return lambda: None

    def add_listener(self, caller_out: Any, cs_out: Any) -> Callable[[], None]:
        raise RuntimeError(NO_OPUS)

    def set_caller_source(self, human: Any, human_out: Any = None) -> None:
        raise RuntimeError(NO_OPUS)


NO_OPUS = (
    "both legs of this call use the WebSocket transport (PCM16, relayed without a codec): listeners and a human "
    "caller need at least one WebRTC leg (--caller-transport/--cs-transport webrtc)"
)


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

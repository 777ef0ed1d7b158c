"""The core's two contracts: a Leg must implement its transport, and each relay claims only what it can do.

The capability table here is the one in media/relay.py's docstring and docs/architecture.md: a stub added
"so callers get an answer" (a relay claiming a capability it cannot honour) fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from voicebridge.bench.transcode import TranscodeRelay
from voicebridge.bridge.audio import AudioRelay
from voicebridge.media.relay import FanOut, PacketHooks, Relay, Switchable
from voicebridge.realtime.leg import Leg
from voicebridge.realtime.transports import PcmRelay
from voicebridge.realtime.webrtc import WebRtcLeg
from voicebridge.realtime.websocket import WebSocketLeg

pytestmark = pytest.mark.unit

CAPABILITIES = (PacketHooks, FanOut, Switchable)


@pytest.mark.parametrize(
    ("relay", "kind", "can"),
    [
        (AudioRelay, "passthrough", {PacketHooks, FanOut, Switchable}),
        (PcmRelay, "pcm", set()),
        (TranscodeRelay, "transcode", {FanOut}),
    ],
)
def test_each_relay_is_a_relay_with_exactly_its_capabilities(relay: type[Relay], kind: str, can: set[type]) -> None:
    assert issubclass(relay, Relay) and relay.kind == kind and relay.description
    assert {c for c in CAPABILITIES if issubclass(relay, c)} == can
    assert not getattr(relay, "__abstractmethods__", None)  # every abstract method really implemented


def test_the_contracts_cannot_be_instantiated_themselves() -> None:
    for abstract in (Relay, *CAPABILITIES):
        with pytest.raises(TypeError, match="abstract"):
            abstract()


def test_a_leg_must_implement_its_whole_transport() -> None:
    class Half(Leg):
        async def connect(self, session: dict[str, Any]) -> None:
            self.state = "open"

    with pytest.raises(TypeError, match="abstract") as refused:
        Half("caller")  # type: ignore[abstract]
    assert all(name in str(refused.value) for name in ("_transmit", "hangup", "stats"))  # what is missing
    assert Leg.__abstractmethods__ == {"connect", "hangup", "stats", "_transmit"}
    assert not WebRtcLeg.__abstractmethods__ and not WebSocketLeg.__abstractmethods__

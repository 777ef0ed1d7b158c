"""What a WebRTC session sends, as a real aiortc peer on loopback receives it (emulator/mouth.py's paced sender, and
its fallback, the track pulled by aiortc's send loop, when aiortc's internals are not what the sender hooks).

The peer (the tests' browser-shaped client) takes the session's RTP off its receiver undecoded (`InboundTap`). Over
silence -> a whole line -> silence -> a line cut by a barge-in -> silence it must get: the line's cached Opus
packets byte for byte and in order, then, after the barge-in, exactly the packets the session counted as played
(`conversation.item.truncated`'s audio_end_ms) and only silence after them; one continuous stream (sequence numbers
one apart, timestamps 960 apart, the marker bit on every packet as aiortc's sender sets it); and RTCP sender
reports for that stream, whose counters getStats reports too.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

import pytest
from aiortc.rtp import AnyRtcpPacket, RtcpSrPacket

from tests.integration.conftest import _VOICE, LATE_ORDER, Client, cs_session
from voicebridge.emulator import mouth
from voicebridge.emulator.persona import GENERIC_REPLY
from voicebridge.emulator.server import Emulator
from voicebridge.media import passthrough
from voicebridge.media.passthrough import AiortcIncompatible, InboundTap, RtpAudio

pytestmark = pytest.mark.integration
CS = LATE_ORDER.cs
GREETING = CS.script[0].say or ""
SILENCE = _VOICE.silence_packet
AFTER = 25  # packets the peer waits for after a line's end (or cut) before looking at what followed it


class Received:
    """What the peer's receiver got from the session, packet by packet, and its RTCP sender reports."""

    def __init__(self, client: Client) -> None:
        receiver = client.pc.getTransceivers()[0].receiver
        self.tap = InboundTap(receiver)  # before the offer: every packet of the session comes here, undecoded
        self.tap.subscribe(self._on_packet)
        self.got: list[RtpAudio] = []
        self.reports: list[RtcpSrPacket] = []
        self.report = asyncio.Event()
        self._count: list[tuple[int, asyncio.Future[None]]] = []
        real = receiver._handle_rtcp_packet

        async def handle(packet: AnyRtcpPacket) -> None:
            await real(packet)
            if isinstance(packet, RtcpSrPacket):
                self.reports.append(packet)
                self.report.set()

        receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]

    def _on_packet(self, pkt: RtpAudio) -> None:
        self.got.append(pkt)
        for n, fut in self._count:
            if len(self.got) >= n and not fut.done():
                fut.set_result(None)

    async def until(self, n: int) -> None:
        """Wait until `n` packets have arrived in all."""
        if len(self.got) >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count.append((n, fut))
        await asyncio.wait_for(fut, 15)

    def payloads(self, start: int = 0) -> list[bytes]:
        return [p.payload for p in self.got[start:]]


@pytest.fixture(params=["paced", "aiortc's send loop"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param != "paced":

        def incompatible(**_: Any) -> None:
            raise AiortcIncompatible("aiortc changed (this test says so)")

        monkeypatch.setattr(mouth, "check_aiortc_compatibility", incompatible)
    return str(request.param)


async def test_the_peer_receives_the_lines_exactly_and_a_barge_in_stops_them(
    emulator: Emulator, client: Client, path: str
) -> None:
    ear = Received(client)
    session_config = cs_session(turn_detection={"type": "server_vad", "create_response": False})
    call_id = await client.connect(emulator.base_url, session_config)
    await client.wait_for("session.created")
    session = emulator.sessions[call_id]
    assert (session.paced is not None) == (path == "paced") and (session.track is None) == (path == "paced")
    await ear.until(10)  # silence first

    # A whole line: its packets byte for byte, in order, between silence.
    greeting = (await _VOICE.speak(GREETING, CS.espeak_voice, CS.espeak_speed)).packets
    start = len(client.events)
    client.send({"type": "response.create"})
    started = await client.wait_for("output_audio_buffer.started", start=start)
    stopped = await client.wait_for("output_audio_buffer.stopped", start=start, within=30)
    assert stopped["response_id"] == started["response_id"]
    at_stop = len(ear.got)
    await ear.until(at_stop + AFTER)
    heard = ear.payloads()
    first = next(i for i, p in enumerate(heard) if p != SILENCE)
    assert first >= 10 and set(heard[:first]) == {SILENCE}
    assert heard[first : first + len(greeting)] == list(greeting)
    # output_audio_buffer.stopped came once the last packet had been sent (it may arrive before or after it).
    assert first + len(greeting) <= at_stop + 1
    assert set(heard[first + len(greeting) :]) == {SILENCE}

    # The session's sender and its RTCP: getStats counts what it sent; a sender report for this stream arrives.
    sender = session.pc.getTransceivers()[0].sender  # type: ignore[union-attr]
    outbound = next(s for s in (await sender.getStats()).values() if s.type == "outbound-rtp")
    assert outbound.packetsSent >= len(heard)
    if session.paced is not None:  # sent in the pacer's tick: counted at once
        assert outbound.packetsSent == session.paced.packets_sent == session.paced.out.packets_sent
    await asyncio.wait_for(ear.report.wait(), 15)

    # A barge-in: the playing line stops where the truncation says, and only silence follows.
    reply = (await _VOICE.speak(GENERIC_REPLY, CS.espeak_voice, CS.espeak_speed)).packets  # the start rule fired
    start = len(client.events)
    before = len(ear.got)
    client.send({"type": "response.create"})
    await client.wait_for("output_audio_buffer.started", start=start)
    await client.say("Hello, my order has not arrived.")
    truncated = await client.wait_for("conversation.item.truncated", start=start)
    await client.wait_for("output_audio_buffer.cleared", start=start)
    played = truncated["audio_end_ms"] // 20
    assert 0 < played < len(reply)
    await ear.until(len(ear.got) + AFTER)
    after = ear.payloads(before)
    cut_first = next(i for i, p in enumerate(after) if p != SILENCE)
    assert after[cut_first : cut_first + played] == list(reply[:played])
    assert set(after[cut_first + played :]) == {SILENCE}  # not one packet of the line after the cut
    assert not [e for e in client.events[start:] if e["type"] == "output_audio_buffer.stopped"]

    # One continuous stream throughout: no gap, no jump, the marker as aiortc's sender sets it.
    seqs = [p.sequence for p in ear.got]
    stamps = [p.timestamp for p in ear.got]
    assert all((b - a) & 0xFFFF == 1 for a, b in pairwise(seqs))
    assert all((b - a) & 0xFFFFFFFF == 960 for a, b in pairwise(stamps))
    assert all(p.marker for p in ear.got)
    ssrc = sender._ssrc
    assert all(r.ssrc == ssrc for r in ear.reports)
    assert {r.sender_info.rtp_timestamp for r in ear.reports if r.sender_info.packet_count} <= set(stamps)


async def test_with_the_short_path_off_a_session_speaks_through_aiortcs_send_loop(
    emulator: Emulator, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passthrough, "SHORT_PATH", False)
    call_id = await client.connect(emulator.base_url, cs_session())
    await client.wait_for("session.created")
    session = emulator.sessions[call_id]
    assert session.paced is None and session.mouth is session.track is not None

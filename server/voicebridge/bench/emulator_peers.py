"""The emulator bench's WebRTC peers: one per session, and the one 20 ms clock that sends for them all."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .emulator_phases import API_KEY, FRAME_S, PAUSE_S
from .emulator_turns import Turn


class Peer:
    """One client session: sends its stream (or silence) every 20 ms, counts the audio it receives, asks for
    speech, and in the turns phase says its line and times the emulator's answer."""

    def __init__(self, silence: bytes) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        from voicebridge.media.passthrough import InboundTap, OutboundAudio

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.out = OutboundAudio()
        self.out.add_to(self.pc)
        assert self.out.receiver is not None
        self.tap = InboundTap(self.out.receiver)
        self.received = 0
        self.tap.subscribe(self._on_audio)
        self.channel = self.pc.createDataChannel("oai-events")
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channel.on("open", self._on_open)
        self.channel.on("message", self._on_message)
        self.speaking = False
        self.responses = 0  # response.created events
        self.answered = asyncio.Event()  # a response was created: the emulator speaks
        self.stalled = False  # asked for a response that never came: given up on
        self.sending = False
        self._silence = silence
        self._stream: tuple[bytes, ...] = ()
        self._pos = 0
        self._loop_stream = False
        self._seq = 0
        self._ts = 0
        # The turns phase.
        self.line: tuple[bytes, ...] = ()
        self.turns: list[Turn] = []
        self.turn: Turn | None = None
        self.want = 0
        self.cut = 0  # answers cut off (a line heard as two turns)
        self.done = asyncio.Event()

    def _on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def _on_audio(self, pkt: Any) -> None:
        from voicebridge.emulator.listening import may_hold_speech

        self.received += 1
        turn = self.turn
        if turn is not None and turn.created is not None and turn.audio is None and may_hold_speech(pkt.payload):
            turn.audio = pkt.received_at

    def _on_message(self, message: str) -> None:
        event = json.loads(message)
        kind = event.get("type")
        now = time.perf_counter()
        turn = self.turn
        if kind == "response.created":
            self.responses += 1
            self.answered.set()
            if turn is not None and turn.created is None:
                turn.created = now
        elif kind == "response.done":
            if self.speaking:
                self.send_event({"type": "response.create"})
        elif turn is None:
            return
        elif kind == "input_audio_buffer.speech_stopped" and turn.vad is None:
            turn.vad = now
        elif kind == "conversation.item.input_audio_transcription.completed" and turn.recognized is None:
            turn.recognized, turn.transcript = now, event.get("transcript") or ""
        elif kind == "output_audio_buffer.stopped" and turn.audio is not None:
            self.turns.append(turn)
            self.turn = None
            if len(self.turns) >= self.want:
                self.done.set()
            else:
                asyncio.get_running_loop().call_later(PAUSE_S, self.say)
        elif kind == "output_audio_buffer.cleared" and turn.end is not None:
            # The answer was cut off: the VAD heard the line as two turns and the second interrupted the answer
            # to the first. Not a turn that can be timed; say the line again.
            self.cut += 1
            self.turn = None
            asyncio.get_running_loop().call_later(PAUSE_S, self.say)

    def send_event(self, event: dict[str, Any]) -> None:
        if self.channel.readyState != "open":  # the session ended (an overloaded emulator can lose its peers)
            return
        self.channel.send(json.dumps(event))

    @property
    def lost(self) -> bool:
        closed = self.pc.connectionState in ("failed", "closed") or self.channel.readyState != "open"
        return closed or self.stalled

    async def connect(self, base_url: str, instructions: str) -> None:
        import aiohttp
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base_url}/realtime/calls", data=self.pc.localDescription.sdp, headers=headers
            ) as r:
                body = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"bench: the emulator refused the call ({r.status}): {body[:300]}")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        await asyncio.wait_for(self.opened, 30)
        # Turns are detected (the VAD runs) and transcribed, but answered only when the bench asks: hearing stays
        # hearing until the turns phase.
        self.configure(create_response=False, instructions=instructions)

    def configure(self, create_response: bool, instructions: str | None = None) -> None:
        session: dict[str, Any] = {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {"type": "server_vad", "create_response": create_response},
                    "transcription": {"model": "gpt-4o-transcribe"},
                }
            },
        }
        if instructions is not None:
            session["instructions"] = instructions
        self.send_event({"type": "session.update", "session": session})

    def play(self, stream: list[bytes] | tuple[bytes, ...], loop: bool, start: int = 0) -> None:
        self._stream, self._pos, self._loop_stream = tuple(stream), start, loop

    def say(self) -> None:
        """The turns phase: say the line once (then silence), and time the answer."""
        self.turn = Turn()
        self.play(self.line, loop=False)

    def next_payload(self) -> bytes | None:
        if not self.sending:
            return None
        if self._pos >= len(self._stream):
            return self._silence
        payload = self._stream[self._pos]
        self._pos += 1
        if self._pos == len(self._stream):
            if self._loop_stream:
                self._pos = 0
            elif self.turn is not None and self.turn.end is None:
                self.turn.end = time.perf_counter()
        return payload

    def send(self, payload: bytes) -> None:
        from voicebridge.media.passthrough import RtpAudio

        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + 960) & 0xFFFFFFFF
        self.out.send(RtpAudio(payload, self._ts, self._seq, False, time.perf_counter()), "bench")

    async def close(self) -> None:
        self.out.close()
        self.tap.close()
        await self.pc.close()


class Sender:
    """One 20 ms clock for every peer: each tick sends each peer its next packet."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.late = 0
        loop = asyncio.get_running_loop()
        self._next = loop.time()
        self._handle = loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._next > 0.2:
            self.late += 1
            self._next = loop.time()
        for peer in self.peers:
            payload = peer.next_payload()
            if payload is not None:
                peer.send(payload)
        self._next += FRAME_S
        self._handle = loop.call_at(self._next, self._tick)

    def stop(self) -> None:
        self._handle.cancel()

"""A Leg over WebRTC: one aiortc peer connection with its `oai-events` data channel, Opus on the RTP track.

The bridge is the offerer, exactly like a browser client: the audio sender and the data channel are added
BEFORE the offer (the API only answers what was offered), the offer goes to POST /realtime/calls through the
SDK, and the leg is ready when the server's `session.created` arrives on the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from voicebridge.config import Settings
from voicebridge.media.passthrough import InboundTap, OutboundAudio

from .api import LegError, RealtimeApi
from .leg import Leg

log = logging.getLogger(__name__)
MAX_EVENT_CHARS = 1024 * 1024
PEER_CHECK_S = 0.5  # how often the peer watchdog looks at the received-datagram counter


class WebRtcLeg(Leg):
    def __init__(self, role: str, settings: Settings) -> None:
        super().__init__(role)
        self.settings = settings
        self.api = RealtimeApi(settings.base_url, settings.api_key, timeout_s=settings.session_timeout_s)
        self.pc: RTCPeerConnection | None = None
        self._dc: Any = None
        self._session_created: asyncio.Future[dict[str, Any]] | None = None
        self.offer_sdp = ""
        self.answer_sdp = ""
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    async def connect(self, session: dict[str, Any]) -> None:
        """Offer, create the call, apply the answer, await session.created; raises LegError on failure."""
        if self.state != "new":
            raise LegError(f"{self.role} leg: connect() called twice")
        self.state = "connecting"
        self.session = session
        loop = asyncio.get_running_loop()
        self._session_created = loop.create_future()
        servers = [RTCIceServer(urls=u) for u in self.settings.ice_servers]
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.emit("peer_connection", pc)  # before any negotiation, so a debug recorder sees it all
        pc.on("connectionstatechange", self._on_connection_state)
        self.audio_out = OutboundAudio()
        self.audio_out.add_to(pc)
        self._dc = dc = pc.createDataChannel("oai-events")
        dc.on("message", self._on_message)
        dc.on("close", lambda: self._fail("the oai-events data channel closed"))
        try:
            await pc.setLocalDescription(await pc.createOffer())
            self.offer_sdp = pc.localDescription.sdp
            self.answer_sdp, self.call_id = await self.api.create_call(self.offer_sdp, session)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
            except Exception as e:
                raise LegError(f"{self.role} leg: the SDP answer was refused: {e}") from e
            if self.audio_out.receiver is None:
                raise LegError(f"{self.role} leg: no audio transceiver")
            # The same transceiver receives the agent's audio: tap it before any RTP can arrive.
            self.audio_in = InboundTap(self.audio_out.receiver)
            try:
                await asyncio.wait_for(asyncio.shield(self._session_created), self.settings.session_timeout_s)
            except TimeoutError:
                raise LegError(
                    f"{self.role} leg: no session.created within {self.settings.session_timeout_s:g} s "
                    f"(call {self.call_id}, connection {pc.connectionState})"
                ) from None
            if self.state != "connecting":
                raise LegError(f"{self.role} leg: {self.failure or 'closed while connecting'}")
        except BaseException:
            self.state = "failed"
            await self._close_transport()
            raise
        self.state = "open"
        if self.settings.peer_silence_timeout_s > 0:
            self._watchdog = asyncio.ensure_future(self._watch_peer(self.settings.peer_silence_timeout_s))

    async def _watch_peer(self, limit_s: float) -> None:
        """Fail the leg when the peer has sent nothing (no RTP, RTCP or SCTP) for `limit_s`: a killed
        emulator or a vanished network is then noticed in seconds, not after ICE consent gives up (~30 s)."""
        loop = asyncio.get_running_loop()
        last, since, quiet = -1, loop.time(), 0
        while self.state == "open" and self.pc is not None:
            await asyncio.sleep(PEER_CHECK_S)
            count = await self._datagrams_received()
            now = loop.time()
            if count != last:
                last, since, quiet = count, now, 0
                continue
            quiet += 1  # also counted, so a stalled event loop (checks bunched up) is not read as silence
            if now - since >= limit_s and quiet * PEER_CHECK_S >= limit_s / 2 and self.state == "open":
                self._fail(f"nothing received from the remote peer for {now - since:.1f} s (peer gone)")
                return

    async def _datagrams_received(self) -> int:
        if self.pc is None:
            return -1
        try:
            report = await self.pc.getStats()
        except Exception:  # closing under us: the state check ends the loop
            return -1
        return sum(int(getattr(s, "packetsReceived", 0) or 0) for s in report.values() if s.type == "transport")

    def _on_message(self, message: Any) -> None:
        if isinstance(message, bytes):
            log.warning("%s leg: binary data-channel message ignored (%d bytes)", self.role, len(message))
            return
        if len(message) > MAX_EVENT_CHARS:  # we advertise 256 KiB; a peer that ignores it is not parsed
            log.warning("%s leg: %d-character data-channel message dropped", self.role, len(message))
            self.invalid_events.append({"problem": f"over {MAX_EVENT_CHARS} characters", "event": message[:200]})
            return
        try:
            event = json.loads(message)
        except json.JSONDecodeError as e:
            log.warning("%s leg: data-channel message is not JSON: %s", self.role, e)
            self.invalid_events.append({"problem": f"not JSON: {e}", "event": message[:200]})
            return
        if not isinstance(event, dict):
            self.invalid_events.append({"problem": "not a JSON object", "event": str(event)[:200]})
            return
        if (
            event.get("type") == "session.created"
            and self._session_created
            and not self._session_created.done()
        ):
            self._session_created.set_result(event)
        self._received(event)

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._fail(f"peer connection {state}")
            if self._session_created and not self._session_created.done():
                self._session_created.set_result({})

    def _fail(self, reason: str) -> None:
        if self.state == "connecting":
            self.failure = reason
            self.state = "failed"
            if self._session_created and not self._session_created.done():
                self._session_created.set_result({})
            return
        super()._fail(reason)

    def _transmit(self, text: str) -> None:
        if self._dc is None or self._dc.readyState != "open":
            raise LegError(f"{self.role} leg: the data channel is not open")
        self._dc.send(text)

    async def hangup(self) -> None:
        """REST hang-up (best effort: a dropped leg may be gone already), then close the peer connection."""
        if self.state in ("closing", "closed"):
            await self.closed.wait()
            return
        was = self.state
        self.state = "closing"
        if self.call_id:
            try:
                await asyncio.wait_for(self.api.hangup(self.call_id), self.settings.session_timeout_s)
            except (LegError, TimeoutError) as e:
                level = logging.INFO if was == "failed" else logging.WARNING
                log.log(level, "%s leg: hang-up: %s", self.role, e or "timed out")
        await self._close_transport()
        self.state = "failed" if was == "failed" else "closed"
        self.closed.set()
        self.emit("closed")

    async def _close_transport(self) -> None:
        """Close once; every caller waits for that one close. A cancelled caller must not cut a close short:
        aiortc's pc.close() interrupted half-way never finishes, and every later close() then waits forever
        (seen when both legs fail at once and one is cancelled while it is closing)."""
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close_once())
        await asyncio.shield(self._closing)

    async def _close_once(self) -> None:
        if self.audio_out is not None:
            with contextlib.suppress(Exception):
                self.audio_out.close()
        if self.pc is not None:
            await self.pc.close()
        await self.api.close()

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "call_id": self.call_id,
            "state": self.state,
            "events_in": self.events_in,
            "events_out": self.events_out,
            "invalid_events": len(self.invalid_events),
        }
        if self.failure:
            out["failure"] = self.failure
        if self.audio_in is not None:
            out["rtp_in"] = {"packets": self.audio_in.packets, "bytes": self.audio_in.bytes}
        if self.pc is not None and self.pc.connectionState not in ("closed",):
            with contextlib.suppress(Exception):
                report = await self.pc.getStats()
                out["rtc"] = {key: _plain(value) for key, value in report.items()}
        return out


def _plain(stat: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stat) and not isinstance(stat, type):
        data = dataclasses.asdict(stat)
    else:
        data = dict(vars(stat))
    return {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in data.items()}

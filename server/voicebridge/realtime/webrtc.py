"""A Leg over WebRTC: one aiortc peer connection with its `oai-events` data channel, Opus on the RTP track.

The bridge is the offerer, exactly like a browser client: the audio sender and the data channel are added
BEFORE the offer (the API only answers what was offered), the offer goes to POST /realtime/calls through the
SDK, and the leg is ready when the server's `session.created` arrives on the channel.

Ending is the same whenever it happens: the Realtime session is hung up with the REST endpoint before the peer
connection closes, and that includes a session still being created. A create in flight is never aborted (the
server may have made the session already, and its id would be lost): the leg lets it finish, bounded by the
request's own time-out, and hangs up the id it returns. Only a create that times out leaves a session the leg
cannot name; the server ends it when its peer never connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
from typing import Any, NotRequired, TypedDict

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from voicebridge.config import Settings
from voicebridge.media.passthrough import InboundTap, OutboundAudio

from .api import LegError, RealtimeApi
from .leg import Leg, LegStats

log = logging.getLogger(__name__)
MAX_EVENT_CHARS = 1024 * 1024
PEER_CHECK_S = 0.5  # how often the peer watchdog looks at the received-datagram counter


class PacketCount(TypedDict):
    packets: int
    bytes: int


class WebRtcStats(TypedDict):
    """What a WebRTC leg adds to LegStats."""

    rtp_in: NotRequired[PacketCount]  # the agent's Opus packets, once the answer is applied
    rtc: NotRequired[dict[str, dict[str, object]]]  # aiortc's getStats(), report id -> its fields


class WebRtcLegStats(LegStats, WebRtcStats):
    pass


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
        # POST /realtime/calls as its own task: cancelling connect() must not abort it (see the module doc).
        self._create: asyncio.Future[tuple[str, str]] | None = None

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
            self._still_connecting()
            self.offer_sdp = pc.localDescription.sdp
            self._create = asyncio.ensure_future(self.api.create_call(self.offer_sdp, session))
            self.answer_sdp, self.call_id = await asyncio.shield(self._create)
            self.emit("call_created", self.call_id)
            self._still_connecting()
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer_sdp, type="answer"))
            except Exception as e:
                raise LegError(f"{self.role} leg: the SDP answer was refused: {e}") from e
            self._still_connecting()
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
            self._still_connecting()
        except asyncio.CancelledError:
            # Called off (a hang-up, the other leg failing, shutdown): end what was created or is being created.
            if self.state == "connecting":
                self.state = "closing"
            await self._close_transport()
            raise
        except BaseException:
            if self.state == "connecting":
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

    def _still_connecting(self) -> None:
        """After each step of connect(): stop if the leg failed or was hung up meanwhile."""
        if self.state != "connecting":
            raise LegError(f"{self.role} leg: {self.failure or 'hung up while connecting'}")

    async def hangup(self) -> None:
        """End the Realtime session (REST hang-up, including one still being created), then close the peer
        connection. Best effort: a dropped leg's session may be gone already."""
        if self.state in ("closing", "closed"):
            await self.closed.wait()
            return
        was = self.state
        self.state = "closing"
        await self._close_transport()
        self.state = "failed" if was == "failed" else "closed"
        self._closed_now()

    def _closed_now(self) -> None:
        if not self.closed.is_set():
            if self.state == "closing":
                self.state = "closed"
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
            # A leg called off while connecting is closed when this finishes, even if nobody is waiting any more.
            self._closing.add_done_callback(lambda _: self._closed_now() if self.state == "closing" else None)
        await asyncio.shield(self._closing)

    async def _close_once(self) -> None:
        await self._end_remote()  # first: against the emulator a closed peer would end the session on its own
        if self.audio_out is not None:
            with contextlib.suppress(Exception):
                self.audio_out.close()
        if self.pc is not None:
            await self.pc.close()
        await self.api.close()

    async def _end_remote(self) -> None:
        """REST hang-up of the session this leg created, or is creating: an in-flight create is awaited (its
        own time-out bounds it) so that a session the server made anyway is not left open."""
        call_id = self.call_id
        if call_id is None and self._create is not None:
            try:
                _, call_id = await self._create
            except LegError as e:
                if e.timed_out:
                    log.warning(
                        "%s leg: the Realtime create timed out; a session the server made anyway cannot be "
                        "hung up by id (it ends when its peer never connects)", self.role
                    )
                return  # nothing was created (or nothing we can name)
            log.info("%s leg: hanging up %s, created while the leg was ending", self.role, call_id)
        if call_id is None:
            return
        try:
            await asyncio.wait_for(self.api.hangup(call_id), self.settings.session_timeout_s)
        except (LegError, TimeoutError) as e:
            level = logging.INFO if self.failure else logging.WARNING
            log.log(level, "%s leg: hang-up: %s", self.role, e or "timed out")

    async def stats(self) -> WebRtcLegStats:
        own: WebRtcStats = {}
        if self.audio_in is not None:
            own["rtp_in"] = {"packets": self.audio_in.packets, "bytes": self.audio_in.bytes}
        if self.pc is not None and self.pc.connectionState not in ("closed",):
            with contextlib.suppress(Exception):
                report = await self.pc.getStats()
                own["rtc"] = {key: _plain(value) for key, value in report.items()}
        return {**self._base_stats(), **own}


def _plain(stat: object) -> dict[str, object]:
    if dataclasses.is_dataclass(stat) and not isinstance(stat, type):
        data = dataclasses.asdict(stat)
    else:
        data = dict(vars(stat))
    return {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in data.items()}

"""The Realtime GA WebSocket transport: `GET /v1/realtime?model=...` and the sideband `?call_id=rtc_...`.

* `?model=M` (or an `ek_` key) opens a WebSocket session: the same `Session`, personas and script as a WebRTC
  call, with `session.created` on connect. Audio in is `input_audio_buffer.append` (base64, in the session's
  `audio.input.format`: PCM16 24 kHz mono by default, or G.711 μ-law/A-law 8 kHz; heard by the same server VAD
  and ear: handlers.py); audio out is `response.output_audio.delta` events in `audio.output.format`, paced in
  real time by `DeltaMouth`. There are no output_audio_buffer.* events
  on a WebSocket (as the real API): the client plays the audio and truncates on barge-in itself.
* `?call_id=rtc_...` (an API key) joins an existing WebRTC call as a sideband: every server event the data
  channel gets goes to the socket too, and client events from the socket are handled as if from the channel.

A plain HTTP request to /v1/realtime (no WebSocket upgrade) keeps the retired beta shape's error (server.py),
and so does any `OpenAI-Beta: realtime...` header, on the handshake too.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import av
from aiohttp import WSMsgType, web

from voicebridge.edge.websocket import LimitedWebSocketResponse

from . import events as ev
from .audio_formats import PCM, RATES, encode
from .handlers import MAX_EVENT_BYTES, handle
from .keys import Keys, owner_of
from .limits import SessionCounter
from .persona import PersonaBook
from .schema import NO_SUCH_CALL, ApiError
from .session import Session
from .session_config import default_session
from .track import Playback, PlaybackQueue
from .voice import Voice

log = logging.getLogger(__name__)
FRAME_S = 0.020
# Like the real API (which generates faster than real time) a line starts with a burst: LEAD_S of audio at once,
# then real time. The client's playout buffer keeps that cushion, so a short stall on either side is no gap.
LEAD_S = 0.100
MAX_LAG_S = 2.0  # a stall shorter than this is caught up (a burst); after a longer one pacing restarts from now
MAX_QUEUED_EVENTS = 20000  # a client that stops reading for minutes is dropped, not buffered forever


class DeltaMouth(PlaybackQueue):
    """A session's speech as `response.output_audio.delta` events, one per 20 ms Opus packet of the cached line,
    decoded and converted to the output format (PCM16 24 kHz, or G.711 8 kHz: audio_formats.py; chosen when a
    line starts, so a session.update never switches format mid-line), sent at real-time pace after a LEAD_S
    burst. Idle: nothing is sent.

    Same contract as `SpeechTrack`: `Playback.started` resolves at the first delta, `finished` at the last
    (False if cleared first), and `sent_ms` says how much was sent.
    """

    def __init__(self, session: Session) -> None:
        super().__init__()
        self._s = session
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._decoder: Any = None
        self._resampler: Any = None
        self._format = PCM
        self._stopped = False
        self.deltas_sent = 0

    def play(self, packets: Sequence[bytes], tag: str) -> Playback:
        playback = Playback(packets, tag)
        if not playback.packets or self._stopped:
            playback._finish(not self._stopped)
            return playback
        self._queue.append(playback)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()
        return playback

    def stop(self) -> None:
        self._stopped = True
        self.clear()
        if self._task is not None:
            self._task.cancel()

    def _audio(self, payload: bytes, tag: str, first: bool) -> bytes:
        """One Opus packet of a line, in the session's output format."""
        if first or self._decoder is None:  # a new line: fresh decoder state, as a new RTP talkspurt
            self._format = self._s.output_format(tag)
            self._decoder = av.CodecContext.create("opus", "r")
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATES[self._format])
        out = []
        for frame in self._decoder.decode(av.Packet(payload)):
            for f in self._resampler.resample(frame):
                out.append(encode(self._format, f.to_ndarray().reshape(-1)))
        return b"".join(out)

    async def _run(self) -> None:
        next_t: float | None = None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                next_t = None
                continue
            now = time.monotonic()
            if next_t is None or now - next_t > MAX_LAG_S:
                next_t = now - LEAD_S
            elif next_t > now:
                await asyncio.sleep(max(0.0, next_t - now))
            next_t += FRAME_S
            if not self._queue:
                continue
            head = self._queue[0]
            audio = self._audio(head.packets[head.sent], head.tag, head.sent == 0)
            if head.sent == 0 and not head.started.done():
                head.started.set_result(True)
            head.sent += 1
            self._send_delta(head.tag, audio)
            if head.sent == len(head.packets):
                self._queue.popleft()
                head._finish(True)

    def _send_delta(self, response_id: str, audio: bytes) -> None:
        s = self._s
        r = s.responses.get(response_id)
        self.deltas_sent += 1
        s.send(
            ev.event(
                "response.output_audio.delta",
                response_id=response_id,
                item_id=s.audio_items.get(response_id, ""),
                output_index=len(r.output) if r is not None else 0,
                content_index=0,
                delta=base64.b64encode(audio).decode("ascii"),
            )
        )


class Host(Protocol):
    """What a WebSocket session needs of the emulator that serves it (server.py's Emulator)."""

    keys: Keys
    sessions: dict[str, Session]
    counter: SessionCounter
    personas: PersonaBook
    voice: Voice
    response_delay_ms: float  # the think time (timing.py)

    def session_closed(self, session: Session) -> None: ...


def is_websocket_request(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


async def realtime_socket(emulator: Host, request: web.Request) -> web.StreamResponse:
    """GET /v1/realtime with a WebSocket upgrade: a WebSocket session (?model=) or a sideband (?call_id=)."""
    key = emulator.keys.bearer(request)
    call_id = request.query.get("call_id")
    model = request.query.get("model")
    if call_id is not None and model is not None:
        raise ApiError(400, "Pass either 'model' (a new session) or 'call_id' (a sideband), not both.", param="call_id")
    if call_id is not None:
        emulator.keys.api_key(request)  # a sideband is a server's connection: API keys only
        session = emulator.sessions.get(call_id)
        if session is None or session.transport != "webrtc":
            raise ApiError(404, NO_SUCH_CALL, code="call_id_not_found", param="call_id")
        return await _serve(request, session, sideband=True)
    config = default_session(model or "gpt-realtime")
    secret = None
    if key.startswith("ek_"):
        secret = emulator.keys.redeem(key)
        config = secret.session
    elif not model:
        raise ApiError(
            400,
            "Missing required parameter: 'model' (or 'call_id' to join a WebRTC call).",
            code="missing_required_parameter",
            param="model",
        )
    session_id = str(config.get("id") or ev.new_id("sess"))
    # Counted against the limits (limits.py) in the same step as the check; a refusal is the handshake's 429.
    owner = secret.owner if secret is not None else owner_of(key)
    emulator.counter.add(session_id, owner, str(config.get("model") or "gpt-realtime"), needs_sockets=False)
    try:
        if secret is not None:
            emulator.keys.spend(secret)  # once across a group's workers (keys.py)
        session = Session(
            session_id,
            config,
            emulator.personas,
            emulator.voice,
            emulator.session_closed,
            transport="websocket",
            mouth=DeltaMouth,
            response_delay_ms=emulator.response_delay_ms,
        )
    except BaseException:
        emulator.counter.release(session_id)
        raise
    emulator.sessions[session.id] = session
    try:
        return await _serve(request, session, sideband=False)
    finally:
        await session.close("websocket closed")


async def _serve(request: web.Request, session: Session, *, sideband: bool) -> web.WebSocketResponse:
    ws = LimitedWebSocketResponse(max_msg_size=MAX_EVENT_BYTES, autoping=True)  # over it: close 1009, a reason
    await ws.prepare(request)
    outbox: asyncio.Queue[str | None] = asyncio.Queue()

    def sink(text: str) -> None:
        if outbox.qsize() >= MAX_QUEUED_EVENTS:
            log.warning("session %s: WebSocket client is not reading; closing it", session.id)
            outbox.put_nowait(None)
            return
        outbox.put_nowait(text)

    async def writer() -> None:
        while (text := await outbox.get()) is not None:
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                break
        await ws.close()

    async def close_with_session() -> None:
        await session.closed.wait()
        outbox.put_nowait(None)  # the queued events (the last words, errors) still go out first

    session.sinks.append(sink)
    tasks = [asyncio.ensure_future(writer()), asyncio.ensure_future(close_with_session())]
    if not sideband:
        session.send(ev.event("session.created", session=session.config))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                handle(session, msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.send_error(
                    ApiError(400, "Binary WebSocket messages are not supported: send JSON text events."),
                    None,
                )
            if session.closed.is_set():
                break
    finally:
        if sink in session.sinks:
            session.sinks.remove(sink)
        outbox.put_nowait(None)
        for t in tasks[1:]:
            t.cancel()
        try:
            await asyncio.wait_for(tasks[0], 2.0)
        except TimeoutError:
            tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ws

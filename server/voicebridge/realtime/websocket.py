"""A Leg over the Realtime WebSocket transport: JSON events and base64 PCM16 24 kHz mono audio on one socket.

The connection is the openai SDK's own (`client.realtime.connect(model=...)`), so the URL, headers and auth
are the SDK's. To the call it is the same Leg as `WebRtcLeg`:

* audio: `audio_in` is a `PcmToOpusTap` and `audio_out` an `OpusToPcmSink` (media/pcm.py), so the
  pass-through relay carries a WebSocket leg unchanged; the transcoding happens only here, where a WebSocket
  leg meets a WebRTC leg. Two WebSocket legs are linked PCM to PCM by `transports.PcmRelay` (no codec).
* playout: the server sends `response.output_audio.delta` as fast as it likes and no output_audio_buffer.*
  events (those exist only on WebRTC). The leg plays the audio itself, 20 ms every 20 ms (`_pace`), and emits
  its own `output_audio_buffer.started` / `stopped` / `cleared` server events (event ids `vb_playout_...`),
  the very events the call and the transcript wait on for turns and the hang-up drain.
* barge-in: on `input_audio_buffer.speech_started` while playing, it stops, drops the rest of that response's
  audio and sends `conversation.item.truncate` with `audio_end_ms` = what was actually played.
* The frame clock never stops while the leg is open: between lines it sends 20 ms of silence, because the
  other agent's server VAD only ends a turn after hearing silence.

Audio events are not re-emitted in full: a delta's `audio` is replaced by a short note, and appends are
counted, not emitted as client events (50 a second of base64 would bury the event log).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from openai import AsyncOpenAI

from voicebridge.config import Settings
from voicebridge.media.passthrough import latency_summary
from voicebridge.media.pcm import FRAME_BYTES, PCM_RATE, SILENCE, OpusToPcmSink, PcmToOpusTap

from .api import LegError, retry_after
from .http import http_client
from .leg import Leg, LegStats

if TYPE_CHECKING:
    from websockets.exceptions import InvalidStatus

log = logging.getLogger(__name__)
FRAME_S = 0.020
# A stall shorter than this is caught up (the frames owed are played at once) so the playout queue cannot drift
# behind the server's clock; after a longer one (a suspended process) the clock restarts from now.
MAX_LAG_S = 2.0
PCM_FORMAT = {"type": "audio/pcm", "rate": PCM_RATE}
BYTES_PER_MS = PCM_RATE * 2 // 1000  # 48
PcmListener = Callable[[bytes, float], None]


@dataclass(slots=True)
class _Frame:
    item_id: str
    response_id: str
    pcm: bytes  # exactly FRAME_BYTES
    received_at: float  # perf_counter() when its delta arrived


class PlayoutStats(TypedDict):
    delta_bytes: int  # PCM16 received in response.output_audio.delta
    frames_played: int
    silence_frames: int
    underruns: int  # ticks with a line still streaming but no frame ready (nothing sent)
    catch_ups: int
    clock_resets: int
    truncations: int  # conversation.item.truncate sent on barge-in
    appends: int  # input_audio_buffer.append sent
    appended_bytes: int
    playout_latency_ms: dict[str, float | int]
    encode_ms: float  # PCM -> Opus for a WebRTC other side, total
    decode_ms: float  # Opus -> PCM from a WebRTC other side, total


class WebSocketStats(TypedDict):
    """What a WebSocket leg adds to LegStats."""

    transport: Literal["websocket"]
    audio: PlayoutStats


class WebSocketLegStats(LegStats, WebSocketStats):
    pass


class WebSocketLeg(Leg):
    transport = "websocket"

    def __init__(self, role: str, settings: Settings) -> None:
        super().__init__(role)
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self._client: AsyncOpenAI | None = None
        self._conn: Any = None  # openai AsyncRealtimeConnection
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._created: asyncio.Future[dict[str, Any]] | None = None
        self._playout_ids = itertools.count(1)
        self.tap = PcmToOpusTap()  # the agent's audio, as Opus for a WebRTC leg (encodes only if subscribed)
        self.sink = OpusToPcmSink(self.append_pcm)  # Opus from a WebRTC leg, into this session as PCM16
        self.audio_in = self.tap
        self.audio_out = self.sink
        self._pcm_listeners: tuple[PcmListener, ...] = ()
        # playout state
        self._frames: deque[_Frame] = deque()
        self._partial = bytearray()
        self._partial_of: tuple[str, str, float] = ("", "", 0.0)
        self._streaming: dict[str, str] = {}  # item id -> response id, while more deltas may come
        self._cancelled: set[str] = set()  # response ids whose late deltas are dropped (after barge-in)
        self._playing: tuple[str, str] | None = None  # (item id, response id) being played out
        self.played_ms: dict[str, int] = {}  # item id -> ms of its audio actually played
        self.frames_played = 0
        self.silence_frames = 0
        self.underruns = 0
        self.catch_ups = 0
        self.clock_resets = 0
        self.truncations = 0
        self.delta_bytes = 0
        self.appends = 0
        self.appended_bytes = 0
        self._latency: deque[float] = deque(maxlen=4096)  # delta arrival -> played (the playout buffer)

    # -- connection ------------------------------------------------------------------------------------------
    async def connect(self, session: dict[str, Any]) -> None:
        """Open the socket, await session.created, apply the session (PCM16 24 kHz both ways); LegError."""
        if self.state != "new":
            raise LegError(f"{self.role} leg: connect() called twice")
        if not self.base_url:
            raise LegError("no Realtime base URL: set OPENAI_API_KEY, or use the emulator")
        try:  # the SDK's realtime client needs `websockets` (openai[realtime]); imported here so WebRTC-only
            from websockets.exceptions import InvalidStatus  # calls work without it
        except ImportError:
            raise LegError(
                f"{self.role} leg: the WebSocket transport needs the `websockets` package (pip install websockets)"
            ) from None
        self.state = "connecting"
        session = copy.deepcopy(session)
        audio = session.setdefault("audio", {})
        audio.setdefault("input", {})["format"] = dict(PCM_FORMAT)
        audio.setdefault("output", {})["format"] = dict(PCM_FORMAT)
        self.session = session
        timeout = self.settings.session_timeout_s
        self._created = asyncio.get_running_loop().create_future()
        try:
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self.settings.api_key or "sk-emulator",
                max_retries=0,
                http_client=http_client(),  # the process's TLS context, not a new one per leg
            )
            model = str(session.get("model") or self.settings.model)
            try:
                self._conn = await asyncio.wait_for(self._client.realtime.connect(model=model).enter(), timeout)
            except InvalidStatus as e:
                raise LegError(
                    f"{self.role} leg: {_refusal(self.base_url, e)}",
                    status=e.response.status_code,
                    retry_after_s=retry_after(e.response.headers),
                ) from None
            except TimeoutError:
                raise LegError(
                    f"{self.role} leg: no WebSocket handshake from {self.base_url} in {timeout:g} s"
                ) from None
            except OSError as e:
                raise LegError(f"{self.role} leg: cannot reach {self.base_url}: {type(e).__name__}: {e}") from None
            self._still_connecting()  # hung up during the handshake: the socket is closed below
            self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._write())]
            created = await self._wait(self._created, "session.created", timeout)
            self._still_connecting()
            self.call_id = str((created.get("session") or {}).get("id") or "") or None
            self.state = "open"
            await self._apply_session(session, timeout)
        except asyncio.CancelledError:
            # Called off (a hang-up, the other leg failing, shutdown). Closing the socket is this transport's
            # hang-up: a handshake cut short closes its TCP connection, so the server ends what it created.
            if self.state in ("connecting", "open"):
                self.state = "closing"
            await self._close_transport()
            if self.state == "closing":
                self.state = "closed"
                self.closed.set()
                self.emit("closed")
            raise
        except BaseException:
            await self._close_transport()
            if self.state not in ("closing", "closed"):  # hung up meanwhile: that stands
                self.state = "failed"
            raise
        self._tasks.append(asyncio.ensure_future(self._pace()))

    def _still_connecting(self) -> None:
        if self.state != "connecting":
            raise LegError(f"{self.role} leg: {self.failure or 'hung up while connecting'}")

    async def _wait(self, fut: asyncio.Future[dict[str, Any]], what: str, limit_s: float) -> dict[str, Any]:
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), limit_s)
        except TimeoutError:
            raise LegError(f"{self.role} leg: no {what} within {limit_s:g} s from {self.base_url}") from None
        if self.state == "failed":
            raise LegError(f"{self.role} leg: {self.failure or 'closed while connecting'}")
        return result

    async def _apply_session(self, session: dict[str, Any], limit_s: float) -> None:
        """session.update, then session.updated; the server's `error` for it fails the leg with its message."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        event_id = ""

        def watch(event: dict[str, Any]) -> None:
            kind = event.get("type")
            if done.done():
                return
            if kind == "session.updated":
                done.set_result(event)
            elif kind == "error" and (event.get("error") or {}).get("event_id") == event_id:
                done.set_exception(
                    LegError(f"{self.role} leg: the session was refused: {(event.get('error') or {}).get('message')}")
                )

        self.on("server_event", watch)
        try:
            event_id = self.send({"type": "session.update", "session": session})
            await self._wait(done, "session.updated", limit_s)
        finally:
            self.remove_listener("server_event", watch)

    def _fail(self, reason: str) -> None:
        if self.state == "connecting":
            self.failure = reason
            self.state = "failed"
            if self._created is not None and not self._created.done():
                self._created.set_result({})
            return
        super()._fail(reason)

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        conn = self._conn
        while True:
            try:
                raw = await conn.recv_bytes()
            except ConnectionClosed as e:
                if self.state not in ("closing", "closed"):
                    why = f"{e.rcvd.code} {e.rcvd.reason}".strip() if e.rcvd is not None else "no close frame"
                    self._fail(f"the WebSocket closed ({why})")
                return
            try:
                event = json.loads(raw)
            except ValueError as e:
                self.invalid_events.append({"problem": f"not JSON: {e}", "event": raw[:200]})
                continue
            if not isinstance(event, dict):
                self.invalid_events.append({"problem": "not a JSON object", "event": event})
                continue
            self._on_event(event)

    async def _write(self) -> None:
        from websockets.exceptions import ConnectionClosed

        while (text := await self._outbox.get()) is not None:
            try:
                await self._conn.send_raw(text)
            except ConnectionClosed:
                return  # the reader reports the close
            except Exception as e:
                self._fail(f"sending on the WebSocket failed: {type(e).__name__}: {e}")
                return

    def _transmit(self, text: str) -> None:
        if self._conn is None or self.state not in ("connecting", "open"):
            raise LegError(f"{self.role} leg: the WebSocket is not open")
        self._outbox.put_nowait(text)

    # -- server events ---------------------------------------------------------------------------------------
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "session.created" and self._created is not None and not self._created.done():
            self._created.set_result(event)
        elif kind == "response.output_audio.delta":
            event = self._on_delta(event)
        elif kind == "response.output_audio.done":
            self._end_stream(str(event.get("item_id", "")))
        elif kind == "response.done":
            rid = str((event.get("response") or {}).get("id", ""))
            for item in [i for i, r in self._streaming.items() if r == rid]:
                self._end_stream(item)
        self._received(event)
        if kind == "input_audio_buffer.speech_started":
            self._barge_in()

    def _on_delta(self, event: dict[str, Any]) -> dict[str, Any]:
        audio = event.get("delta", "")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError, TypeError):
            self.invalid_events.append({"problem": "audio delta is not base64", "event": str(audio)[:80]})
            pcm = b""
        item, rid = str(event.get("item_id", "")), str(event.get("response_id", ""))
        self.delta_bytes += len(pcm)
        if pcm and rid not in self._cancelled:
            self._enqueue(item, rid, pcm, time.perf_counter())
        return {**event, "delta": f"[{len(pcm)} bytes PCM16 elided]"}

    def _enqueue(self, item: str, rid: str, pcm: bytes, at: float) -> None:
        if self._partial and self._partial_of[0] != item:
            self._flush_partial()
        self._streaming[item] = rid
        if self._playing is None:
            # Playout starts at the next tick (<= 20 ms): say so now, before this response's transcript events.
            self._playing = (item, rid)
            self._playout_event("output_audio_buffer.started", rid)
        if not self._partial:
            self._partial_of = (item, rid, at)
        self._partial += pcm
        whole = len(self._partial) // FRAME_BYTES * FRAME_BYTES
        for i in range(0, whole, FRAME_BYTES):
            self._frames.append(_Frame(item, rid, bytes(self._partial[i : i + FRAME_BYTES]), self._partial_of[2]))
        del self._partial[:whole]
        if self._partial:
            self._partial_of = (item, rid, at)

    def _flush_partial(self) -> None:
        if self._partial:
            item, rid, at = self._partial_of
            pad = bytes(FRAME_BYTES - len(self._partial))
            self._frames.append(_Frame(item, rid, bytes(self._partial) + pad, at))
            self._partial.clear()

    def _end_stream(self, item: str) -> None:
        if self._partial_of[0] == item:
            self._flush_partial()
        self._streaming.pop(item, None)

    def _playout_event(self, kind: str, response_id: str) -> None:
        self._received({"type": kind, "event_id": f"vb_playout_{next(self._playout_ids)}", "response_id": response_id})

    def _barge_in(self) -> None:
        """The other side started talking over us: stop, and tell the server how much of the item was heard."""
        playing = self._playing or ((self._frames[0].item_id, self._frames[0].response_id) if self._frames else None)
        if playing is None:
            return
        item, rid = playing
        unplayed = any(f.item_id == item for f in self._frames) or item in self._streaming
        self._cancelled.add(rid)
        self._frames.clear()
        self._partial.clear()
        for i in [i for i, r in self._streaming.items() if r == rid]:
            del self._streaming[i]
        self._playing = None
        if unplayed and self.state == "open":
            self.truncations += 1
            self.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": item,
                    "content_index": 0,
                    "audio_end_ms": self.played_ms.get(item, 0),
                }
            )
        self._playout_event("output_audio_buffer.cleared", rid)

    # -- audio -----------------------------------------------------------------------------------------------
    def append_pcm(self, pcm: bytes) -> None:
        """Send the other side's audio (PCM16 24 kHz mono) to the server: input_audio_buffer.append."""
        if self.state != "open" or not pcm:
            return
        self.appends += 1
        self.appended_bytes += len(pcm)
        audio = base64.b64encode(pcm).decode("ascii")
        self._outbox.put_nowait(f'{{"type":"input_audio_buffer.append","audio":"{audio}"}}')

    def on_pcm(self, fn: PcmListener) -> Callable[[], None]:
        """fn(frame, received_at) for every 20 ms frame this agent plays (silence included); for PcmRelay."""
        self._pcm_listeners = (*self._pcm_listeners, fn)

        def remove() -> None:
            self._pcm_listeners = tuple(f for f in self._pcm_listeners if f is not fn)

        return remove

    async def _pace(self) -> None:
        """The leg's playout clock: one 20 ms frame every 20 ms, speech if queued, else silence."""
        next_t = time.monotonic()
        while self.state == "open":
            now = time.monotonic()
            if now - next_t > MAX_LAG_S:
                self.clock_resets += 1
                next_t = now
            elif next_t > now:
                await asyncio.sleep(next_t - now)
            next_t += FRAME_S
            self._tick()
            if time.monotonic() - next_t > FRAME_S:
                self.catch_ups += 1  # behind by more than a frame: the next pass plays without sleeping

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._frames:
            frame = self._frames.popleft()
            pcm, at = frame.pcm, frame.received_at
            if self._playing is None or self._playing[1] != frame.response_id:
                if self._playing is not None:
                    self._playout_event("output_audio_buffer.stopped", self._playing[1])
                self._playing = (frame.item_id, frame.response_id)
                self._playout_event("output_audio_buffer.started", frame.response_id)
            self._playing = (frame.item_id, frame.response_id)
            self.played_ms[frame.item_id] = self.played_ms.get(frame.item_id, 0) + FRAME_BYTES // BYTES_PER_MS
            self.frames_played += 1
            self._latency.append(now - at)
        else:
            pcm, at = SILENCE, now
            if self._playing is not None:
                if self._streaming:
                    # More of this line is coming late: send nothing rather than silence inside a word. The
                    # line goes on when its audio arrives (a WebRTC receiver's jitter buffer sees a late
                    # packet, the server's VAD an unbroken utterance); the delay ends with the line.
                    self.underruns += 1
                    return
                else:
                    rid = self._playing[1]
                    self._playing = None
                    self._playout_event("output_audio_buffer.stopped", rid)
        if pcm is SILENCE:
            self.silence_frames += 1
        if self.tap._subs:  # encode only when a WebRTC leg (or a listener) takes Opus
            self.tap.push(pcm, at)
        for fn in self._pcm_listeners:
            try:
                fn(pcm, at)
            except Exception:
                log.exception("%s leg: PCM listener failed", self.role)

    # -- end -------------------------------------------------------------------------------------------------
    async def hangup(self) -> None:
        """Close the socket (that ends a WebSocket session; there is no REST hang-up for it)."""
        if self.state in ("closing", "closed"):
            await self.closed.wait()
            return
        was = self.state
        self.state = "closing"
        await self._close_transport()
        self.state = "failed" if was == "failed" else "closed"
        self.closed.set()
        self.emit("closed")

    async def _close_transport(self) -> None:
        self.tap.close()
        self.sink.close()
        self._outbox.put_nowait(None)
        pace = [t for t in self._tasks[2:]]
        for t in pace:
            t.cancel()
        if len(self._tasks) > 1:  # let the writer send what is queued (a last truncate), briefly
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._tasks[1]), 1.0)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def playout_latency_ms(self) -> dict[str, float | int]:
        """Delta arrival -> frame played: the playout buffer's added latency."""
        return latency_summary(self._latency)

    async def stats(self) -> WebSocketLegStats:
        own: WebSocketStats = {
            "transport": "websocket",
            "audio": {
                "delta_bytes": self.delta_bytes,
                "frames_played": self.frames_played,
                "silence_frames": self.silence_frames,
                "underruns": self.underruns,
                "catch_ups": self.catch_ups,
                "clock_resets": self.clock_resets,
                "truncations": self.truncations,
                "appends": self.appends,
                "appended_bytes": self.appended_bytes,
                "playout_latency_ms": self.playout_latency_ms(),
                "encode_ms": round(self.tap.encode_s * 1000.0, 3),
                "decode_ms": round(self.sink.decode_s * 1000.0, 3),
            },
        }
        return {**self._base_stats(), **own}


def _refusal(base_url: str, e: InvalidStatus) -> str:
    """The API's own error message from a refused handshake (JSON body), with the status."""
    status = e.response.status_code
    message = ""
    with contextlib.suppress(Exception):
        body = json.loads(e.response.body or b"{}")
        err = body.get("error", body)
        message = str(err.get("message") or "")
        if err.get("code"):
            message += f" ({err['code']})"
    hint = "; check OPENAI_API_KEY" if status == 401 else ""
    return f"the WebSocket handshake was refused: HTTP {status} from {base_url}: {message or e}{hint}"

"""One emulated Realtime session: an aiortc answerer, its `oai-events` channel, the ear, the mouth and
the script.

Client events are handled in handlers.py, responses are played by responder.py; this module owns the
lifecycle (offer -> answer -> session.created -> ... -> close) and the hearing glue (server VAD ->
committed user turns).

The transport is two small interfaces (state.py), not a copy of the session: events go to every `EventSink` (the
`oai-events` data channel, a sideband WebSocket, or the WebSocket of a WebSocket session), speech goes to the
`Mouth` (mouth.py's `PacedMouth` on WebRTC, or its fallback the `SpeechTrack`, or ws.py's `DeltaMouth` sending
`response.output_audio.delta`). A WebRTC session has output_audio_buffer.* events and hears its track; a WebSocket
session has neither and hears `input_audio_buffer.append` (ws.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from voicebridge.media import passthrough
from voicebridge.media.passthrough import AiortcIncompatible, InboundTap, RtpAudio

from . import events as ev
from . import recognition, responder, response_plan, turn_detection
from .audio_formats import FormatType, format_type
from .handlers import handle
from .hearing import Ear, HearingError
from .listening import Listener
from .mouth import PacedMouth
from .persona import Action, PersonaBook, Script
from .rate_limits import TokenBucket
from .schema import ApiError
from .state import EventSink, Mouth, Transport
from .timing import RESPONSE_DELAY_MS
from .track import Playback, SpeechTrack
from .voice import Voice

log = logging.getLogger(__name__)


class Session:
    # `voicebridge bench --emulator`'s baseline: every incoming packet decoded by aiortc's receiver, as before.
    aiortc_decode = False
    # False (the bench's baseline): each session's speech pulled by aiortc's send loop from its track, as before.
    paced_send = True

    def __init__(
        self,
        call_id: str,
        config: dict[str, Any],
        personas: PersonaBook,
        voice: Voice,
        on_closed: Callable[[Session], None],
        transport: Transport = "webrtc",
        mouth: Callable[[Session], Mouth] | None = None,
        response_delay_ms: float = RESPONSE_DELAY_MS,
    ) -> None:
        self.id = call_id
        self.transport: Transport = transport
        self.config = config
        self.personas = personas
        self.voice = voice
        self.script = Script(personas.find(config.get("instructions")))
        # The think time (timing.py): the persona's own when its scenario sets one, else the emulator's.
        persona = self.script.persona
        own = persona.response_delay_ms if persona is not None else None
        self.response_delay_s = (response_delay_ms if own is None else own) / 1000.0
        self.late_starts = 0  # responses whose output started after their think time was over (a busy process)
        self._arrived: float | None = None  # perf_counter() at the arrival of the packet being heard (WebRTC)
        self._on_closed = on_closed
        # Only a WebRTC session has a peer connection and a track (its `mouth`); a WebSocket one has neither.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[])) if transport == "webrtc" else None
        # A WebRTC session speaks through the process's pacer (mouth.py), else (and if aiortc's internals changed,
        # see accept) through a track pulled by aiortc's send loop.
        self.paced: PacedMouth | None = None
        self.track: SpeechTrack | None = None
        self.mouth: Mouth
        if mouth is not None:
            self.mouth = mouth(self)
        elif transport != "webrtc":
            raise ValueError("a WebSocket session needs a mouth")
        elif Session.paced_send and passthrough.SHORT_PATH:
            self.mouth = self.paced = PacedMouth(voice.silence_packet)
        else:
            self.mouth = self.track = SpeechTrack(voice.silence_packet)
        self.channel: Any = None
        self.sinks: list[EventSink] = []  # the data channel or the WebSocket, plus any sideband sockets
        self.items: dict[str, dict[str, Any]] = {}
        self.call_names: dict[str, str] = {}  # call_id -> tool name, for function_call_output
        self.audio_items: dict[str, str] = {}  # response id -> the assistant item its audio belongs to
        self.item_audio_ms: dict[
            str, int
        ] = {}  # assistant item id -> its audio's length (truncate checks it)
        self.heard: list[str] = []  # transcripts of speech heard since the last response
        self.typed: list[str] = []  # user text items added since the last response
        self.outputs: list[str] = []  # tool names of function_call_outputs since the last response
        self.conversation_id = ev.new_id("conv")  # the default conversation (response.conversation_id)
        self.response: responder.Response | None = None  # the default conversation's active response
        self.responses: dict[str, responder.Response] = {}  # every active response, out-of-band ones included
        self.last_response_id: str | None = None
        self.heard_ms = 0
        self.events_sent = 0
        self.manual_turns: list[npt.NDArray[np.int16]] = []  # heard with turn_detection off, until a commit
        self.appended_bytes = 0
        self._speech_item: str | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self.closed = asyncio.Event()
        self.close_reason: str | None = None  # why it ended ("hangup endpoint", "data channel closed", ...)
        self.peer_connected = asyncio.Event()  # WebRTC: the peer connection has been "connected" (once is enough)
        self.created_at = time.monotonic()
        self.channel_open_at: float | None = None
        self.ear = Ear(
            turn_detection.vad_settings(self.turn_detection), self._on_speech_started, self._on_speech_stopped
        )
        if self.script.interrupts:
            self.ear.on_speech_ms = self._on_speech_ms
        self._cut_into: str | None = None  # the speech item the persona barged in on (its reply is the cut-in)
        self.idle = turn_detection.IdleTimer(self._on_idle)
        self.tap: InboundTap | None = None  # WebRTC: the incoming packets, off the receiver
        self.listener: Listener | None = None  # WebRTC: what of them is decoded for the ear
        self.rate_limits = TokenBucket()
        self.warm_up()

    # ---- set-up -----------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Synthesise the persona's fixed lines and load its recognizer now (in every recognition worker), in the
        background, so a turn's reply is not delayed by espeak (~40 ms per second of speech) or pocketsphinx's
        grammar load (~0.2 s). Lines with `{tool.field}` values wait for those values."""
        persona = self.script.persona
        if persona is None:
            return
        for rule in persona.script:
            if rule.say and "{" not in rule.say:
                self.spawn(self._warm_line(rule.say, persona.espeak_voice, persona.espeak_speed))
        if self.script.phrases:
            self.spawn(recognition.shared().warm(self.script.phrases))

    async def _warm_line(self, text: str, espeak_voice: str, speed: int) -> None:
        try:
            await self.voice.speak(text, espeak_voice, speed)
        except Exception as e:  # a line that cannot be spoken fails again, visibly, when it is said
            log.warning("session %s: cannot pre-synthesise %r: %s", self.id, text, e)

    @property
    def input_format(self) -> FormatType:
        """What `input_audio_buffer.append` carries on a WebSocket session (a WebRTC track is always Opus)."""
        return format_type(((self.config.get("audio") or {}).get("input") or {}).get("format"))

    def output_format(self, response_id: str | None = None) -> FormatType:
        """What `response.output_audio.delta` carries for this response on a WebSocket session (its own
        `audio.output.format`, else the session's)."""
        r = self.responses.get(response_id or "")
        if r is not None:
            return format_type(r.settings.audio_format)
        return format_type(((self.config.get("audio") or {}).get("output") or {}).get("format"))

    @property
    def output_buffer_events(self) -> bool:
        """output_audio_buffer.* exist only on WebRTC: over a WebSocket the client plays the audio itself."""
        return self.transport == "webrtc"

    async def accept(self, offer_sdp: str) -> str:
        """Answer the client's offer; our speech goes out on the offer's audio m-line."""
        assert self.pc is not None and (self.paced or self.track) is not None, "accept() is for WebRTC sessions"
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as e:  # aiortc's parser raises whatever a broken line trips (ValueError, AttributeError...)
            why = str(e) or "a line is malformed"  # some of aiortc's parse errors carry no message at all
            raise ApiError(
                400, f"Invalid SDP offer: it cannot be parsed ({type(e).__name__}: {why})",
                code="invalid_offer", param="sdp",
            ) from e
        self._attach_mouth()
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as e:
            # aiortc accepts some broken offers (e.g. a section without a=mid) and only trips answering them:
            # still the client's offer, so a 400 that says so, not a 500.
            raise ApiError(
                400, f"Invalid SDP offer: it cannot be answered ({type(e).__name__}: {e})",
                code="invalid_offer", param="sdp",
            ) from e
        return str(self.pc.localDescription.sdp)

    def _attach_mouth(self) -> None:
        """Our speech goes out on the offer's (first) audio transceiver: sent by the pacer, or by aiortc's send loop
        when its internals are not what the pacer's sender hooks (or the offer has no audio transceiver)."""
        assert self.pc is not None
        if self.paced is not None:
            transceiver = next(
                (t for t in self.pc.getTransceivers() if t.kind == "audio" and t.sender.track is None), None
            )
            try:
                if transceiver is None:
                    raise AiortcIncompatible("the offer has no audio transceiver to send on")
                self.paced.bind(transceiver)
                return
            except AiortcIncompatible as e:
                log.warning("session %s: speaking through aiortc's send loop: %s", self.id, e)
            self.paced = None
            self.mouth = self.track = SpeechTrack(self.voice.silence_packet)  # nothing was played yet
        assert self.track is not None
        self.pc.addTrack(self.track)

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "oai-events" or self.channel is not None:
            return
        self.channel = channel
        self.channel_open_at = time.monotonic()
        self.sinks.insert(0, self._to_channel)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.spawn(self.close("data channel closed")))
        self.send(ev.event("session.created", session=self.config))

    def _on_track(self, track: Any) -> None:
        if track.kind != "audio":
            return
        # The packets are taken off the receiver before aiortc's jitter buffer and decoder thread, so that only
        # those that may hold speech are decoded (listening.py). If aiortc's internals changed, decode them all.
        assert self.pc is not None
        if Session.aiortc_decode:
            self.spawn(self._listen(track))
            return
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        try:
            if receiver is None:
                raise AiortcIncompatible("no receiver carries the incoming track")
            self.tap = InboundTap(receiver)
        except AiortcIncompatible as e:
            log.warning("session %s: decoding every incoming packet: %s", self.id, e)
            self.spawn(self._listen(track))
            return
        self.listener = Listener(self.ear)
        self.tap.subscribe(self._hear)

    def _hear(self, audio: RtpAudio) -> None:
        assert self.listener is not None
        self._arrived = audio.received_at  # a turn that ends while this packet is heard ended when it arrived
        try:
            self.listener.push(audio.payload, audio.sequence)
        except HearingError as e:  # a packet we cannot hear is skipped, not fatal
            if self.listener.errors <= 10:
                log.warning("session %s: %s", self.id, e)

    def close_unless_connected(self, timeout_s: float) -> None:
        """Close the session if its peer has not connected within `timeout_s`: a client that vanished after its
        offer, or whose candidates lead nowhere, must not hold a peer connection and its sockets for ever."""

        async def watch() -> None:
            try:
                await asyncio.wait_for(self.peer_connected.wait(), timeout_s)
            except TimeoutError:
                await self.close(f"not connected within {timeout_s:g} s")

        self.spawn(watch())

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        if self.pc.connectionState == "connected":
            self.peer_connected.set()
        if self.pc.connectionState in ("failed", "closed"):
            self.spawn(self.close(f"peer connection {self.pc.connectionState}"))

    # ---- plumbing ---------------------------------------------------------------------------------------

    def spawn(self, coro: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s: task failed", self.id, exc_info=task.exception())

    def send(self, event: dict[str, Any]) -> None:
        if not self.sinks:
            return
        text = json.dumps(event)
        for sink in list(self.sinks):
            sink(text)
        self.events_sent += 1

    def _to_channel(self, text: str) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)

    def send_error(self, err: ApiError, event_id: str | None) -> None:
        self.send(ev.error(err.message, type_=err.type, code=err.code, param=err.param, event_id=event_id))

    def _on_message(self, message: str | bytes) -> None:
        handle(self, message)

    # ---- conversation -----------------------------------------------------------------------------------

    def previous_item_id(self, item_id: str) -> str | None:
        prev = None
        for key in self.items:
            if key == item_id:
                return prev
            prev = key
        return prev

    def add_item(self, item: dict[str, Any], emit: bool = True, after: str | None = None) -> None:
        if after is None:
            self.items[item["id"]] = item
        else:
            rebuilt: dict[str, dict[str, Any]] = {} if after != "root" else {item["id"]: item}
            for key, value in self.items.items():
                rebuilt[key] = value
                if key == after:
                    rebuilt[item["id"]] = item
            self.items = rebuilt
        if emit:
            prev = self.previous_item_id(item["id"])
            self.send(ev.event("conversation.item.added", previous_item_id=prev, item=item))
            self.send(ev.event("conversation.item.done", previous_item_id=prev, item=item))

    def conversation_texts(self) -> list[str]:
        texts: list[str] = []
        for item in self.items.values():
            for part in item.get("content") or []:
                texts.append(part.get("text") or part.get("transcript") or "")
        return texts

    # ---- responses --------------------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        """What the persona does now (consuming what is new): answer the newest tool output, else what it
        heard, else speak first."""
        outputs, heard, typed = self.outputs, self.heard, self.typed
        self.outputs, self.heard, self.typed = [], [], []
        return self.script.respond(outputs, heard, typed)

    def start_response(
        self,
        params: dict[str, Any] | None = None,
        cut_in: Action | None = None,
        turn_ended_at: float | None = None,
    ) -> responder.Response:
        """Start a response with response.create's `response` parameters (checked by the caller: a refused
        one must change nothing); auto responses (server VAD) pass none. `cut_in`: a barge-in rule's action,
        played instead of answering what is new (that stays for the next response). The output starts the think
        time after `turn_ended_at` (perf_counter; default now), a cut-in's at once (timing.py)."""
        params = params or {}
        settings = response_plan.settings(self, params)
        items = response_plan.resolve_input(self, params)
        r = responder.Response(
            id=ev.new_id("resp"),
            settings=settings,
            metadata=params.get("metadata"),
            context_texts=None if items is None else response_plan.input_texts(items),
        )
        if cut_in is None:
            ended = time.perf_counter() if turn_ended_at is None else turn_ended_at
            r.start_at = ended + self.response_delay_s
        action = cut_in if cut_in is not None else response_plan.action(self, settings, items)
        self.idle.disarm()  # the idle timeout counts from the end of the newest response's audio
        self.responses[r.id] = r
        if settings.in_conversation:
            self.response = r
        self.last_response_id = r.id
        r.task = asyncio.ensure_future(responder.run(self, r, action))
        self._tasks.add(r.task)
        r.task.add_done_callback(lambda t: self._response_done(r, t))
        return r

    def _response_done(self, r: responder.Response, task: asyncio.Future[Any]) -> None:
        self._task_done(task)
        self.responses.pop(r.id, None)
        if self.response is r:
            self.response = None
        self._maybe_idle()

    def cancel_response(self, reason: str, response: responder.Response | None = None) -> bool:
        """Cancel a response (by default the default conversation's active one)."""
        r = response or self.response
        if r is None or r.task is None or r.task.done():
            return False
        r.cancel_reason = reason
        self.mouth.drop(r.id)
        if not r.started:  # response.create and .cancel read together: it still answers created, then cancelled
            r.cancel_pending = True
        else:
            r.task.cancel()
        return True

    def watch_playback(self, playback: Playback) -> None:
        async def watch() -> None:
            if await playback.finished and self.output_buffer_events:
                self.send(ev.event("output_audio_buffer.stopped", response_id=playback.tag))
            self._maybe_idle()

        self.spawn(watch())

    def _maybe_idle(self) -> None:
        """When no response runs and nothing is playing, the idle timeout starts counting (if it is set)."""
        if self.responses or self.mouth.busy or self.ear.speaking or self.closed.is_set():
            return
        self.idle.anchor(self.ear.audio_ms, turn_detection.idle_timeout_ms(self.turn_detection))

    def _on_idle(self, audio_start_ms: int) -> None:
        """idle_timeout_ms passed without speech since the last response's audio ended: the silent audio is
        committed as a user turn and answered."""
        if self.responses or self.ear.speaking or self.closed.is_set():
            return
        item_id = ev.new_id("item")
        audio_end_ms = max(audio_start_ms, self.ear.audio_ms)
        self.send(
            ev.event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=audio_start_ms,
                audio_end_ms=audio_end_ms,
                item_id=item_id,
            )
        )
        silence = np.zeros(16 * (audio_end_ms - audio_start_ms), dtype=np.int16)
        self.spawn(self.commit_turn(item_id, silence, auto=True, idle=True))

    def clear_output(self, truncate: bool, reason: str | None = None) -> list[Playback]:
        """Stop speaking now; with `truncate`, cut the playing item to what was heard (barge-in). A response
        whose audio is dropped before it started ends cancelled, with `reason` when given."""
        dropped = self.mouth.clear()
        for playback in dropped:
            r = self.responses.get(playback.tag)
            if r is not None and reason is not None:
                r.cancel_reason = reason
        if dropped and self.output_buffer_events:
            head = dropped[0]
            item_id = self.audio_items.get(head.tag)
            if truncate and item_id is not None and item_id in self.items:
                self.send(
                    ev.event(
                        "conversation.item.truncated",
                        item_id=item_id,
                        content_index=0,
                        audio_end_ms=head.sent_ms,
                    )
                )
            self.send(ev.event("output_audio_buffer.cleared", response_id=head.tag))
        return dropped

    # ---- hearing ----------------------------------------------------------------------------------------

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = ((self.config.get("audio") or {}).get("input") or {}).get(
            "turn_detection"
        )
        return td

    def vad_changed(self) -> None:
        """session.update changed the config: the Ear takes the new settings (its clock goes on), the idle
        timer the new timeout. Bad settings raise ApiError before anything changes."""
        settings = turn_detection.vad_settings(self.turn_detection)
        self.ear.configure(settings)
        self.idle.rearm(turn_detection.idle_timeout_ms(self.turn_detection))

    async def _listen(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            try:
                self.ear.feed(frame)
            except HearingError as e:  # a frame we cannot hear is skipped, not fatal
                log.warning("session %s: %s", self.id, e)

    def _on_speech_started(self, audio_start_ms: int) -> None:
        td = self.turn_detection
        if td is None:
            return
        self.idle.disarm()
        self._speech_item = ev.new_id("item")
        self.send(
            ev.event(
                "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=self._speech_item
            )
        )
        if td.get("interrupt_response", True):
            self.cancel_response("turn_detected")
            # WebRTC: the server clears its output buffer (all audio queued, out-of-band lines included) and
            # truncates the playing item. Over a WebSocket it cannot know what was played: the client truncates
            # (and stops); out-of-band responses go on streaming, as reported for the real API.
            if self.output_buffer_events:
                self.clear_output(truncate=True, reason="turn_detected")

    def _on_speech_ms(self, heard_ms: int) -> None:
        """The other party has talked `heard_ms` into its current turn: a persona with a barge-in rule may cut in
        now (once per turn, and not while it is answering or speaking itself)."""
        item = self._speech_item
        if item is None or self._cut_into == item or self.response is not None or self.mouth.busy:
            return
        if self.closed.is_set() or self.turn_detection is None:
            return
        action = self.script.cut_in(heard_ms)
        if action is None:
            return
        self._cut_into = item
        log.info("session %s: cuts in after %d ms of the other's speech", self.id, heard_ms)
        self.start_response(cut_in=action)

    def _on_speech_stopped(self, audio_end_ms: int, pcm: npt.NDArray[np.int16]) -> None:
        self.heard_ms += len(pcm) // 16
        if self.turn_detection is None:
            self.manual_turns.append(pcm)
            return
        item_id = self._speech_item or ev.new_id("item")
        self._speech_item = None
        self.send(ev.event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id))
        answered = self._cut_into == item_id
        # The turn ended when the packet that ended it arrived (on a WebSocket: now, as the append is heard).
        ended_at = self._arrived if self._arrived is not None else time.perf_counter()
        self.spawn(self.commit_turn(item_id, pcm, auto=True, answered=answered, ended_at=ended_at))

    async def commit_turn(
        self,
        item_id: str,
        pcm: npt.NDArray[np.int16],
        auto: bool,
        idle: bool = False,
        answered: bool = False,
        ended_at: float | None = None,
    ) -> None:
        """Commit heard audio as a user item (transcribed when transcription is on) and, for a VAD turn with
        create_response (or an idle timeout: it exists to prompt a response), answer it. `answered`: the
        persona already barged in on this turn, so that cut-in was its answer (committed, not answered again).
        `ended_at`: when the turn ended (perf_counter), which the answer's think time counts from."""
        prev = next(reversed(self.items), None) if self.items else None
        self.send(ev.event("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id))
        item = ev.user_audio_item(item_id, None)
        self.add_item(item)
        transcript = await self._transcribe(pcm) or ""
        item["content"][0]["transcript"] = transcript
        transcription = ((self.config.get("audio") or {}).get("input") or {}).get("transcription")
        if transcription is not None:
            # Unrecognised speech is an empty transcript, never a guess (the script then asks to repeat).
            # whisper-1 sends its whole transcript as one delta; the gpt-4o transcribers stream it word by word.
            whole = transcription.get("model") == "whisper-1"
            deltas = ([transcript] if transcript else []) if whole else ev.transcript_deltas(transcript)
            for delta in deltas:
                self.send(
                    ev.event(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=item_id,
                        content_index=0,
                        delta=delta,
                    )
                )
            self.send(
                ev.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=transcript,
                    usage={"type": "duration", "seconds": round(len(pcm) / 16000, 3)},
                )
            )
        self.script.note_heard(transcript)
        if answered:
            return
        self.heard.append(transcript)
        td = self.turn_detection
        wanted = idle or (auto and td is not None and td.get("create_response", True))
        if wanted and self.response is None:
            self.start_response(turn_ended_at=ended_at)

    async def _transcribe(self, pcm: npt.NDArray[np.int16]) -> str | None:
        phrases = self.script.phrases
        if not phrases or not pcm.any():  # digital silence (an idle turn) has nothing to hear
            return None
        try:  # in a worker process: pocketsphinx holds the GIL for the whole turn (recognition.py)
            return await recognition.shared().transcribe(phrases, pcm)
        except HearingError as e:
            log.warning("session %s: cannot transcribe: %s", self.id, e)
            return None

    # ---- end ----------------------------------------------------------------------------------------------

    async def close(self, reason: str = "closed") -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.close_reason = reason
        self.idle.disarm()
        log.info("session %s closed: %s", self.id, reason)
        self._on_closed(self)
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me:
                task.cancel()
        self.mouth.stop()
        if self.pc is not None:
            try:
                await self.pc.close()
            except Exception:  # a half-negotiated pc (a refused offer) can trip aiortc's close; it is gone anyway
                log.warning("session %s: closing the peer connection failed", self.id, exc_info=True)

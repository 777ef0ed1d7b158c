"""One model response: the GA event sequence around a scripted line and/or a function call.

Order: response.created -> rate_limits.updated -> [message item: output_item.added, conversation.item.added,
content_part.added, output_audio_buffer.started, transcript deltas, transcript.done, output_audio.done,
content_part.done, output_item.done, conversation.item.done] -> [function_call item: output_item.added,
conversation.item.added, arguments delta/done, output_item.done, conversation.item.done] -> response.done.
`output_audio_buffer.stopped` follows later, when the track has sent the line's last frame.

A text-only response (`output_modalities: ["text"]`) has `output_text` content instead: content_part.added
(`text`), output_text.delta*, output_text.done, content_part.done, and no audio anywhere. An out-of-band
response (`conversation: "none"`) has no conversation.item.* events and leaves no item behind
(response_plan.py).

`max_output_tokens` counts what the usage reports as output: one text token per word (of a text answer, of an
audio answer's transcript, of a function call's arguments) and one audio token per 100 ms of speech, about the
real model's rate. A line over the budget is cut in proportion (the first words of the transcript, the first
packets of the audio; the item is `incomplete`), nothing after it is produced, and the response ends
`incomplete` with `status_details.reason` `max_output_tokens`. So `usage.output_tokens` never exceeds the limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from . import rate_limits
from .persona import Action
from .response_plan import Settings
from .state import SessionState
from .voice import FRAME_MS, VoiceError

log = logging.getLogger(__name__)
AUDIO_TOKEN_MS = 100  # one audio token per 100 ms of speech, in usage and against max_output_tokens


@dataclass
class Response:
    id: str
    settings: Settings
    metadata: dict[str, str] | None = None
    context_texts: list[str] | None = None  # a custom `input`'s texts (None: the default conversation)
    output: list[dict[str, Any]] = field(default_factory=list)
    cancel_reason: str = "client_cancelled"
    text_tokens: int = 0
    audio_tokens: int = 0
    reserved_tokens: int = 0  # counted against the session's rate limit at the start
    task: asyncio.Task[None] | None = None
    start_at: float | None = None  # perf_counter() when its output starts: the think time's end (timing.py)
    late_ms: float = 0.0  # how late the output started, when the work before it took longer than the think time
    started: bool = False  # run() has begun (a task cancelled before its first step never runs its body)
    cancel_pending: bool = False  # cancelled before it started: run() says created, then done cancelled

    @property
    def tokens_left(self) -> int | None:
        """Output tokens this response may still produce (None: no limit)."""
        limit = self.settings.max_output_tokens
        return None if limit is None else limit - self.text_tokens - self.audio_tokens


class OutOfTokens(Exception):
    """The response reached max_output_tokens: it ends `incomplete`."""


def _usage(s: SessionState, r: Response) -> dict[str, Any]:
    texts = s.conversation_texts() if r.context_texts is None else r.context_texts
    words = sum(len(str(t).split()) for t in texts)
    return ev.usage(
        text_in=words + len((s.config.get("instructions") or "").split()),
        audio_in=s.heard_ms // AUDIO_TOKEN_MS,
        text_out=r.text_tokens,
        audio_out=r.audio_tokens,
    )


def _response(s: SessionState, r: Response, status: str, **fields: Any) -> dict[str, Any]:
    st = r.settings
    return ev.response_object(
        r.id,
        status=status,
        voice=st.voice,
        audio_format=st.audio_format,
        metadata=r.metadata,
        conversation_id=s.conversation_id if st.in_conversation else None,
        output_modalities=st.modalities,
        max_output_tokens="inf" if st.max_output_tokens is None else st.max_output_tokens,
        **fields,
    )


def _done(s: SessionState, r: Response, status: str, details: dict[str, Any] | None) -> None:
    usage = _usage(s, r)
    s.rate_limits.settle(r.reserved_tokens, usage["total_tokens"])
    response = _response(s, r, status, output=r.output, status_details=details, usage=usage)
    s.send(ev.event("response.done", response=response))


async def run(s: SessionState, r: Response, action: Action | None) -> None:
    """Play one response to the end (or until cancelled: then `response.done` says `cancelled`)."""
    r.started = True
    s.send(ev.event("response.created", response=_response(s, r, "in_progress", output=[])))
    # The start reserves the input and the whole output budget; response.done settles it to the usage.
    r.reserved_tokens = _usage(s, r)["input_tokens"] + rate_limits.output_reserve(r.settings.max_output_tokens)
    s.send(ev.event("rate_limits.updated", rate_limits=[s.rate_limits.reserve(r.reserved_tokens)]))
    try:
        if r.cancel_pending:
            raise asyncio.CancelledError
        await _think(s, r)
        if action is not None and action.say:
            await _say(s, r, action.say)
        if action is not None and action.call is not None:
            _function_call(s, r, action.call.name, json.dumps(action.call.arguments))
        if action is not None and action.hangup:
            _function_call(s, r, "hangup", "{}")
    except OutOfTokens:
        _done(s, r, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"})
        return
    except asyncio.CancelledError:
        _done(s, r, "cancelled", {"type": "cancelled", "reason": r.cancel_reason})
        return
    except VoiceError as e:
        log.warning("session %s: could not speak a line: %s", s.id, e)
        _done(s, r, "failed", {"type": "failed", "error": {"type": "server_error", "code": "voice_error"}})
        return
    _done(s, r, "completed", None)


async def _think(s: SessionState, r: Response) -> None:
    """Until the think time is over (a deadline from the turn's end, not a pause: timing.py)."""
    if r.start_at is None:
        return
    wait = r.start_at - time.perf_counter()
    if wait > 0:
        await asyncio.sleep(wait)
    else:
        r.late_ms = -wait * 1000.0
        s.late_starts += 1


def _added(s: SessionState, r: Response, index: int, item: dict[str, Any]) -> None:
    s.send(ev.event("response.output_item.added", response_id=r.id, output_index=index, item=item))
    if r.settings.in_conversation:
        s.add_item(item, emit=False)
        s.send(ev.event("conversation.item.added", previous_item_id=s.previous_item_id(item["id"]), item=item))


def _finished(s: SessionState, r: Response, index: int, done: dict[str, Any]) -> None:
    r.output.append(done)
    s.send(ev.event("response.output_item.done", response_id=r.id, output_index=index, item=done))
    if r.settings.in_conversation:
        s.items[done["id"]] = done
        s.send(ev.event("conversation.item.done", previous_item_id=s.previous_item_id(done["id"]), item=done))


def _first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


async def _say(s: SessionState, r: Response, text: str) -> None:
    if r.settings.audio:
        await _say_audio(s, r, text)
    else:
        _say_text(s, r, text)


def _say_text(s: SessionState, r: Response, text: str) -> None:
    words = len(text.split())
    left = r.tokens_left
    cut = left is not None and words > left
    if cut:
        assert left is not None
        if left <= 0:
            raise OutOfTokens
        text, words = _first_words(text, left), left
    item_id = ev.new_id("item")
    index = len(r.output)
    base = {"response_id": r.id, "item_id": item_id, "output_index": index, "content_index": 0}
    _added(s, r, index, ev.assistant_text_item(item_id, None, "in_progress"))
    s.send(ev.event("response.content_part.added", **base, part={"type": "text", "text": ""}))
    for delta in ev.transcript_deltas(text):
        s.send(ev.event("response.output_text.delta", **base, delta=delta))
    s.send(ev.event("response.output_text.done", **base, text=text))
    s.send(ev.event("response.content_part.done", **base, part={"type": "text", "text": text}))
    r.text_tokens += words
    _finished(s, r, index, ev.assistant_text_item(item_id, text, "incomplete" if cut else "completed"))
    if cut:
        raise OutOfTokens


async def _say_audio(s: SessionState, r: Response, text: str) -> None:
    persona = s.script.persona
    utterance = await s.voice.speak(
        text,
        persona.espeak_voice if persona else "en-us",
        persona.espeak_speed if persona else 165,
    )
    packets, words = utterance.packets, len(text.split())
    per_token = AUDIO_TOKEN_MS // FRAME_MS  # packets per audio token
    cost = words + len(packets) // per_token
    left = r.tokens_left
    cut = left is not None and cost > left
    if cut:
        # Keep the same share of words and of audio; floor(a*f) + floor(b*f)//5 <= left for f = left/cost.
        assert left is not None
        share = max(0, left) / cost
        words, packets = int(words * share), packets[: int(len(packets) * share)]
        if not packets and not words:
            raise OutOfTokens
        text = _first_words(text, words)
    item_id = ev.new_id("item")
    index = len(r.output)
    base = {"response_id": r.id, "item_id": item_id, "output_index": index, "content_index": 0}
    _added(s, r, index, ev.assistant_audio_item(item_id, None, "in_progress"))
    s.send(ev.event("response.content_part.added", **base, part={"type": "audio", "transcript": ""}))
    s.audio_items[r.id] = item_id
    if r.settings.in_conversation:
        s.item_audio_ms[item_id] = len(packets) * FRAME_MS
    r.audio_tokens += len(packets) // per_token
    r.text_tokens += words
    playback = s.mouth.play(packets, r.id) if packets else None  # a line cut to no audio plays nothing
    if playback is not None:
        s.watch_playback(playback)
        if not await asyncio.shield(playback.started):
            raise asyncio.CancelledError  # cleared before it began: the response was interrupted
        if s.output_buffer_events:
            s.send(ev.event("output_audio_buffer.started", response_id=r.id))
    for delta in ev.transcript_deltas(text):
        s.send(ev.event("response.output_audio_transcript.delta", **base, delta=delta))
    s.send(ev.event("response.output_audio_transcript.done", **base, transcript=text))
    # Over a WebSocket the audio itself is in the events (paced deltas): it is done when the last one is sent.
    if playback is not None and not s.output_buffer_events and not await asyncio.shield(playback.finished):
        raise asyncio.CancelledError  # cleared while streaming: interrupted
    s.send(ev.event("response.output_audio.done", **base))
    s.send(ev.event("response.content_part.done", **base, part={"type": "audio", "transcript": text}))
    _finished(s, r, index, ev.assistant_audio_item(item_id, text, "incomplete" if cut else "completed"))
    if cut:
        raise OutOfTokens


def _function_call(s: SessionState, r: Response, name: str, arguments: str) -> None:
    left = r.tokens_left
    if left is not None and len(arguments.split()) > left:
        raise OutOfTokens  # a call is all or nothing: half its arguments would not be JSON
    item_id, call_id = ev.new_id("item"), ev.new_id("call", 16)
    index = len(r.output)
    _added(s, r, index, ev.function_call_item(item_id, call_id, name, "", "in_progress"))
    base = {"response_id": r.id, "item_id": item_id, "output_index": index, "call_id": call_id}
    s.send(ev.event("response.function_call_arguments.delta", **base, delta=arguments))
    s.send(ev.event("response.function_call_arguments.done", **base, name=name, arguments=arguments))
    s.call_names[call_id] = name
    r.text_tokens += len(arguments.split())
    _finished(s, r, index, ev.function_call_item(item_id, call_id, name, arguments, "completed"))

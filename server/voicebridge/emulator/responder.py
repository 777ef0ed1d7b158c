"""One model response: the GA event sequence around a scripted line and/or a function call.

Order (shared/realtime-ga.md): response.created -> [message item: output_item.added, conversation.item.added,
content_part.added, output_audio_buffer.started, transcript deltas, transcript.done, output_audio.done,
content_part.done, output_item.done, conversation.item.done] -> [function_call item: output_item.added,
conversation.item.added, arguments delta/done, output_item.done, conversation.item.done] -> response.done.
`output_audio_buffer.stopped` follows later, when the track has sent the line's last frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import events as ev
from .persona import Action
from .voice import VoiceError

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)


@dataclass
class Response:
    id: str
    metadata: dict[str, str] | None = None
    output: list[dict[str, Any]] = field(default_factory=list)
    cancel_reason: str = "client_cancelled"
    text_out_words: int = 0
    audio_out_ms: int = 0
    task: asyncio.Task[None] | None = None


def _usage(s: Session, r: Response) -> dict[str, Any]:
    words = sum(len(str(t).split()) for t in s.conversation_texts())
    return ev.usage(
        text_in=words + len((s.config.get("instructions") or "").split()),
        audio_in=s.heard_ms // 100,  # about ten audio tokens a second, like the real model
        text_out=r.text_out_words,
        audio_out=r.audio_out_ms // 100,
    )


def _voice(s: Session) -> str:
    out = (s.config.get("audio") or {}).get("output") or {}
    return str(out.get("voice") or "marin")


def _format(s: Session) -> dict[str, Any] | None:
    fmt = ((s.config.get("audio") or {}).get("output") or {}).get("format")
    return dict(fmt) if isinstance(fmt, dict) else None


def _done(s: Session, r: Response, status: str, details: dict[str, Any] | None) -> None:
    s.send(
        ev.event(
            "response.done",
            response=ev.response_object(
                r.id,
                status=status,
                output=r.output,
                voice=_voice(s),
                audio_format=_format(s),
                status_details=details,
                usage=_usage(s, r),
                metadata=r.metadata,
            ),
        )
    )


async def run(s: Session, r: Response, action: Action | None) -> None:
    """Play one response to the end (or until cancelled: then `response.done` says `cancelled`)."""
    s.send(
        ev.event(
            "response.created",
            response=ev.response_object(
                r.id, status="in_progress", output=[], voice=_voice(s), audio_format=_format(s), metadata=r.metadata
            ),
        )
    )
    try:
        if action is not None and action.say:
            await _say(s, r, action.say)
        if action is not None and action.call is not None:
            _function_call(s, r, action.call.name, json.dumps(action.call.arguments))
        if action is not None and action.hangup:
            _function_call(s, r, "hangup", "{}")
    except asyncio.CancelledError:
        _done(s, r, "cancelled", {"type": "cancelled", "reason": r.cancel_reason})
        return
    except VoiceError as e:
        log.warning("session %s: could not speak a line: %s", s.id, e)
        _done(s, r, "failed", {"type": "failed", "error": {"type": "server_error", "code": "voice_error"}})
        return
    _done(s, r, "completed", None)


async def _say(s: Session, r: Response, text: str) -> None:
    persona = s.script.persona
    utterance = await s.voice.speak(
        text,
        persona.espeak_voice if persona else "en-us",
        persona.espeak_speed if persona else 165,
    )
    item_id = ev.new_id("item")
    index = len(r.output)
    base = {"response_id": r.id, "item_id": item_id, "output_index": index, "content_index": 0}
    item = ev.assistant_audio_item(item_id, None, "in_progress")
    s.send(ev.event("response.output_item.added", response_id=r.id, output_index=index, item=item))
    s.add_item(item, emit=False)
    s.send(ev.event("conversation.item.added", previous_item_id=s.previous_item_id(item_id), item=item))
    s.send(ev.event("response.content_part.added", **base, part={"type": "audio", "transcript": ""}))
    playback = s.mouth.play(utterance.packets, r.id)
    s.audio_items[r.id] = item_id
    s.item_audio_ms[item_id] = utterance.duration_ms
    s.watch_playback(playback)
    r.audio_out_ms += utterance.duration_ms
    r.text_out_words += len(text.split())
    if not await asyncio.shield(playback.started):
        raise asyncio.CancelledError  # cleared before it began: the response was interrupted
    if s.output_buffer_events:
        s.send(ev.event("output_audio_buffer.started", response_id=r.id))
    for delta in ev.transcript_deltas(text):
        s.send(ev.event("response.output_audio_transcript.delta", **base, delta=delta))
    s.send(ev.event("response.output_audio_transcript.done", **base, transcript=text))
    # Over a WebSocket the audio itself is in the events (paced deltas): it is done when the last one is sent.
    if not s.output_buffer_events and not await asyncio.shield(playback.finished):
        raise asyncio.CancelledError  # cleared while streaming: interrupted
    s.send(ev.event("response.output_audio.done", **base))
    s.send(ev.event("response.content_part.done", **base, part={"type": "audio", "transcript": text}))
    done = ev.assistant_audio_item(item_id, text, "completed")
    s.items[item_id] = done
    r.output.append(done)
    s.send(ev.event("response.output_item.done", response_id=r.id, output_index=index, item=done))
    s.send(ev.event("conversation.item.done", previous_item_id=s.previous_item_id(item_id), item=done))


def _function_call(s: Session, r: Response, name: str, arguments: str) -> None:
    item_id, call_id = ev.new_id("item"), ev.new_id("call", 16)
    index = len(r.output)
    item = ev.function_call_item(item_id, call_id, name, "", "in_progress")
    s.send(ev.event("response.output_item.added", response_id=r.id, output_index=index, item=item))
    s.add_item(item, emit=False)
    s.send(ev.event("conversation.item.added", previous_item_id=s.previous_item_id(item_id), item=item))
    base = {"response_id": r.id, "item_id": item_id, "output_index": index, "call_id": call_id}
    s.send(ev.event("response.function_call_arguments.delta", **base, delta=arguments))
    s.send(ev.event("response.function_call_arguments.done", **base, name=name, arguments=arguments))
    done = ev.function_call_item(item_id, call_id, name, arguments, "completed")
    s.items[item_id] = done
    s.call_names[call_id] = name
    r.output.append(done)
    r.text_out_words += len(arguments.split())
    s.send(ev.event("response.output_item.done", response_id=r.id, output_index=index, item=done))
    s.send(ev.event("conversation.item.done", previous_item_id=s.previous_item_id(item_id), item=done))

"""What a session is to the modules that act on it: its conversation state and the few things it does.

session.py's `Session` holds the state and owns the lifecycle; response_plan.py, responder.py and handlers.py
work on any object of this shape (mypy checks that a Session is one wherever it passes itself), so they import
this module and never session.py, and imports run one way: session -> handlers -> responder -> response_plan ->
state. A test can drive them with a smaller stand-in of the same shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .audio_formats import FormatType
from .hearing import Ear
from .persona import Action, PersonaBook, Script
from .rate_limits import TokenBucket
from .schema import ApiError
from .track import Playback
from .voice import Voice

Transport = Literal["webrtc", "websocket"]
EventSink = Callable[[str], None]  # one serialised server event out; must not block


class Mouth(Protocol):
    """Where a session's speech goes: a queue of lines (cached Opus packets) played at real-time pace."""

    @property
    def busy(self) -> bool: ...

    def play(self, packets: Sequence[bytes], tag: str) -> Playback: ...

    def clear(self) -> list[Playback]: ...

    def drop(self, tag: str) -> list[Playback]: ...

    def stop(self) -> None: ...


class SessionState(Protocol):
    id: str
    transport: Transport
    config: dict[str, Any]  # the session object, as session.created / session.updated report it
    personas: PersonaBook
    voice: Voice
    script: Script
    mouth: Mouth
    ear: Ear
    rate_limits: TokenBucket
    conversation_id: str  # the default conversation (response.conversation_id)
    items: dict[str, dict[str, Any]]  # the default conversation, in order
    call_names: dict[str, str]  # call_id -> tool name, for function_call_output
    audio_items: dict[str, str]  # response id -> the assistant item its audio belongs to
    item_audio_ms: dict[str, int]  # assistant item id -> its audio's length (truncate checks it)
    heard: list[str]  # transcripts of speech heard since the last response
    typed: list[str]  # user text items added since the last response
    outputs: list[str]  # tool names of function_call_outputs since the last response
    last_response_id: str | None
    heard_ms: int
    manual_turns: list[npt.NDArray[np.int16]]  # heard with turn_detection off, until a commit
    appended_bytes: int
    late_starts: int  # responses whose output started after their think time was over (timing.py)

    @property
    def turn_detection(self) -> dict[str, Any] | None: ...

    @property
    def input_format(self) -> FormatType: ...

    @property
    def output_buffer_events(self) -> bool: ...

    def send(self, event: dict[str, Any]) -> None: ...

    def send_error(self, err: ApiError, event_id: str | None) -> None: ...

    def spawn(self, coro: Any) -> asyncio.Future[Any]: ...

    def warm_up(self) -> None: ...

    def vad_changed(self) -> None: ...

    def add_item(self, item: dict[str, Any], emit: bool = True, after: str | None = None) -> None: ...

    def previous_item_id(self, item_id: str) -> str | None: ...

    def conversation_texts(self) -> list[str]: ...

    def next_action(self) -> Action | None: ...

    def watch_playback(self, playback: Playback) -> None: ...

    def clear_output(self, truncate: bool, reason: str | None = None) -> list[Playback]: ...

    def commit_turn(
        self, item_id: str, pcm: npt.NDArray[np.int16], auto: bool, idle: bool = False
    ) -> Coroutine[Any, Any, None]: ...

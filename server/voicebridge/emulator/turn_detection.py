"""`audio.input.turn_detection`: what the Ear is set to, and the idle timeout.

server_vad takes its `threshold`, `prefix_padding_ms` and `silence_duration_ms`. semantic_vad has no such fields
(the SDK: "used only for server_vad mode"): the real one is a model estimating whether the user has finished, waiting
at most 8 s, 4 s or 2 s for `eagerness` low, medium or high (`auto` = medium). The emulator has no such model, so
its rule is a fixed end-of-turn silence per eagerness, an eighth of that maximum: low 1000 ms, medium and auto 500 ms
(server_vad's default), high 250 ms; threshold 0.5 and 300 ms of prefix padding, server_vad's defaults.

`idle_timeout_ms` (server_vad only, as documented): after the last response's audio has finished playing, that long
without speech makes the server send `input_audio_buffer.timeout_triggered` (the silent segment's `audio_start_ms`
and `audio_end_ms` on the input audio clock), commit the silent audio as a user `input_audio` item and respond.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .hearing import HearingError, VadSettings
from .schema import ApiError

DEFAULTS: dict[str, dict[str, Any]] = {
    "server_vad": {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
}
SEMANTIC_SILENCE_MS = {"low": 1000, "medium": 500, "auto": 500, "high": 250}


def with_defaults(td: dict[str, Any]) -> dict[str, Any]:
    """A turn_detection object as the session reports it: every field of its type, defaults filled in."""
    return {"type": td.get("type"), **DEFAULTS.get(str(td.get("type")), {}), **td}


def vad_settings(td: dict[str, Any] | None) -> VadSettings:
    """The Ear's settings for a session's turn_detection (None: the Ear still hears, for manual commits)."""
    td = td or {}
    try:
        if td.get("type") == "semantic_vad":
            return VadSettings(silence_duration_ms=SEMANTIC_SILENCE_MS[str(td.get("eagerness") or "auto")])
        threshold = td.get("threshold")
        return VadSettings(
            threshold=0.5 if threshold is None else float(threshold),
            prefix_padding_ms=int(td.get("prefix_padding_ms") or 300),
            silence_duration_ms=int(td.get("silence_duration_ms") or 500),
        )
    except HearingError as e:
        raise ApiError(400, str(e), code="invalid_value", param="session.audio.input.turn_detection") from e


def idle_timeout_ms(td: dict[str, Any] | None) -> int | None:
    if td is None or td.get("type") != "server_vad" or td.get("idle_timeout_ms") is None:
        return None
    return int(td["idle_timeout_ms"])


class IdleTimer:
    """Fires `on_idle(audio_start_ms)` `timeout` after the anchor (the end of the last response's playback), unless
    disarmed first (speech started, a response began). A new timeout (session.update) re-arms from the same
    anchor."""

    def __init__(self, on_idle: Callable[[int], None]) -> None:
        self._on_idle = on_idle
        self._anchor: tuple[float, int] | None = None  # (monotonic time, input audio ms) when playback ended
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def anchor(self, audio_ms: int, timeout_ms: int | None) -> None:
        self._anchor = (time.monotonic(), audio_ms)
        self.rearm(timeout_ms)

    def rearm(self, timeout_ms: int | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._anchor is None or timeout_ms is None:
            return
        due = self._anchor[0] + timeout_ms / 1000
        self._handle = asyncio.get_running_loop().call_later(max(0.0, due - time.monotonic()), self._fire)

    def disarm(self) -> None:
        self._anchor = None
        self.rearm(None)

    def _fire(self) -> None:
        self._handle = None
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            self._on_idle(anchor[1])

"""The session object, as the API reports it in session.created and session.updated: its defaults, and how a
session.update (or a call's `session`, or a client secret's) applies to it.
"""

from __future__ import annotations

import time
from typing import Any

from . import events as ev
from . import turn_detection

SESSION_TTL_S = 60 * 60  # the real API's session lifetime (expires_at in session.created)


def default_session(model: str) -> dict[str, Any]:
    """The full GA session object as the real API reports it in session.created (WebRTC defaults)."""
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": ev.new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful voice assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + SESSION_TTL_S,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": turn_detection.with_defaults({"type": "server_vad"}),
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


def merge_session(config: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a session object to the current one: nested objects merge, everything else (lists, transcription)
    is replaced, as session.update does. turn_detection merges into the current one of the same type, else into
    its type's defaults: the session reports every field in effect."""
    out = dict(config)
    for key, value in update.items():
        if key in ("audio", "input", "output") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_session(out[key], value)
        elif key == "turn_detection" and isinstance(value, dict):
            old = out.get(key)
            same = isinstance(old, dict) and old.get("type") == value.get("type")
            out[key] = {**(old if same and isinstance(old, dict) else turn_detection.with_defaults(value)), **value}
        else:
            out[key] = value
    return out

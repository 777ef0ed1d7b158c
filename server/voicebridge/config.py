"""Settings from flags and the environment, in one place.

The API key is read here and nowhere else; it is kept out of `repr()` so it never lands in a log line or artifact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_EMULATOR_PORT = 8765


@dataclass(frozen=True)
class Settings:
    # Where the Realtime API is: OpenAI's when a key is set, else the emulator (embedded or at this URL).
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    model: str = DEFAULT_MODEL
    # No public STUN server by default: offline machines stall ~5 s on one (shared/aiortc-notes.md).
    ice_servers: tuple[str, ...] = ()
    artifacts_dir: Path = Path("calls")
    session_timeout_s: float = 10.0
    hangup_drain_timeout_s: float = 5.0
    tool_timeout_s: float = 10.0
    # aiortc notices a dead peer only after ~30 s (ICE consent); a live one sends RTP/RTCP every second or so.
    # A WebRTC leg that receives nothing at all for this long has lost its peer (0 turns the watchdog off).
    peer_silence_timeout_s: float = 5.0

    @property
    def uses_openai(self) -> bool:
        return self.base_url.rstrip("/") == OPENAI_BASE_URL

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        key = os.environ.get("OPENAI_API_KEY", "")
        base = os.environ.get("VOICEBRIDGE_BASE_URL", "")
        if not base:
            base = OPENAI_BASE_URL if key else ""
        values: dict[str, object] = {
            "base_url": base,
            "api_key": key,
            "model": os.environ.get("VOICEBRIDGE_MODEL", DEFAULT_MODEL),
            "ice_servers": tuple(s for s in os.environ.get("VOICEBRIDGE_ICE_SERVERS", "").split(",") if s),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

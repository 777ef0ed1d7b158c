"""Settings from flags and the environment, in one place.

The API key is read here and nowhere else; it is kept out of `repr()` so it never lands in a log line or artifact.

Which Realtime endpoint (first that applies wins; `backend.realtime_backend` applies it):
1. `--emulator-url` on the command line: that emulator;
2. `VOICEBRIDGE_BASE_URL`: an explicit override for voicebridge alone;
3. `OPENAI_BASE_URL` with `OPENAI_API_KEY`: the openai SDK's own convention, for gateways, proxies and other
   compatible servers;
4. `OPENAI_API_KEY` alone: OpenAI;
5. none of these: the embedded emulator. Without a key the SDK itself refuses to run, so `OPENAI_BASE_URL` alone
   does not leave offline mode (a warning says so).
The SDK reads its other variables itself (`OPENAI_ORG_ID`, `OPENAI_PROJECT_ID`, `OPENAI_CUSTOM_HEADERS`, ...):
every client is made with `base_url` and `api_key` only, so they reach the endpoint exactly as in any SDK program.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_EMULATOR_PORT = 8765
# The SDK insists on a key; the emulator accepts any, so a harmless placeholder stands in for none.
EMULATOR_KEY = "sk-emulator"

# Where an offline run's emulator lives: "0" in this process (embedded), N or "auto" in child processes
# (`voicebridge emulator --workers N`); the flag `--emulator-workers` wins (see emulator_workers below).
EMULATOR_WORKERS_ENV = "VOICEBRIDGE_EMULATOR_WORKERS"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # Where the Realtime API is: see the module's docstring; "" until the embedded emulator is started.
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    # Which rule above chose base_url (shown by `serve` and `call` so nobody wonders where calls go).
    base_url_source: str = ""
    model: str = DEFAULT_MODEL
    # No public STUN server by default: offline machines stall ~5 s gathering against one.
    ice_servers: tuple[str, ...] = ()
    artifacts_dir: Path = Path("calls")
    session_timeout_s: float = 10.0
    hangup_drain_timeout_s: float = 5.0
    # After the last words played out: how long the hang-up waits for the other side's transcription of them.
    hangup_hear_timeout_s: float = 3.0
    tool_timeout_s: float = 10.0
    # aiortc notices a dead peer only after ~30 s (ICE consent); a live one sends RTP/RTCP every second or so.
    # A WebRTC leg that receives nothing at all for this long has lost its peer (0 turns the watchdog off).
    peer_silence_timeout_s: float = 5.0
    # A browser that joined (listen / take over) but whose peer connection is not up this long after its answer
    # is dropped: its seat and its peer connection are freed.
    join_connect_timeout_s: float = 30.0

    @property
    def uses_openai(self) -> bool:
        return self.base_url.rstrip("/") == OPENAI_BASE_URL

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        return cls.from_mapping(os.environ, **overrides)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str], **overrides: object) -> Settings:
        key = env.get("OPENAI_API_KEY", "")
        base, source = endpoint_from_env(env)
        values: dict[str, object] = {
            "base_url": base,
            "base_url_source": source,
            "api_key": key,
            "model": env.get("VOICEBRIDGE_MODEL", DEFAULT_MODEL),
            "ice_servers": tuple(s for s in env.get("VOICEBRIDGE_ICE_SERVERS", "").split(",") if s),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("base_url") and "base_url_source" not in overrides:
            values["base_url_source"] = "command line"
        return cls(**values)  # type: ignore[arg-type]


def endpoint_from_env(env: Mapping[str, str]) -> tuple[str, str]:
    """(base URL, the variable that chose it); ("", "") means the embedded emulator."""
    key = env.get("OPENAI_API_KEY", "")
    if explicit := env.get("VOICEBRIDGE_BASE_URL", "").strip():
        return explicit.rstrip("/"), "VOICEBRIDGE_BASE_URL"
    sdk_base = env.get("OPENAI_BASE_URL", "").strip()
    if key and sdk_base:
        return sdk_base.rstrip("/"), "OPENAI_BASE_URL"
    if key:
        return OPENAI_BASE_URL, "OPENAI_API_KEY"
    if sdk_base:
        log.warning(
            "OPENAI_BASE_URL is set but OPENAI_API_KEY is not: using the embedded emulator "
            "(set OPENAI_API_KEY to use it, or VOICEBRIDGE_BASE_URL for an endpoint that needs no key)"
        )
    return "", ""


def emulator_workers(flag: str | None, default: str = "0", env: Mapping[str, str] | None = None) -> str:
    """The offline emulator's processes: the flag, else VOICEBRIDGE_EMULATOR_WORKERS, else `default`; "0" (in this
    process), a whole number N >= 1 (a child `voicebridge emulator --workers N`) or "auto" (one worker per usable
    core). ValueError names a bad value and where it came from."""
    env = os.environ if env is None else env
    source, text = ("--emulator-workers", flag) if flag is not None else (EMULATOR_WORKERS_ENV, env.get(
        EMULATOR_WORKERS_ENV, "").strip() or None)
    if text is None:
        return default
    if text == "auto" or (text.isascii() and text.isdigit()):
        return text if text == "auto" else str(int(text))
    raise ValueError(f"{source} must be 0 (this process), a whole number of processes or `auto`, got {text!r}")

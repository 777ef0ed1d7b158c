"""Where a batch's (or a soak's) calls go: the embedded emulator unless OPENAI_API_KEY or an emulator URL says
otherwise. The one place that starts and stops the in-process emulator for them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from voicebridge.config import Settings
from voicebridge.media.loopback import is_local_url, set_loopback_only
from voicebridge.scenarios.model import Scenario


@contextlib.asynccontextmanager
async def realtime_backend(
    scenarios: Sequence[Scenario], emulator_url: str = "", *, force_emulator: bool = False, **overrides: Any
) -> AsyncIterator[tuple[Settings, Any]]:
    """(settings, the embedded Emulator or None) for the duration of the block. The emulator gets the
    scenarios' files so it plays their personas (built-ins it has already). `force_emulator`: the embedded
    one even when OPENAI_API_KEY is set (and the key is then not used at all)."""
    settings = Settings.from_env(**overrides)
    if force_emulator and not emulator_url:
        settings = dataclasses.replace(settings, base_url="", api_key="")
    emulator: Any = None
    if emulator_url:
        settings = dataclasses.replace(settings, base_url=emulator_url.rstrip("/"))
    elif not settings.base_url:
        from voicebridge.emulator.server import Emulator

        emulator = Emulator(scenarios=[s.path for s in scenarios if s.path is not None])
        settings = dataclasses.replace(settings, base_url=await emulator.start(host="127.0.0.1", port=0))
    if is_local_url(settings.base_url):
        set_loopback_only(True)  # both ends of each leg are on this machine: keep ICE on 127.0.0.1
    try:
        yield settings, emulator
    finally:
        if emulator is not None:
            await emulator.stop()

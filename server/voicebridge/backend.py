"""Where a process's calls go: the one function that picks the Realtime endpoint and starts the embedded
emulator when there is none. `call`, `serve`, `batch` and `soak` all go through `realtime_backend`.

The order of the rules is config.py's: `--emulator-url`, `VOICEBRIDGE_BASE_URL`, `OPENAI_BASE_URL` with a key,
a key alone (OpenAI), else the embedded emulator.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from voicebridge.batch.emulator_process import EmulatorProcess, emulator_process
from voicebridge.media.loopback import is_local_url, set_loopback_only
from voicebridge.scenarios.model import Scenario

from .config import EMULATOR_KEY, Settings, emulator_workers

if TYPE_CHECKING:
    from voicebridge.emulator.server import Emulator


@dataclass(frozen=True)
class Backend:
    settings: Settings
    emulator: Emulator | None  # the embedded one, when this process started it
    child: EmulatorProcess | None = None  # the emulator in child process(es), when this process started it
    workers: str = "1"  # the child's --workers

    @property
    def description(self) -> str:
        """What a person reads at start-up: where the calls go and which setting said so."""
        s = self.settings
        if self.emulator is not None:
            return f"the embedded emulator at {s.base_url}"
        if self.child is not None:
            return f"the emulator in a child process (--workers {self.workers}) at {s.base_url}"
        if s.uses_openai:
            return "OpenAI"
        return f"{s.base_url} (from {s.base_url_source})" if s.base_url_source else s.base_url


@contextlib.asynccontextmanager
async def realtime_backend(
    scenarios: Sequence[Scenario] = (),
    emulator_url: str = "",
    *,
    force_emulator: bool = False,
    browsers_off_loopback: bool = False,
    emulator_workers_flag: str | None = None,
    emulator_workers_default: str = "0",
    emulator_log: Path | None = None,
    **overrides: object,
) -> AsyncIterator[Backend]:
    """The backend for the duration of the block.

    With no endpoint, the emulator runs in this process (embedded), or in child processes when
    `--emulator-workers` / VOICEBRIDGE_EMULATOR_WORKERS (else `emulator_workers_default`) is N >= 1 or `auto`:
    `voicebridge emulator --workers N` as a child, its log into `emulator_log` (None: this stderr). Embedded, the
    bridge's legs and the emulator's sessions share one event loop and one core; in children they do not.
    Either gets the scenarios' files so it plays their personas (the built-ins it has already).
    `force_emulator`: the embedded one even when OPENAI_API_KEY is set (the key is then not used at all).
    ICE gathers 127.0.0.1 only when the endpoint is on this machine, unless browsers on other machines join
    (`browsers_off_loopback`: they need the machine's real addresses, and the emulator legs then use them too).
    """
    settings = Settings.from_env(**overrides)
    if force_emulator:
        settings = dataclasses.replace(settings, base_url="", base_url_source="", api_key="")
    if emulator_url:
        settings = dataclasses.replace(settings, base_url=emulator_url.rstrip("/"), base_url_source="--emulator-url")
    emulator: Emulator | None = None
    child: EmulatorProcess | None = None
    workers = emulator_workers(emulator_workers_flag, emulator_workers_default) if not settings.base_url else "0"
    async with contextlib.AsyncExitStack() as stack:
        if not settings.base_url and workers != "0":
            # Its workers budget as `voicebridge emulator --workers N` does (24 sessions per core of each one's
            # share): measured with the bridge on the same two cores, 50 calls at once ran 24 live, none failed
            # (README "Where the offline emulator runs"); each worker's lag limit guards the rest.
            child = await stack.enter_async_context(emulator_process(scenarios, emulator_log, workers))
            settings = dataclasses.replace(
                settings, base_url=child.url, base_url_source=f"emulator child process (--workers {workers})"
            )
        elif not settings.base_url:
            from voicebridge.emulator.limits import Limits
            from voicebridge.emulator.server import Emulator

            # In this process with the bridge: its capacity counts both ends of each call (emulator/limits.py).
            emulator = Emulator(
                scenarios=[s.path for s in scenarios if s.path is not None], limits=Limits.from_env(embedded=True)
            )
            stack.push_async_callback(emulator.stop)
            url = await emulator.start(host="127.0.0.1", port=0)
            settings = dataclasses.replace(settings, base_url=url, base_url_source="embedded emulator")
        if not settings.api_key and (emulator is not None or child is not None or emulator_url):
            settings = dataclasses.replace(settings, api_key=EMULATOR_KEY)
        if keep_ice_on_loopback(settings.base_url, browsers_off_loopback):
            set_loopback_only(True)
        yield Backend(settings, emulator, child, workers)


def keep_ice_on_loopback(base_url: str, browsers_off_loopback: bool = False) -> bool:
    """Gather only 127.0.0.1 candidates when the Realtime backend is on this machine and so are the browsers.

    Serving beyond loopback means browsers on other machines join calls: they need the machine's real
    addresses, so then the emulator legs use them too (they still connect: both ends are local)."""
    return is_local_url(base_url) and not browsers_off_loopback

"""Optional parts of voicebridge and the packages they need (pyproject.toml's optional-dependencies).

The bridge against OpenAI installs without them. A command that needs one checks for it first (`require`), so a
base install says which extra to install, instead of failing half-way with a ModuleNotFoundError traceback:

- `emulator`: the offline Realtime emulator (`voicebridge emulator`, and `serve`, `call`, `batch`, `soak` when no
  OPENAI_API_KEY or emulator URL is given): speech recognition, voice activity detection, numbers in words;
- `reports`: the plots of `voicebridge batch`'s report.html;
- `bench`: `voicebridge bench`'s plot (pyinstrument, for VOICEBRIDGE_BENCH_PROFILE, is in the extra but
  optional; uvloop, which the bench also uses, is a dependency of the bridge itself);
- `cluster`: the Redis client, for bridge workers sharing calls through Redis (`serve --workers N --redis URL`,
  `worker`); the single-process default needs no Redis.

`cli.main` turns MissingExtra into one line on stderr and exit status 3.
"""

from __future__ import annotations

import importlib.util

# extra -> the modules (import names) whose absence means it is not installed.
EXTRAS: dict[str, tuple[str, ...]] = {
    "emulator": ("pocketsphinx", "webrtcvad", "num2words"),
    "reports": ("matplotlib",),
    "bench": ("matplotlib",),
    "cluster": ("redis",),
}
# What needs each extra, for the message when no caller says more precisely.
NEEDED_BY: dict[str, str] = {
    "emulator": "the Realtime emulator (what voicebridge talks to when OPENAI_API_KEY is not set)",
    "reports": "voicebridge batch (the plots of report.html)",
    "bench": "voicebridge bench (its plot, bench.png)",
    "cluster": "bridge workers on Redis (voicebridge serve --redis, voicebridge worker)",
}
EXIT_STATUS = 3


class MissingExtra(ImportError):
    """A command needs an optional part of voicebridge that is not installed; the message says which."""

    def __init__(self, extra: str, needed_by: str, modules: list[str]) -> None:
        self.extra = extra
        super().__init__(
            f"{needed_by} needs the optional dependencies voicebridge[{extra}], which are not installed "
            f"(no module {', '.join(modules)}): pip install 'voicebridge[{extra}]'"
        )


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, needed_by: str | None = None) -> None:
    """Raise MissingExtra naming `extra` unless all of its modules can be imported."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(extra, needed_by or NEEDED_BY[extra], absent)

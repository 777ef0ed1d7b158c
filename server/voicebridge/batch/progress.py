"""A progress bar on a text stream: redrawn in place on a terminal, one line per finished call otherwise
(so CI logs and pipes stay readable)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from voicebridge.results import CallSummary

WIDTH = 30


class ProgressBar:
    def __init__(
        self, stream: TextIO, total: int, label: str = "calls", name: Callable[[CallSummary], str] | None = None
    ) -> None:
        """`name`: how a finished call's line names it (its call_id when None)."""
        self.stream = stream
        self.name = name
        self.total = total
        self.label = label
        self.ok = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        if self.tty:
            self._draw(0)

    def __call__(self, done: int, total: int, summary: CallSummary) -> None:
        if summary.succeeded:
            self.ok += 1
        else:
            self.failed += 1
        if self.tty:
            self._draw(done)
        else:
            mark = "ok" if summary.succeeded else "FAILED"
            extra = f" ({summary.error})" if summary.error and not summary.succeeded else ""
            who = self.name(summary) if self.name is not None else summary.call_id
            print(
                f"[{done:>{len(str(total))}}/{total}] {who} {mark} {summary.end_reason} "
                f"{summary.duration_s:.1f} s{extra}",
                file=self.stream,
                flush=True,
            )

    def _draw(self, done: int) -> None:
        filled = int(WIDTH * done / self.total) if self.total else WIDTH
        bar = "#" * filled + "." * (WIDTH - filled)
        elapsed = time.monotonic() - self.t0
        self.stream.write(
            f"\r[{bar}] {done}/{self.total} {self.label}, {self.ok} ok, {self.failed} failed, {elapsed:5.0f} s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

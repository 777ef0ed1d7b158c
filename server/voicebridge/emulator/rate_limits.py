"""`rate_limits.updated`: the token rate limit as a response starts.

The real event comes right after `response.created` and, as observed, lists only the `tokens` limit:
`{"name": "tokens", "limit": 40000, "remaining": 38490, "reset_seconds": 2.265}`. A response reserves its input
plus its output budget (`max_output_tokens`, or 4096 for `inf`) when it starts; the reservation is adjusted to what
`usage` reports when it ends. The emulator keeps one such bucket per session (the real limit is the
organization's), refilled continuously at `limit` tokens a minute; it reports the limit but never enforces it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TOKENS_PER_MINUTE = 40_000
OUTPUT_RESERVE_INF = 4096  # what `max_output_tokens: "inf"` reserves: the model's longest response


class TokenBucket:
    def __init__(self, limit: int = TOKENS_PER_MINUTE, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._used = 0.0  # tokens counted against the limit, draining at limit/60 a second
        self._at = clock()

    def _drain(self) -> None:
        now = self._clock()
        self._used = max(0.0, self._used - (now - self._at) * self.limit / 60)
        self._at = now

    def reserve(self, tokens: int) -> dict[str, Any]:
        """Count a starting response's tokens; returns the `tokens` entry of `rate_limits`."""
        self._drain()
        self._used += tokens
        remaining = max(0, int(self.limit - self._used))
        reset = round(min(self._used, self.limit) / (self.limit / 60), 3)
        return {"name": "tokens", "limit": self.limit, "remaining": remaining, "reset_seconds": reset}

    def settle(self, reserved: int, used: int) -> None:
        """A response ended: replace its reservation with what it used."""
        self._drain()
        self._used = max(0.0, self._used - reserved + used)


def output_reserve(max_output_tokens: int | None) -> int:
    return OUTPUT_RESERVE_INF if max_output_tokens is None else max_output_tokens

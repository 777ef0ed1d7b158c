"""What one emulator holds at most, and how it says no when it cannot hold more.

* Peers that never connect. A WebRTC session whose peer connection is not `connected` within
  `connect_timeout_s` of its answer is closed ("not connected within N s"): a client that vanished after its
  offer, or whose candidates lead nowhere, no longer keeps a peer connection and its sockets for ever.
* Counts. Live sessions per key (an `ek_` key counts for the API key that minted it) and in all, WebRTC and
  WebSocket alike. Beyond either: 429 in the API's rate-limit shape (`type` "requests", `code`
  "rate_limit_exceeded", a `Retry-After`), checked and counted in one synchronous step, so concurrent offers
  cannot all slip past the same check.
* Capacity (observability/capacity.py). Sessions per core (`sessions_per_core`) and the event loop's lag
  (`max_lag_ms`): beyond either, a new session gets the same 429 (message: "this emulator is at capacity",
  the reason, `Retry-After`), so a load past what the process can pace is refused instead of accepted and
  failing every session. Sessions already live keep running.
* File descriptors. A new WebRTC session needs sockets (ICE), and the process needs some to accept connections at
  all. When fewer than `fd_reserve` are left, an offer gets a 503 in the API's shape before anything is allocated;
  an answer that came out without a single ICE candidate (its sockets could not be opened) is a 503 too, never a
  201 with an answer nobody can reach.
* The accept() loop. Out of descriptors, asyncio logs a traceback for every accept() that fails, again and
  again; `AcceptErrorFilter` makes that one warning per ACCEPT_WARN_EVERY_S with a count of the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voicebridge.observability.capacity import Capacity, CapacityLimits, Full, env_number
from voicebridge.observability.resources import count_fds

from .schema import ApiError

log = logging.getLogger(__name__)
ACCEPT_WARN_EVERY_S = 10.0
_ACCEPT_FAILED = "socket.accept() out of system resource"
RETRY_AFTER_S = 5
# Capacity defaults, measured on this project's 2-vCPU machine (README, "Overload"): see Limits.
SESSIONS_PER_CORE = 24.0  # an emulator in a process of its own (`voicebridge emulator`)
EMBEDDED_SESSIONS_PER_CORE = 12.0  # one embedded in the bridge's process (call, serve, batch, test): calls cost both
# A worker of `voicebridge emulator --workers N` (the child of batch and test) has its share of the cores to itself,
# one event loop per core, and recognises in its own processes: with the bridge on the same two cores, 50 calls at
# once (2 workers of 50 sessions) kept the turn gap of 2 calls at once (2026-11-30, quiet: p50 -0.2 %, p90 -2/-6 %),
# so it counts 50 per core of its share; a lone process serves all its cores' sessions from one loop (24 per core).
WORKER_SESSIONS_PER_CORE = 50.0
MAX_LAG_MS = 150.0
LAG_FLOOR = 8  # the lag refuses only while this many sessions are live (capacity.py says why)
ENV_SESSIONS_PER_CORE = "VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE"
ENV_MAX_LAG_MS = "VOICEBRIDGE_EMULATOR_MAX_LAG_MS"


@dataclass(frozen=True)
class Limits:
    connect_timeout_s: float = 30.0  # a WebRTC session's peer must be connected this long after the answer
    max_sessions: int = 500  # live sessions in all
    max_sessions_per_key: int = 200  # live sessions per API key
    fd_reserve: int = 24  # descriptors kept free for accepting connections and answering
    sessions_per_core: float = SESSIONS_PER_CORE  # capacity: live sessions per usable core (0: no budget)
    max_lag_ms: float = MAX_LAG_MS  # capacity: the smoothed event-loop lag beyond which it is full (0: off)
    cores: int = 0  # cores the budget counts (0: this process's CPU affinity)
    lag_floor: int = LAG_FLOOR  # the lag refuses only while at least this many sessions are live
    capacity_retry_after_s: int = 0  # the Retry-After of a capacity refusal (0: capacity.py's defaults)

    def __post_init__(self) -> None:
        if not self.connect_timeout_s > 0 or self.max_sessions < 1 or self.max_sessions_per_key < 1:
            raise ValueError(f"emulator limits must be positive: {self}")
        if self.sessions_per_core < 0 or self.max_lag_ms < 0 or self.cores < 0 or self.lag_floor < 0:
            raise ValueError(f"emulator capacity settings must not be negative: {self}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, embedded: bool = False, **overrides: Any) -> Limits:
        """The defaults, then VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE / _MAX_LAG_MS, then `overrides` (flags) that
        are not None. `embedded`: the emulator shares its process with the bridge, whose legs of each call cost
        as much again (EMBEDDED_SESSIONS_PER_CORE by default). ValueError names a bad variable."""
        env = os.environ if env is None else env
        per_core = EMBEDDED_SESSIONS_PER_CORE if embedded else SESSIONS_PER_CORE
        values: dict[str, Any] = {
            "sessions_per_core": env_number(env, ENV_SESSIONS_PER_CORE, per_core),
            "max_lag_ms": env_number(env, ENV_MAX_LAG_MS, MAX_LAG_MS),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def capacity(self) -> CapacityLimits:
        return CapacityLimits(
            per_core=self.sessions_per_core, max_lag_ms=self.max_lag_ms, cores=self.cores,
            retry_after_s=self.capacity_retry_after_s,
        )


def rate_limited(what: str, limit: int, model: str) -> ApiError:
    """The real API's 429 for a rate limit, with this limit named."""
    return ApiError(
        429,
        f"Rate limit reached for {model} on {what}: Limit {limit}, Used {limit}, Requested 1. "
        "Hang up a session (or wait for one to end) and try again.",
        type_="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def at_capacity(full: Full, model: str) -> ApiError:
    """The real API's 429 shape for this emulator's own capacity (it has more than it can pace)."""
    return ApiError(
        429,
        f"Rate limit reached for {model} on concurrent sessions: this emulator is at capacity ({full.message}). "
        f"Please try again in {full.retry_after_s}s.",
        type_="requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(full.retry_after_s)},
    )


def overloaded(why: str) -> ApiError:
    return ApiError(
        503,
        f"The server is overloaded ({why}); please try again later.",
        type_="server_error",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def free_fds() -> tuple[int, int]:
    """(descriptors still free, the soft limit); (huge, huge) when there is no limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30, 1 << 30
    return soft - count_fds(), soft


class Throttle:
    """At most one log line per `every_s`; counts what it held back so the next line can say how many."""

    def __init__(self, every_s: float = ACCEPT_WARN_EVERY_S) -> None:
        self.every_s = every_s
        self.held_back = 0
        self._last = -math.inf

    def due(self) -> str | None:
        """None when a line was logged less than `every_s` ago, else the suffix for the line to log now."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            self.held_back += 1
            return None
        more = f" ({self.held_back} more since the last such line)" if self.held_back else ""
        self._last, self.held_back = now, 0
        return more


class SessionCounter:
    """Live sessions per owning key, checked and counted together (`admit`), released when a session ends."""

    def __init__(self, limits: Limits, capacity: Capacity | None = None) -> None:
        self.limits = limits
        self.capacity = capacity or Capacity("sessions", limits.capacity, lag_floor=limits.lag_floor)
        self._owner: dict[str, str] = {}  # session id -> owning API key (kept in memory only, never shown)
        self._per_key: Counter[str] = Counter()
        self._fd_warning = Throttle()

    def __len__(self) -> int:
        return len(self._owner)

    def add(self, session_id: str, owner: str, model: str, *, needs_sockets: bool) -> None:
        """Check every limit and count the session, in one synchronous step (call it before any await that
        follows the decision to create the session); raises the API's 429 or 503."""
        lim = self.limits
        if len(self._owner) >= lim.max_sessions:
            raise rate_limited("concurrent sessions", lim.max_sessions, model)
        if self._per_key[owner] >= lim.max_sessions_per_key:
            raise rate_limited("concurrent sessions per API key", lim.max_sessions_per_key, model)
        if (full := self.capacity.refusal(len(self._owner))) is not None:
            raise at_capacity(full, model)
        if needs_sockets:
            free, soft = free_fds()
            if free < lim.fd_reserve:
                if (more := self._fd_warning.due()) is not None:
                    log.warning("offers refused (503): %d of %d file descriptors in use%s", soft - free, soft, more)
                raise overloaded(f"out of file descriptors: {soft - free} of {soft} in use")
        self._owner[session_id] = owner
        self._per_key[owner] += 1

    def release(self, session_id: str) -> None:
        owner = self._owner.pop(session_id, None)
        if owner is not None:
            self._per_key[owner] -= 1
            if self._per_key[owner] <= 0:
                del self._per_key[owner]


class AcceptErrorFilter:
    """A loop exception handler: failed accept()s (out of descriptors) become one warning per interval; anything
    else goes to the handler that was there before (or the loop's default)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self._throttle = Throttle()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == _ACCEPT_FAILED:
            if (more := self._throttle.due()) is not None:
                log.warning(
                    "cannot accept connections: %s; they wait until descriptors are free%s",
                    context.get("exception"), more,
                )
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def install(self) -> None:
        self.loop.set_exception_handler(self)

    def remove(self) -> None:
        if self.loop.get_exception_handler() is self:
            self.loop.set_exception_handler(self.previous)

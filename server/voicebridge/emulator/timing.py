"""The emulator's timing on purpose: how long its "model" thinks before a response starts.

A real model takes a while from the end of a user's turn to its first audio; the emulator's scripts take no time,
but recognising the turn and starting the response do, and that work takes longer the busier the process is. So
the think time is a deadline, not a pause after the work: a response's output (its first audio, text or function
call) starts `response_delay_ms` after the moment its turn ended on the clock (the arrival of the packet that
ended the turn, for a server-VAD turn; the arrival of the `response.create`, for a client's), whatever the
recognition and the rest took meanwhile. At any load where that work fits in the delay, the turn gap is the same;
a response that could not start in time starts at once and is counted late (`Session.late_starts`).

The setting: `voicebridge emulator --response-delay-ms`, VOICEBRIDGE_EMULATOR_RESPONSE_DELAY_MS, and per persona
`response_delay_ms` in a scenario file (which wins). A barge-in (a persona cutting in, `interrupt_after_ms`) is
not delayed: its timing is its rule's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from voicebridge.observability.capacity import env_number

RESPONSE_DELAY_MS = 200.0  # a fast model's think time; long enough to hide recognition on a busy machine
MAX_RESPONSE_DELAY_MS = 10_000.0
ENV_RESPONSE_DELAY_MS = "VOICEBRIDGE_EMULATOR_RESPONSE_DELAY_MS"


def response_delay_ms(env: Mapping[str, str] | None = None) -> float:
    """The default, or VOICEBRIDGE_EMULATOR_RESPONSE_DELAY_MS when set (ValueError naming it when bad)."""
    value = env_number(os.environ if env is None else env, ENV_RESPONSE_DELAY_MS, RESPONSE_DELAY_MS)
    check_delay(value, ENV_RESPONSE_DELAY_MS)
    return value


def check_delay(value: float, name: str) -> None:
    if not 0 <= value <= MAX_RESPONSE_DELAY_MS:
        raise ValueError(f"{name} must be from 0 to {MAX_RESPONSE_DELAY_MS:g} ms, got {value:g}")

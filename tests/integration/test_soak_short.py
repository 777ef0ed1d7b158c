"""The short soak of `make test`: 10 calls one after another, 4 through the server's registry with ended calls
retained, 2 kept whole and 5 at once against the embedded emulator, zero failures, and descriptors, tasks,
threads and peer connections back at their baseline (RSS within a bound); the retained calls listed, served from
their folders, and holding no Call object or peer connection. `make soak` is the long one (hundreds sequential
and retained, dozens concurrent, the emulator in its own process), where RSS per ended call is judged too."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from voicebridge.batch.soak import Limits, Resources, SoakResult, _check, print_result, settle, soak
from voicebridge.observability.metrics import Metrics

pytestmark = pytest.mark.integration
SEQUENTIAL, RETAINED, KEPT_WHOLE, CONCURRENT, WARMUP = 10, 4, 2, 5, 1
ALL = SEQUENTIAL + RETAINED + KEPT_WHOLE + CONCURRENT


async def test_short_soak_has_no_failures_and_no_leaks() -> None:
    metrics = Metrics()
    result = await soak(
        SEQUENTIAL, CONCURRENT, warmup=WARMUP, metrics=metrics, emulator="embedded", retained=RETAINED,
        kept_whole=KEPT_WHOLE,
    )
    print_result(result, sys.stdout)  # the figures, for `pytest -s` and the CI log
    assert result.problems == [], result.problems
    assert (result.calls, result.failed) == (ALL, 0)
    assert result.end_reasons == {"caller_hangup": ALL}
    # Every retained call listed (and, as result.problems says, served and holding nothing); RSS per ended call
    # measured for each phase but not judged from so few calls (the slopes need make soak's hundreds).
    assert result.retained_listed == RETAINED
    assert len(result.retained_rss_trace_mb) == RETAINED + 1 and len(result.whole_rss_trace_mb) == KEPT_WHOLE + 1
    assert result.rss_per_100_calls.retained is not None and not result.rss_per_100_calls.judged
    assert result.baseline is not None and result.after is not None
    limits = Limits()
    assert result.after.fds - result.baseline.fds <= limits.fds
    assert result.after.tasks - result.baseline.tasks <= limits.tasks
    # The bridge's AND the emulator's (same process) peer connections are all gone again: none is left alive beyond
    # what earlier tests in this process already held when the soak began.
    assert result.after.peer_connections <= result.baseline.peer_connections
    assert result.emulator_sessions_left == 0
    assert len(result.rss_trace_mb) == SEQUENTIAL
    # The metrics watched every batch call, warm-up included (the registry's calls count in its own server's), and none
    # is left counted as active.
    ended = metrics.value("voicebridge_calls_ended_total", {"end_reason": "caller_hangup"})
    assert ended == SEQUENTIAL + CONCURRENT + WARMUP
    assert metrics.value("voicebridge_active_calls") == 0
    assert metrics.value("voicebridge_call_setup_seconds_count") == ended


async def test_the_leak_check_catches_leaked_descriptors() -> None:
    """The measurement is not vacuous: descriptors opened after the baseline and kept are reported."""
    limits = Limits()
    base = Resources.now()
    pipes = [os.pipe() for _ in range(limits.fds)]  # 2 descriptors each: twice the allowance
    try:
        now = await settle(base, limits, within_s=0.5)
        result = SoakResult(sequential=0, concurrent=0)
        _check(result, base, now, limits, "after leaking")
        assert now.fds - base.fds >= 2 * limits.fds
        assert any("file descriptors" in p for p in result.problems), result.problems
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    back = await settle(base, limits, within_s=0.5)
    result = SoakResult(sequential=0, concurrent=0)
    _check(result, base, back, limits, "after closing")
    assert result.problems == []


def test_rss_growth_beyond_the_limit_is_a_problem() -> None:
    base = Resources(fds=10, tasks=1, threads=1, pool_threads=0, os_threads=3, rss_mb=200.0, peer_connections=0)
    result = SoakResult(sequential=0, concurrent=0)
    _check(result, base, dataclasses.replace(base, rss_mb=200.0 + Limits().rss_mb + 1), Limits(), "x")
    _check(result, base, dataclasses.replace(base, peer_connections=1), Limits(), "y")
    assert [p.split(":")[0] for p in result.problems] == ["x", "y"]
    assert "RSS MB" in result.problems[0] and "RTCPeerConnection" in result.problems[1]

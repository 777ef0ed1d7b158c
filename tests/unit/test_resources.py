"""The soak's thread accounting: the event loop's default executor (asyncio.to_thread) is a bounded pool, counted
apart from the threads a call could leak, on either event loop the bridge runs on."""

from __future__ import annotations

import asyncio
import threading

import pytest
import uvloop

from voicebridge.observability.resources import Resources, is_pool_thread


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_default_executor_threads_are_pool_threads_on_either_loop(run: object) -> None:
    async def measure() -> tuple[Resources, Resources]:
        before = Resources.now()
        await asyncio.to_thread(lambda: None)
        return before, Resources.now()

    before, after = run(measure())  # type: ignore[operator]
    assert after.pool_threads == before.pool_threads + 1
    assert after.threads == before.threads


def test_a_thread_of_our_own_is_not_a_pool_thread() -> None:
    done = threading.Event()
    t = threading.Thread(target=done.wait, name="recorder")
    t.start()
    try:
        assert not is_pool_thread(t)
        assert is_pool_thread(threading.Thread(name="uvloop_3")) and is_pool_thread(threading.Thread(name="asyncio_0"))
    finally:
        done.set()
        t.join()

"""Running aiortc's coroutines from our own code: a send that in practice never suspends, run in the caller's
stack (``run_now``), and one driver (``drive``) that goes on running a coroutine inside the awaiting task, for the
rest of a send that did suspend and for aiortc's RTCP loop held between reports (media/rtcp_pace.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

log = logging.getLogger(__name__)


def run_now(coro: Coroutine[Any, Any, None]) -> bool:
    """Run a coroutine that in practice never suspends (aiortc's _send_rtp: SRTP protect + sendto) right here.

    True when it completed synchronously. If a future aiortc makes it really wait, the rest is handed to the
    event loop (counted by the caller as a deferred send) instead of being lost.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return True
    task = asyncio.ensure_future(_resume(coro, yielded))
    _deferred.add(task)
    task.add_done_callback(_deferred.discard)
    return False


_deferred: set[asyncio.Future[None]] = set()  # keeps deferred sends alive until they finish


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Continue driving a coroutine from the point where it first suspended (see run_now)."""
    try:
        await drive(coro, yielded)
    except Exception as exc:  # the packet is lost either way; do not leave an unretrieved task exception
        log.debug("OutboundAudio: deferred RTP send failed: %r", exc)


async def drive(
    coro: Coroutine[Any, Any, None], yielded: Any, hold: Callable[[], Awaitable[None]] | None = None
) -> None:
    """Go on running coro, which has just yielded `yielded`, inside the awaiting task until it returns.

    What coro yields (an asyncio future, or None for a bare yield) is awaited here and its result (or exception,
    a cancellation of this task included) sent (thrown) back into coro, as a task of its own would. `hold`, if
    given, is awaited after each of coro's waits, before coro resumes (rtcp_pace's extra wait); a cancellation
    during it is thrown into coro too. One driver for both uses (_resume: a deferred send; rtcp_pace.paced_rtcp).
    """
    while True:
        try:
            if yielded is None:  # a bare yield: let the loop run once, as a task would
                await asyncio.sleep(0)
                value = None
            else:
                value = await _Await(yielded)
            if hold is not None:
                await hold()
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            yielded = coro.send(value)
        except StopIteration:
            return


class _Await:
    """Wrap an object a coroutine yielded (an asyncio future) so it can be awaited again by the loop."""

    def __init__(self, fut: Any) -> None:
        self._fut = fut

    def __await__(self) -> Generator[Any, None, Any]:
        return (yield self._fut)

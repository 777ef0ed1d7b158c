"""RTCP of our legs at an audio pace (issue 16).

aiortc's sender and receiver each report every 0.5-1.5 s; on our legs (senders of ``OutboundAudio``, receivers of
``InboundTap``, media/passthrough.py) the first report comes as aiortc sends it and each next one 2.5-7.5 s later,
libwebrtc's interval for audio: ``paced_rtcp`` drives aiortc's own loop, holding it between reports (what a report
holds and how the loop stops stay aiortc's). ``RTCP_EXTRA_S = (0, 0)``: aiortc's pace. What it relies on (the
loop's sleep, how send() / receive() start it) is in media/aiortc_compat.py's check.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCRtpReceiver, RTCRtpSender

from .drive import drive

# RTCP of our legs (issue 16): aiortc sends an SR per sender and an RR per receiver every 0.5-1.5 s, each one a
# coroutine's wake-up, an SRTCP protect and a datagram, and as many to receive from the far end. libwebrtc's
# interval for audio is 5 s on average; ours: aiortc's first report as it comes, then each next one waits this many
# seconds more than aiortc's sleep (uniform between the two), i.e. 2.5-7.5 s apart. (0, 0): aiortc's own pace.
RTCP_EXTRA_S = (2.0, 6.0)


def pace_rtcp(obj: RTCRtpSender | RTCRtpReceiver) -> None:
    """Per instance: obj's RTCP loop, once started, reports at our pace (RTCP_EXTRA_S), aiortc's code unchanged."""
    if "_run_rtcp" not in vars(obj):
        vars(obj)["_run_rtcp"] = functools.partial(paced_rtcp, obj._run_rtcp)


async def paced_rtcp(run_rtcp: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Drive aiortc's RTCP loop (sleep 0.5-1.5 s, send a report, again), holding it RTCP_EXTRA_S longer after
    each sleep but the first before it sends its next report. Everything else is aiortc's: what a report holds,
    and the stop: a cancellation is thrown into its loop, which sends its BYE and says it exited as it would."""
    waits = 0

    async def hold() -> None:
        nonlocal waits
        waits += 1
        low, high = RTCP_EXTRA_S
        if waits > 1 and high > 0:
            await asyncio.sleep(random.uniform(low, high))

    coro = run_rtcp()
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    await drive(coro, yielded, hold)

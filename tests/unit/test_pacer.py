"""The process's pacer (media/pacer.py): every sender once per 20 ms frame at its own phase, from at most one timer per
millisecond of the frame; a failing sender or one leaving mid-tick does not stop the others."""

from __future__ import annotations

import asyncio

import pytest

from voicebridge.media import pacer as pacing
from voicebridge.media.pacer import Pacer

pytestmark = pytest.mark.unit


class Counting:
    def __init__(self, done: asyncio.Event | None = None, after: int = 3) -> None:
        self.sent, self.done, self.after = 0, done, after

    def send_next(self) -> None:
        self.sent += 1
        if self.done is not None and self.sent == self.after:
            self.done.set()


async def test_every_sender_is_paced_from_at_most_one_timer_per_millisecond_of_the_frame() -> None:
    done = asyncio.Event()
    pacer = Pacer()
    senders = [Counting() for _ in range(59)] + [Counting(done)]
    for i, sender in enumerate(senders):
        pacer.add(sender, i * 0.02 / 60)  # 60 senders spread over the 20 ms frame
    assert 1 < len(pacer.slots) <= 20 and sum(len(a) for a in pacer.slots.values()) == 60 == len(pacer)
    await asyncio.wait_for(done.wait(), 5)
    assert all(s.sent >= 2 for s in senders)  # each sends once per frame, at its own (rounded) phase
    for sender in senders:
        pacer.remove(sender)
    assert not pacer.slots and not pacer._handles and len(pacer) == 0  # nothing left scheduled
    pacer.remove(senders[0])  # removing twice is harmless


async def test_a_failing_sender_is_counted_and_the_others_go_on() -> None:
    class Broken:
        def send_next(self) -> None:
            raise RuntimeError("boom")

    done = asyncio.Event()
    pacer = Pacer()
    broken, ok = Broken(), Counting(done)
    pacer.add(broken)
    pacer.add(ok)  # the same millisecond: the same tick, after the broken one
    await asyncio.wait_for(done.wait(), 5)
    assert pacer.errors >= 3
    pacer.remove(broken)
    pacer.remove(ok)


async def test_a_sender_leaving_during_its_tick_leaves_nothing_scheduled() -> None:
    pacer = Pacer()
    left = asyncio.Event()

    class Leaving:
        def send_next(self) -> None:
            pacer.remove(self)
            left.set()

    pacer.add(Leaving())
    await asyncio.wait_for(left.wait(), 5)
    assert not pacer.slots and not pacer._handles


async def test_one_shared_pacer_per_event_loop() -> None:
    assert pacing.shared() is pacing.shared()
    other = await asyncio.to_thread(lambda: asyncio.run(_shared_of_a_new_loop()))
    assert other is not pacing.shared()


async def _shared_of_a_new_loop() -> Pacer:
    return pacing.shared()

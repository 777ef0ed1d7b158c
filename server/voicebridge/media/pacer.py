"""One 20 ms clock for every audio sender of a process: one timer per occupied millisecond of the frame.

A sender per stream (aiortc's send loop: a coroutine and an asyncio sleep per stream per packet) makes the event
loop wake up once per stream every 20 ms. Here each sender registers with the process's ``Pacer`` at its own phase,
rounded to the millisecond, and every sender whose phase falls in the same millisecond is called from one timer
callback: the loop wakes at most 1000 times a second for sending however many streams it runs, while a receiver
still sees each stream's packets spread over the frame as independent senders' are (within 1 ms).

Used by the bench's load generator (bench/load.py) and the emulator's WebRTC sessions (emulator/mouth.py); each
registered object's ``send_next()`` sends its packet of the current frame, synchronously (``OutboundAudio.send``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

log = logging.getLogger(__name__)

FRAME_S = 0.020
SLOT_S = 0.001  # senders whose 20 ms phase falls in the same millisecond send from one timer callback
MAX_LAG_S = 0.2  # a slot this far behind resumes from now instead of bursting to catch up


class Paced(Protocol):
    def send_next(self) -> None:
        """Send this stream's packet of the current 20 ms frame (quick and synchronous: it runs in the tick)."""


class Pacer:
    """Calls each registered sender's ``send_next()`` every 20 ms at its own phase (to the millisecond).

    A tick that fires late is followed at once by the next one (catching up, as a per-stream sleep loop does), up
    to ``MAX_LAG_S``; further behind, that slot resynchronises on now. A sender that raises is logged and counted
    (``errors``), never stops the others.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots: dict[int, list[Paced]] = {}
        self._slot_of: dict[int, int] = {}  # id(sender) -> its slot
        self._due: dict[int, float] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self.late = 0  # slot ticks that fired more than one frame late (this process is overloaded)
        self.errors = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def add(self, sender: Paced, phase: float = 0.0) -> None:
        """Start calling sender every 20 ms, the first time `phase` seconds from now (0: in this millisecond)."""
        if id(sender) in self._slot_of:
            return
        start = self.loop.time() + phase
        slot = int((start % FRAME_S) / SLOT_S) % round(FRAME_S / SLOT_S)
        self.slots.setdefault(slot, []).append(sender)
        self._slot_of[id(sender)] = slot
        if slot not in self._handles:
            self._due[slot] = start
            self._handles[slot] = self.loop.call_at(start, self._tick, slot)

    def remove(self, sender: Paced) -> None:
        """Stop calling sender (a sender not registered is ignored)."""
        slot = self._slot_of.pop(id(sender), None)
        if slot is None:
            return
        senders = self.slots[slot]
        senders.remove(sender)
        if not senders:
            del self.slots[slot]
            self._handles.pop(slot).cancel()

    def _tick(self, slot: int) -> None:
        now = self.loop.time()
        due = self._due[slot]
        handle = self._handles.get(slot)
        if now - due > FRAME_S:
            self.late += 1
            if now - due > MAX_LAG_S:
                due = now
        for sender in tuple(self.slots.get(slot, ())):  # a copy: a send may remove a sender of this slot
            try:
                sender.send_next()
            except Exception:
                self.errors += 1
                if self.errors <= 10 or self.errors % 1000 == 0:
                    log.exception("Pacer: %r failed to send (%d errors so far)", sender, self.errors)
        if self._handles.get(slot) is not handle:  # its last sender left during the tick (maybe another came)
            return
        self._due[slot] = due + FRAME_S
        self._handles[slot] = self.loop.call_at(due + FRAME_S, self._tick, slot)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def shared() -> Pacer:
    """The running event loop's pacer (one per loop, made on first use)."""
    loop = asyncio.get_running_loop()
    pacer = _shared.get(loop)
    if pacer is None:
        pacer = _shared[loop] = Pacer()
    return pacer

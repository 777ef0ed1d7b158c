"""Where a new call goes: the least loaded live worker that takes calls.

Load is a worker's live calls as the registry counts them now (its `worker:{id}:calls` set, written before the
worker answers the call's creation), not the count in its last heartbeat: two calls placed within a heartbeat then
still land on two workers. Ties go to the lowest id, so placement is the same whichever front door decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from .registry import WorkerInfo


def candidates(
    workers: Sequence[WorkerInfo], loads: Mapping[str, int], exclude: Collection[str] = ()
) -> list[WorkerInfo]:
    """The workers that may take a new call, best first (`exclude`: ones that just refused or did not answer)."""
    usable = [w for w in workers if not w.draining and w.id not in exclude]
    return sorted(usable, key=lambda w: (loads.get(w.id, w.calls), w.id))


def choose(workers: Sequence[WorkerInfo], loads: Mapping[str, int], exclude: Collection[str] = ()) -> WorkerInfo | None:
    """The least loaded worker taking calls, or None when there is none."""
    best = candidates(workers, loads, exclude)
    return best[0] if best else None

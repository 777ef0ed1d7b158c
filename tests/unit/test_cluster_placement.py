"""Placement: the least loaded live worker taking calls, the same answer from any front door."""

from __future__ import annotations

from voicebridge.cluster.placement import candidates, choose
from voicebridge.cluster.registry import WorkerInfo


def _worker(wid: str, calls: int = 0, draining: bool = False) -> WorkerInfo:
    return WorkerInfo(id=wid, host="127.0.0.1", port=1, pid=1, started_at=0.0, calls=calls, draining=draining)


def test_the_least_loaded_worker_gets_the_call_by_its_fresh_count() -> None:
    workers = [_worker("a", calls=0), _worker("b", calls=5)]
    # The registry's count now beats the heartbeat's (a call placed on `a` a moment ago counts).
    assert choose(workers, {"a": 3, "b": 1}) == workers[1]
    assert choose(workers, {}) == workers[0]  # no fresh count: the heartbeat's


def test_ties_go_to_the_lowest_id_and_draining_or_excluded_workers_get_nothing() -> None:
    a, b, c = _worker("a"), _worker("b"), _worker("c", draining=True)
    assert candidates([c, b, a], {"a": 1, "b": 1, "c": 0}) == [a, b]
    assert choose([a, b], {"a": 0, "b": 0}, exclude={"a"}) == b
    assert choose([c], {"c": 0}) is None
    assert choose([], {}) is None

"""The state a group of emulator workers shares (emulator/keys.py, roster.py, group.py): ephemeral keys any worker
can redeem, spent once, kept as digests only; where a full worker passes a new session on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from voicebridge.emulator.group import PASSED_ON, Group
from voicebridge.emulator.keys import Keys
from voicebridge.emulator.roster import GAVE_UP, SERVING, Roster
from voicebridge.emulator.schema import ApiError
from voicebridge.emulator.workers import START_FAILURES, START_FAILURES_ENV, start_failures

PRIVATE, PUBLIC = 40001, 8765


def test_a_key_minted_by_one_worker_is_redeemed_by_another_once_and_never_stored(tmp_path: Path) -> None:
    path = str(tmp_path / "group.sqlite3")
    minter, other = Keys(path), Keys(path)  # two workers' connections to the group's file
    secret = minter.mint(60, {"type": "realtime", "instructions": "Hi."}, api_key="minter-api-key")
    found = other.redeem(secret.value)
    assert found.session == {"type": "realtime", "instructions": "Hi."} and found.owner == secret.owner
    other.spend(found)
    with pytest.raises(ApiError, match="already been used"):
        minter.redeem(secret.value)
    with pytest.raises(ApiError, match="already been used"):
        minter.spend(found)  # a worker that lost the race to spend it
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.value.encode() not in stored and b"minter-api-key" not in stored
    minter.close()
    other.close()


def test_an_expired_key_is_refused_and_forgotten() -> None:
    keys = Keys()
    secret = keys.mint(10, {}, api_key="sk-x")
    assert len(keys) == 1
    keys.clock = lambda: time.time() + 11
    with pytest.raises(ApiError, match="expired or unknown"):
        keys.redeem(secret.value)
    assert len(keys) == 0


class _Transport:
    """What a request knows of the socket it came in on (aiohttp asks the transport)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", self.port) if name == "sockname" else default


def _request(hops: int = 0, port: int = PRIVATE) -> web.Request:
    headers = {PASSED_ON: str(hops)} if hops else {}
    return make_mocked_request("POST", "/v1/realtime/calls", headers=headers, transport=_Transport(port))


def test_a_full_worker_passes_on_to_the_next_serving_worker_once_around() -> None:
    group = Group(index=0, size=3, private_ports=(PRIVATE, 2, 3), parent=1, public_fd=-1, private_fd=-1, state="")
    assert group.pass_on_to(_request(), {0, 1, 2}) == (1, 1)
    assert group.pass_on_to(_request(), {0, 2}) == (2, 1)  # worker 1 is not serving
    assert group.pass_on_to(_request(1), {0, 2}) is None  # both serving ones asked
    assert group.pass_on_to(_request(1), {0, 1, 2}) == (1, 2)
    assert group.pass_on_to(_request(2), {0, 1, 2}) is None
    assert group.pass_on_to(_request(), {0}) is None  # alone: it answers the 429
    # The count is another worker's word, taken only on the private port: a client's header is no count.
    assert group.pass_on_to(_request(2, port=PUBLIC), {0, 1, 2}) == (1, 1)


def test_the_roster_keeps_each_workers_last_state(tmp_path: Path) -> None:
    parent, worker = Roster(str(tmp_path / "g")), Roster(str(tmp_path / "g"))
    parent.set(1, SERVING, 42)
    parent.set(1, GAVE_UP, 43, "failed to start 3 times in a row")
    parent.set(0, SERVING, 41)
    assert [(w.index, w.state, w.pid, w.detail) for w in worker.all()] == [
        (0, SERVING, 41, ""), (1, GAVE_UP, 43, "failed to start 3 times in a row"),
    ]  # fmt: skip


def test_the_count_of_failed_starts_is_a_whole_number() -> None:
    assert start_failures({}) == START_FAILURES and start_failures({START_FAILURES_ENV: "1"}) == 1
    for bad in ("0", "1.5", "many"):
        with pytest.raises(ValueError, match=START_FAILURES_ENV):
            start_failures({START_FAILURES_ENV: bad})

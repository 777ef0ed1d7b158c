"""`voicebridge emulator --workers 2`: two emulator processes behind one URL (emulator/workers.py, group.py).

A real parent process with its two workers, real WebRTC calls made with the openai SDK. Sessions land on both
workers; a hang-up, a sideband WebSocket and a call made with an ephemeral key that reach the worker that does not
own the call (or did not mint the key) still reach the one that does; a worker killed with SIGKILL is restarted and
takes new sessions on the same ports; SIGTERM to the parent ends every child. Waits are on the processes' output
and on events, each bounded only to catch a hang.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from openai import AsyncOpenAI, NotFoundError, RateLimitError

from tests.integration.conftest import Client, cs_session
from tests.integration.test_ws_emulator import WsClient

pytestmark = pytest.mark.integration

START_WITHIN_S = 90.0  # two workers importing aiortc, av and pocketsphinx at once on a loaded machine


@dataclass
class Group:
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.changed.notify_all()

    def wait_line(self, pattern: str, start: int = 0, within: float = START_WITHIN_S) -> re.Match[str]:
        deadline = time.monotonic() + within
        with self.changed:
            while True:
                for line in self.lines[start:]:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, f"no line {pattern!r} in:\n" + "\n".join(self.lines)
                self.changed.wait(left)

    @property
    def url(self) -> str:
        return self.wait_line(r"serving the Realtime GA API at (\S+)").group(1)

    def worker(self, index: int, start: int = 0) -> tuple[int, str]:
        """(pid, private /v1 URL) of worker `index` as the parent announced it."""
        m = self.wait_line(rf"worker {index} pid (\d+), private (\S+)", start)
        return int(m.group(1)), m.group(2)


def start_group(*flags: str, **env: str) -> Iterator[Group]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicebridge.cli", "emulator", "--workers", "2", "--port", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **env},
    )
    g = Group(proc)
    threading.Thread(target=g.read, daemon=True).start()
    try:
        yield g
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def group() -> Iterator[Group]:
    yield from start_group()


@pytest.fixture
def small_group() -> Iterator[Group]:
    """Each worker holds one session (one core, one session per core)."""
    yield from start_group("--sessions-per-core", "1", VOICEBRIDGE_CORES="1")


def owner(call_id: str) -> int:
    m = re.search(r"_w(\d+)$", call_id)
    assert m, f"{call_id} names no worker"
    return int(m.group(1))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_requests_about_a_session_reach_the_worker_that_owns_it(group: Group) -> None:
    url = await asyncio.to_thread(lambda: group.url)
    privates = [(await asyncio.to_thread(group.worker, i))[1] for i in range(2)]
    # Sessions land on both workers: the kernel spreads connections, and each session's request closes its own.
    calls: dict[int, tuple[Client, str]] = {}
    extra: list[Client] = []
    for _ in range(64):  # both seen long before this, unless only one worker takes connections
        c = Client()
        call_id = await c.connect(url, cs_session())
        if owner(call_id) in calls:
            extra.append(c)
        else:
            calls[owner(call_id)] = (c, call_id)
        if len(calls) == 2:
            break
    try:
        assert set(calls) == {0, 1}, f"every session landed on worker {set(calls)}"
        client, call_id = calls[0]
        other = privates[1]  # worker 1 does not own the call: it passes the requests on to worker 0
        await client.wait_for("session.created", within=30)
        sdk = AsyncOpenAI(base_url=other, api_key="sk-test")
        side = WsClient(await sdk.realtime.connect(call_id=call_id).enter())
        try:
            await side.send(
                {"type": "conversation.item.create",
                 "item": {"id": "item_side1", "type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "note from the server"}]}}
            )  # fmt: skip
            assert (await side.wait_for("conversation.item.added"))["item"]["id"] == "item_side1"
            assert (await client.wait_for("conversation.item.added"))["item"]["id"] == "item_side1"
            start = len(side.events)
            client.send({"type": "response.create"})  # the data channel's events reach the proxied sideband
            await side.wait_for("response.created", start=start, within=30)
            # An ephemeral key minted by worker 0 makes a call through worker 1 (made by worker 0, its minter).
            minted = await AsyncOpenAI(base_url=privates[0], api_key="sk-test").realtime.client_secrets.create(
                session={"type": "realtime", "model": "gpt-realtime"}
            )
            assert minted.value.startswith("ek_") and owner(minted.value) == 0
            keyed = Client()
            extra.append(keyed)
            keyed_id = await keyed.connect(other, api_key=minted.value)
            assert owner(keyed_id) == 0
            await keyed.wait_for("session.created", within=30)
            # The hang-up through worker 1 ends worker 0's session: the sideband closes, a second hang-up is 404.
            await sdk.realtime.calls.hangup(call_id)
            await asyncio.wait_for(side.closed, 30)
            with pytest.raises(NotFoundError):
                await AsyncOpenAI(base_url=url, api_key="sk-test").realtime.calls.hangup(call_id)
        finally:
            await side.close()
            await sdk.close()
    finally:
        for c in [*(c for c, _ in calls.values()), *extra]:
            await c.close()


async def test_a_full_worker_passes_sessions_on_a_killed_one_is_restarted_sigterm_ends_all(
    small_group: Group,
) -> None:
    group = small_group
    await asyncio.to_thread(lambda: group.url)  # every worker serves
    pid, private = await asyncio.to_thread(group.worker, 1)
    first = (await asyncio.to_thread(group.worker, 0))[1]
    # Worker 0 takes one session; full, it passes the next one on to worker 1; with both full, a 429.
    held = [Client(), Client()]
    try:
        assert owner(await held[0].connect(first, cs_session())) == 0
        assert owner(await held[1].connect(first, cs_session())) == 1
        refused = Client()
        held.append(refused)
        sdk = AsyncOpenAI(base_url=first, api_key="sk-test", max_retries=0)
        with pytest.raises(RateLimitError):
            await sdk.realtime.calls.create(sdp=await refused.offer(), session=cs_session())  # type: ignore[arg-type]
        await sdk.close()
    finally:
        for c in held:
            await c.close()
    mark = len(group.lines)
    os.kill(pid, signal.SIGKILL)
    restarted = await asyncio.to_thread(group.wait_line, r"emulator worker 1 restarted \(pid (\d+)\)", mark)
    new_pid = int(restarted.group(1))
    assert new_pid != pid and alive(new_pid)
    # The restarted worker serves on the same private port, and takes new sessions.
    client = Client()
    try:
        call_id = await client.connect(private, cs_session())
        assert owner(call_id) == 1
        await client.wait_for("session.created", within=30)
    finally:
        await client.close()
    # SIGTERM to the parent: every worker (and the parent) ends.
    workers = [new_pid, (await asyncio.to_thread(group.worker, 0))[0]]
    group.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(group.proc.wait, 60) == 0
    # The parent waits for its workers before it exits, so they are gone by now.
    assert not any(alive(p) for p in workers), f"workers left running: {workers}"


async def test_a_child_emulator_is_given_no_openai_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator needs no key: a child started for a batch or a soak (and its workers) never has it."""
    from voicebridge.batch.emulator_process import emulator_process

    monkeypatch.setenv("OPENAI_API_KEY", "test-value-never-for-the-emulator")  # not key-shaped: no secret scanner trips
    async with emulator_process([], tmp_path / "emulator.log", workers="2") as child:
        workers = children(child.pid)
        assert len(workers) == 2  # (their recognition processes are their children, not the parent's)
        for pid in [child.pid, *workers]:
            assert not any(v.startswith("OPENAI_API_KEY=") for v in environ(pid)), pid


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def environ(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")

"""`voicebridge emulator --workers 2`: two emulator processes behind one URL (emulator/workers.py, group.py).

A real parent process with its two workers, real WebRTC calls and WebSocket sessions made with the openai SDK.
Sessions land on both workers; a hang-up and a sideband WebSocket that reach the worker that does not own the call
still reach the one that does; an ephemeral key minted by one worker makes a call on another, and still does after
its minter was killed; a full worker passes every kind of new session on, and the client hears the API's 429 only
when both are full; /readyz answers for the group; a worker killed with SIGKILL is restarted and takes new sessions
on the same ports; one that cannot start again is given up on, and the group ends (status 1) when none is left;
SIGTERM to the parent ends every child. Waits are on the processes' output and on events, each bounded only to
catch a hang.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI, AuthenticationError, NotFoundError, RateLimitError

from tests.integration.conftest import Client, cs_session
from tests.integration.test_ws_emulator import WsClient
from voicebridge.emulator.limits import SESSIONS_PER_CORE, WORKER_SESSIONS_PER_CORE
from voicebridge.scenarios.model import BUILTIN_DIR

pytestmark = pytest.mark.integration

START_WITHIN_S = 90.0  # two workers importing aiortc, av and pocketsphinx at once on a loaded machine


@dataclass
class Group:
    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    eof: bool = False  # every line the group printed has been read

    def read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_line(self, pattern: str, start: int = 0, within: float = START_WITHIN_S) -> re.Match[str]:
        deadline = time.monotonic() + within
        with self.changed:
            while True:
                for line in self.lines[start:]:
                    if m := re.search(pattern, line):
                        return m
                left = deadline - time.monotonic()
                assert left > 0 and not self.eof, f"no line {pattern!r} in:\n" + "\n".join(self.lines)
                self.changed.wait(left)

    @property
    def url(self) -> str:
        return self.wait_line(r"serving the Realtime GA API at (\S+)").group(1)

    def worker(self, index: int, start: int = 0) -> tuple[int, str]:
        """(pid, private /v1 URL) of worker `index` as the parent announced it."""
        m = self.wait_line(rf"worker {index} pid (\d+), private (\S+)", start)
        return int(m.group(1)), m.group(2)


def start_group(*flags: str, **env: str) -> Iterator[Group]:  # stderr with stdout: the parent's log is checked
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
    # Unless told otherwise, a worker budgets a worker's sessions per core of its share, not a lone process's.
    for private in privates:
        capacity = (await get_json(f"{root(private)}/readyz?scope=worker"))[1]["capacity"]
        assert capacity["per_core"] == WORKER_SESSIONS_PER_CORE != SESSIONS_PER_CORE
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
            # An ephemeral key minted by worker 0 makes a call on worker 1 (the group's keys are shared), once.
            minted = await AsyncOpenAI(base_url=privates[0], api_key="sk-test").realtime.client_secrets.create(
                session={"type": "realtime", "model": "gpt-realtime", "instructions": "Minted on worker 0."}
            )
            assert minted.value.startswith("ek_")
            keyed = Client()
            extra.append(keyed)
            assert owner(await keyed.connect(other, api_key=minted.value)) == 1
            assert (await keyed.wait_for("session.created", within=30))["session"]["instructions"] == (
                "Minted on worker 0."
            )
            again = Client()
            extra.append(again)
            with pytest.raises(AuthenticationError, match="already been used"):
                await again.connect(privates[0], api_key=minted.value)
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


async def test_a_full_worker_passes_every_new_session_on_keys_outlive_a_killed_worker_sigterm_ends_all(
    small_group: Group,
) -> None:
    group = small_group
    await asyncio.to_thread(lambda: group.url)  # every worker serves
    pid, private = await asyncio.to_thread(group.worker, 1)
    first = (await asyncio.to_thread(group.worker, 0))[1]
    sdk = AsyncOpenAI(base_url=first, api_key="sk-test", max_retries=0)
    held: list[Client] = []
    try:
        held.append(Client())
        assert owner(await held[-1].connect(first, cs_session())) == 0
        # Full, worker 0 still mints (a key opens no session) and passes a call made with the key on to worker 1.
        minted = await sdk.realtime.client_secrets.create(session={"type": "realtime", "model": "gpt-realtime"})
        held.append(Client())
        keyed_id = await held[-1].connect(first, api_key=minted.value)
        assert owner(keyed_id) == 1
        # Both full: the group is not ready (each worker says why), and a new session of either kind gets the
        # API's 429 in its rate-limit shape.
        status, ready = await get_json(f"{root(first)}/readyz")
        assert status == 503 and not ready["ready"] and ready["failing"]["workers"]
        seen = [(w["index"], w["state"], w["sessions"]) for w in ready["workers"]]
        assert seen == [(0, "serving", 1), (1, "serving", 1)]
        assert all(not w["ready"] and "capacity" in w["failing"] for w in ready["workers"])
        held.append(Client())
        with pytest.raises(RateLimitError):
            await sdk.realtime.calls.create(sdp=await held[-1].offer(), session=cs_session())  # type: ignore[arg-type]
        status, headers, err = await refused_handshake(first)
        assert status == 429 and int(headers["Retry-After"]) > 0
        assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded")
        # Worker 1 free again: the group is ready, and a WebSocket session made on worker 0 lands on worker 1.
        await sdk.realtime.calls.hangup(keyed_id)
        status, ready = await get_json(f"{root(first)}/readyz")
        assert status == 200 and [w["ready"] for w in ready["workers"]] == [False, True]
        side = WsClient(await sdk.realtime.connect(model="gpt-realtime").enter())
        try:
            await side.wait_for("session.created", within=30)
            assert (await get_json(f"{root(private)}/readyz?scope=worker"))[1]["sessions"] == 1
        finally:
            await side.close()
    finally:
        for c in held:
            await c.close()
    # A key minted by worker 1 outlives it: after a SIGKILL and a restart, the new worker 1 makes its call.
    sdk1 = AsyncOpenAI(base_url=private, api_key="sk-test")
    minted = await sdk1.realtime.client_secrets.create(
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "Minted before the crash."}
    )
    await sdk1.close()
    mark = len(group.lines)
    os.kill(pid, signal.SIGKILL)
    restarted = await asyncio.to_thread(group.wait_line, r"emulator worker 1 restarted \(pid (\d+)\)", mark)
    new_pid = int(restarted.group(1))
    assert new_pid != pid and alive(new_pid)
    # The restarted worker serves on the same private port, and takes new sessions.
    client = Client()
    try:
        assert owner(await client.connect(private, api_key=minted.value)) == 1
        created = await client.wait_for("session.created", within=30)
        assert created["session"]["instructions"] == "Minted before the crash."
    finally:
        await client.close()
        await sdk.close()
    # SIGTERM to the parent: every worker (and the parent) ends.
    workers = [new_pid, (await asyncio.to_thread(group.worker, 0))[0]]
    group.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(group.proc.wait, 60) == 0
    # The parent waits for its workers before it exits, so they are gone by now.
    assert not any(alive(p) for p in workers), f"workers left running: {workers}"


async def test_a_worker_that_cannot_start_again_is_given_up_and_the_group_ends_with_the_last(tmp_path: Path) -> None:
    """Restarts that fail (here: the scenario file the workers load is gone) are not retried for ever: the worker
    is given up on, the other serves and /readyz says so; once none is left, the parent exits with status 1."""
    scenario = tmp_path / "late_order.toml"
    scenario.write_bytes((BUILTIN_DIR / "late_order.toml").read_bytes())
    with contextlib.contextmanager(start_group)(
        "--scenario", str(scenario), VOICEBRIDGE_EMULATOR_START_FAILURES="2"
    ) as group:
        url = await asyncio.to_thread(lambda: group.url)
        pids = [(await asyncio.to_thread(group.worker, i))[0] for i in range(2)]
        first = (await asyncio.to_thread(group.worker, 0))[1]
        scenario.unlink()
        mark = len(group.lines)
        os.kill(pids[1], signal.SIGKILL)
        await asyncio.to_thread(group.wait_line, r"emulator worker 1 failed to start 2 times in a row.*giving up", mark)
        assert any("cannot read" in line for line in group.lines[mark:])  # the worker's own reason, passed on
        status, ready = await get_json(f"{root(first)}/readyz")
        assert status == 200 and ready["ready"]
        gave_up = ready["workers"][1]
        assert gave_up["state"] == "gave_up" and "failed to start 2 times" in gave_up["failing"]["worker"]
        sdk = AsyncOpenAI(base_url=first, api_key="sk-test", max_retries=0)
        with pytest.raises(NotFoundError):  # a call of worker 1's is gone with it: 404 at once, nothing waits
            await sdk.realtime.calls.hangup("rtc_" + "a" * 24 + "_w1")
        await sdk.close()
        status, health = await get_json(f"{root(url)}/healthz")
        assert status == 200 and [w["state"] for w in health["workers"]] == ["serving", "gave_up"]
        # Its socket closed, every new connection reaches worker 0 (none waits for the worker given up on).
        for _ in range(4):
            assert (await get_json(f"{root(url)}/readyz?scope=worker"))[1]["worker"]["index"] == 0
        os.kill(pids[0], signal.SIGKILL)
        assert await asyncio.to_thread(group.proc.wait, START_WITHIN_S) == 1
        await asyncio.to_thread(group.wait_line, r"every worker failed to start 2 times in a row", mark)


def root(base_url: str) -> str:
    """http://host:port of a .../v1 base URL (/readyz and /healthz are not the API's)."""
    return base_url.removesuffix("/v1")


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """A GET on a connection of its own (so the kernel picks a worker for it), bounded to catch a hang."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http, http.get(url) as r:
        return r.status, await r.json()


async def refused_handshake(base_url: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A WebSocket session asked for with a plain GET: the refused handshake's status, headers and API error."""
    headers = {
        "Authorization": "Bearer sk-test", "Connection": "Upgrade", "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.get(f"{base_url}/realtime?model=gpt-realtime", headers=headers) as r,
    ):
        return r.status, dict(r.headers), (await r.json())["error"]


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

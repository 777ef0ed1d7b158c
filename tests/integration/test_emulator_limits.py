"""The emulator gives up on peers that never connect, bounds its sessions, and degrades to clear errors when it
runs out of file descriptors (emulator/limits.py):

* a WebRTC session whose peer never connects is closed after `connect_timeout_s`; a connected one is not;
* sessions per key and in all are bounded, also under concurrent offers, with the API's 429 rate-limit shape
  (the SDK raises its RateLimitError); an `ek_` key counts for the key that minted it; WebSocket sessions count;
* with RLIMIT_NOFILE = 64 (a child process), 70 offers from vanished peers get 201s and then 503s in the API's
  shape, never an answer without candidates; once their sessions time out a real client connects again; while
  idle connections hold every descriptor, the log gets a warning, not a traceback per failed accept();
* a client that disconnects in the middle of its request is one INFO line, not an ERROR with a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiortc import RTCPeerConnection
from openai import AsyncOpenAI

from tests.integration.conftest import Client, cs_session
from voicebridge.emulator.limits import ACCEPT_WARN_EVERY_S, Limits
from voicebridge.emulator.server import Emulator

pytestmark = pytest.mark.integration
KEY_A = "sk-" + "limits-a"
KEY_B = "sk-" + "limits-b"
REPO = Path(__file__).resolve().parents[2]
LONG_S = 120.0  # a connect time-out no live peer can run out of, however loaded the machine
SHORT_S = 3.0  # the connect time-out of peers that never connect (certain to run out)


async def vanished_offer() -> str:
    """An offer from a peer that is gone by the time anyone answers: its candidates lead nowhere."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


@pytest.fixture
async def limited() -> AsyncIterator[Emulator]:
    emu = Emulator(limits=Limits(connect_timeout_s=60.0, max_sessions=3, max_sessions_per_key=2))
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


async def create(emu: Emulator, key: str, sdp: str) -> Any:
    sdk = AsyncOpenAI(base_url=emu.base_url, api_key=key, max_retries=0)
    try:
        return await sdk.realtime.calls.with_raw_response.create(sdp=sdp)
    finally:
        await sdk.close()


def assert_rate_limited(e: BaseException, what: str) -> None:
    assert isinstance(e, openai.RateLimitError), repr(e)
    assert e.status_code == 429 and e.response.headers.get("retry-after")
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    assert (err["type"], err["code"]) == ("requests", "rate_limit_exceeded"), err
    assert f"on {what}:" in err["message"], err["message"]


async def test_a_peer_that_never_connects_is_closed_after_the_timeout(client: Client) -> None:
    # The connect time-out is read when a session is made: the real peer gets a long one (its connecting is not
    # a race against the clock), the vanished one, made once the real one is connected, a short one.
    emu = Emulator(limits=Limits(connect_timeout_s=LONG_S))
    await emu.start()
    try:
        await client.connect(emu.base_url, cs_session())  # a real peer: connects, then gets session.created
        await client.wait_for("session.created")
        live = next(iter(emu.sessions.values()))
        assert live.peer_connected.is_set()
        emu.limits = dataclasses.replace(emu.limits, connect_timeout_s=SHORT_S)
        raw = await create(emu, KEY_A, await vanished_offer())
        ghost = emu.sessions[raw.headers["location"].rsplit("/", 1)[-1]]
        await asyncio.wait_for(ghost.closed.wait(), 30)
        assert ghost.close_reason == f"not connected within {SHORT_S:g} s"
        assert ghost.id not in emu.sessions and len(emu.counter) == 1
        # The connected session is left alone: its peer is still connected.
        assert not live.closed.is_set() and live.peer_connected.is_set()
    finally:
        await emu.stop()


async def test_sessions_per_key_and_in_all_are_bounded_under_concurrent_offers(limited: Emulator) -> None:
    offers = [await vanished_offer() for _ in range(5)]
    results = await asyncio.gather(*(create(limited, KEY_A, o) for o in offers), return_exceptions=True)
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 2, results
    for e in results:
        if isinstance(e, BaseException):
            assert_rate_limited(e, "concurrent sessions per API key")
    # A client secret minted with key A creates sessions that count for A.
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            limited.base_url + "/realtime/client_secrets", json={}, headers={"Authorization": f"Bearer {KEY_A}"}
        )
        ek = (await r.json())["value"]
    with pytest.raises(openai.RateLimitError) as info:
        await create(limited, ek, offers[0])
    assert_rate_limited(info.value, "concurrent sessions per API key")
    # Key B: one more session fits in all (3), the next ones do not.
    results = await asyncio.gather(*(create(limited, KEY_B, o) for o in offers[:3]), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    for e in results:
        if isinstance(e, BaseException):
            assert_rate_limited(e, "concurrent sessions")
    # A WebSocket session counts as well: its handshake is refused with the same 429.
    sdk = AsyncOpenAI(base_url=limited.base_url, api_key=KEY_B, max_retries=0)
    with pytest.raises(Exception) as ws_info:
        async with sdk.realtime.connect(model="gpt-realtime"):
            pass
    await sdk.close()
    assert "429" in str(ws_info.value)
    # Hanging one up frees its seat.
    call_id = made[0].headers["location"].rsplit("/", 1)[-1]
    sdk = AsyncOpenAI(base_url=limited.base_url, api_key=KEY_A, max_retries=0)
    await sdk.realtime.calls.hangup(call_id)
    await sdk.close()
    assert (await create(limited, KEY_A, offers[1])).status_code == 201
    assert len(limited.counter) == len(limited.sessions) == 3


CHILD = """
import asyncio, dataclasses, logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from voicebridge.emulator.server import Emulator
from voicebridge.emulator.limits import ACCEPT_WARN_EVERY_S, Limits
from voicebridge.observability.logs import CHATTY_LIBRARIES
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
for name in CHATTY_LIBRARIES:
    logging.getLogger(name).setLevel(logging.WARNING)
async def main():
    emu = Emulator(limits=Limits(connect_timeout_s=float(sys.argv[1])))
    print(await emu.start("127.0.0.1", 0), flush=True)
    loop = asyncio.get_running_loop()
    # Each line on stdin is a new connect time-out for the sessions made from then on; acknowledged on stdout.
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        emu.limits = dataclasses.replace(emu.limits, connect_timeout_s=float(line))
        print("connect_timeout_s", emu.limits.connect_timeout_s, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class ChildLog:
    """The child's stderr, read line by line as it comes; a test waits for lines, it does not sleep."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._changed.set()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, times: int = 1, within: float = 60.0) -> None:
        async def until() -> None:
            while self.count(text) < times:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), within)


async def test_out_of_file_descriptors_gives_clear_errors_not_a_log_flood(client: Client) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "server")}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, f"{SHORT_S:g}", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    log = ChildLog(child.stderr)
    idle: list[asyncio.StreamWriter] = []
    # The warnings are throttled to one per ACCEPT_WARN_EVERY_S: how many may come depends on how long each
    # phase took on this machine, measured here (it is "one per interval", not "one per refused offer").
    offers_s = idle_s = 0.0
    try:
        base_url = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        statuses: dict[int, int] = {}
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http:
            offer = await vanished_offer()
            headers = {"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/sdp"}
            for _ in range(70):
                async with http.post(base_url + "/realtime/calls", data=offer, headers=headers) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    if r.status == 201:
                        assert "a=candidate:" in await r.text()  # never an answer nobody can reach
                    else:
                        assert r.status == 503 and r.headers.get("Retry-After")
                        err = (await r.json())["error"]
                        assert err["type"] == "server_error" and "file descriptors" in err["message"], err
        offers_s = time.monotonic() - t0
        assert set(statuses) == {201, 503} and statuses[201] + statuses[503] == 70, statuses
        # The vanished peers' sessions time out and free their descriptors; then a real client connects again,
        # with all the time it needs (the sessions made from now on get the long connect time-out).
        await log.wait_for(f"not connected within {SHORT_S:g} s", statuses[201])
        child.stdin.write(f"{LONG_S:g}\n".encode())
        await child.stdin.drain()
        ack = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().split()
        assert ack == ["connect_timeout_s", str(LONG_S)], ack
        await client.connect(base_url, cs_session())
        await client.wait_for("session.created")
        await client.close()
        # Idle connections take every descriptor left: accept() fails, and the log says so once, calmly.
        port = int(base_url.split(":")[2].split("/")[0])
        t1 = time.monotonic()
        for _ in range(80):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            idle.append(writer)
        await log.wait_for("cannot accept connections")
    finally:
        for w in idle:
            w.close()
        child.terminate()
        await child.wait()
        if idle:
            idle_s = time.monotonic() - t1
        await asyncio.wait_for(log._task, 30)
    text = "\n".join(log.lines)
    assert "Traceback" not in text, text[-3000:]
    assert 1 <= log.count("cannot accept connections") <= 1 + idle_s // ACCEPT_WARN_EVERY_S, idle_s
    # One line per interval, not one per refused offer (there were dozens).
    assert 1 <= log.count("offers refused (503)") <= 1 + offers_s // ACCEPT_WARN_EVERY_S, (offers_s, statuses)
    assert json.dumps(statuses)  # the figures, for the report: printed by -s
    print("fd-limit 64, 70 vanished offers:", statuses, "child log lines:", len(log.lines))


class Records(logging.Handler):
    """Log records as they come, with an event per record so a test waits instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    async def wait_for(self, text: str) -> None:
        while not any(text in r.getMessage() for r in self.records):
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)


async def test_a_client_gone_mid_request_is_one_info_line(emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    records = Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        port = int(emulator.base_url.split(":")[2].split("/")[0])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/realtime/calls HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-x\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 5000\r\n\r\nv=0\r\n"
        )
        await writer.drain()
        writer.transport.abort()  # gone before the body it announced
        await records.wait_for("the client disconnected before its request was read")
    finally:
        root.removeHandler(records)
    assert [r.levelname for r in records.records if r.levelno >= logging.WARNING] == []
    assert all(r.exc_info is None for r in records.records)

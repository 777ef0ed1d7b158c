"""`voicebridge serve --workers 2 --redis URL` as real processes on a real redis-server, with real calls:

placement on both workers, every call-scoped request (REST, the events WebSocket, a browser's join whose media goes
to the owner's own sockets) answered by the owner, a worker
answering nobody but a front door, kill -9 of one worker recording its call `worker_lost` while the other's go on
and new calls go there, a browser's join of the lost call refused with 410, then Redis stopped: /readyz fails and new
calls get 503 while the live call goes on, and SIGTERM drains it (`shutdown`).

One cluster proves all of it (each worker loads an emulator, so starting clusters is the expensive part). Waits are
on state changes; their bounds only catch a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from voicebridge.signaling.security import ADMIN_TOKEN_ENV

HANG_S = 90.0  # a bound that only catches a hang: a loaded machine just waits longer within it
CALL = {"scenario": "late_order"}  # a long call: still live while the test does its work


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    async def poll() -> Any:
        while True:
            if found := await check():
                return found
            await asyncio.sleep(0.1)  # polling the API for a state change; bounded by HANG_S

    try:
        return await asyncio.wait_for(poll(), HANG_S)
    except TimeoutError:
        raise AssertionError(f"waited {HANG_S:g} s for {what}") from None


class Listener:
    """A browser listening to a call (web/join.js's offer: two receive-only audio m-lines), counting frames."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for _ in range(2):
            self.pc.addTransceiver("audio", direction="recvonly")
        self.frames = 0
        self._more = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", lambda track: self._readers.append(asyncio.ensure_future(self._read(track))))

    async def _read(self, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames += 1
                self._more.set()

    async def frames_beyond(self, n: int) -> None:
        while self.frames <= n:
            self._more.clear()
            await self._more.wait()

    async def close(self) -> None:
        await self.pc.close()
        for r in self._readers:
            r.cancel()


def _descendants(pid: int) -> list[int]:
    """Every process under `pid` (its children's children too), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def _udp_ports(pid: int) -> set[int]:
    """The local ports of the UDP sockets process `pid` holds (its fds' socket inodes, looked up in /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_two_workers_place_route_lose_and_drain_calls(redis_server: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (ADMIN_TOKEN_ENV, "OPENAI_API_KEY")}
    env["VOICEBRIDGE_REDIS_URL"] = redis_server.url  # in the environment: a password on argv shows in `ps`
    log = tmp_path / "serve.log"  # the processes' logs, for a failure's message
    errors = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicebridge.cli", "serve", "--port", "0", "--workers", "2",
        "--artifacts", str(tmp_path / "calls"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=errors,
    )  # fmt: skip
    out: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        assert proc.stdout is not None
        stdout = proc.stdout

        async def console() -> str:
            while True:
                line = (await stdout.readline()).decode()
                assert line, f"serve exited: {out}"
                out.append(line)
                if match := re.search(r"console at (http://127\.0\.0\.1:\d+)/", line):
                    return match.group(1)

        base = await asyncio.wait_for(console(), HANG_S)

        async def keep_reading() -> None:  # the workers print to the same pipe: never let it fill
            while line := await stdout.readline():
                out.append(line.decode())

        drain = asyncio.ensure_future(keep_reading())
        async with aiohttp.ClientSession(base) as http:

            async def get(path: str) -> tuple[int, Any]:
                async with http.get(path) as r:
                    return r.status, await r.json()

            status, body = await get("/api/workers")
            assert status == 200 and len(body["workers"]) == 2, body
            workers = {w["id"]: w for w in body["workers"]}
            assert all(set(w) >= {"id", "host", "pid", "calls", "heartbeat_age_s"} for w in workers.values())

            calls = []
            for _ in range(2):
                async with http.post("/api/calls", json=CALL) as r:
                    assert r.status == 201, await r.text()
                    calls.append(await r.json())
            assert {c["worker"] for c in calls} == set(workers)  # one on each: the least loaded gets the next
            lost, kept = calls
            status, listed = await get("/api/calls")
            assert {(c["id"], c["worker"]) for c in listed["calls"]} == {(c["id"], c["worker"]) for c in calls}

            # Routed to the owner: only the owning worker knows the call's legs (another would say 404).
            for c in calls:
                status, detail = await get(f"/api/calls/{c['id']}")
                assert status == 200 and detail["worker"] == c["worker"] and "legs" in detail, detail
            async with http.get(f"/api/calls/{kept['id']}/timeline.svg") as r:  # the owner's headers come along
                assert r.status == 200 and r.content_type == "image/svg+xml"
                assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            status, health = await get("/healthz")
            assert health["backend"] == "emulator" and health["workers"] == 2, health
            # A worker answers only a front door (no cluster secret: 403), and its health probes anyone.
            owner = workers[lost["worker"]]
            async with http.get(f"http://{owner['host']}:{owner['port']}/api/calls") as r:
                assert r.status == 403 and (await r.json())["error"]["type"] == "forbidden"

            # A browser joins the other call through the front door: the SDP answer is its worker's, and so are
            # the ICE candidates (UDP sockets of that worker process): media goes there directly.
            async with http.post(f"/api/calls/{kept['id']}/tokens", json={"role": "listen"}) as r:
                assert r.status == 201, await r.text()
                token = (await r.json())["token"]
            listener = Listener()
            await listener.pc.setLocalDescription(await listener.pc.createOffer())
            async with http.post(
                f"/api/calls/{kept['id']}/join",
                data=listener.pc.localDescription.sdp,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
            ) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
            await listener.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            candidates = re.findall(r"a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", answer)
            assert candidates and {host for host, _ in candidates} == {"127.0.0.1"}, answer
            assert {int(port) for _, port in candidates} <= _udp_ports(workers[kept["worker"]]["pid"])
            await asyncio.wait_for(listener.frames_beyond(0), HANG_S)

            async with http.ws_connect(f"/api/calls/{lost['id']}/events") as ws:
                hello = await ws.receive_json(timeout=HANG_S)
                assert hello["kind"] == "hello" and hello["data"]["call_id"] == lost["id"]

                async def talking() -> None:
                    while (await ws.receive_json())["kind"] != "turn":
                        pass

                await asyncio.wait_for(talking(), HANG_S)  # a live call, relayed message for message

                # The worker dies with its helper processes (the emulator's recognizers), as a lost machine would:
                # orphans would keep serve's stdout open, and outlive the test.
                helpers = _descendants(owner["pid"])
                os.kill(owner["pid"], signal.SIGKILL)
                for pid in helpers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

                async def worker_lost() -> dict[str, Any] | None:
                    status, record = await get(f"/api/calls/{lost['id']}")
                    return record if status == 200 and record["state"] == "ended" else None

                record = await _until(worker_lost, "the killed worker's call to be recorded ended")
                # The relayed stream ends too (the worker's side closed with it).
                async for _ in ws:
                    pass
            assert record["end_reason"] == "worker_lost" and record["worker"] == owner["id"], record
            async with http.post(f"/api/calls/{lost['id']}/tokens", json={"role": "listen"}) as r:
                assert r.status == 410 and (await r.json())["error"]["type"] == "worker_lost"
            async with http.post(
                f"/api/calls/{lost['id']}/join", data="v=0", headers={"Content-Type": "application/sdp"}
            ) as r:
                assert r.status == 410 and "worker_lost" in (await r.json())["error"]["message"]
            status, body = await get("/api/workers")
            assert [w["id"] for w in body["workers"]] == [kept["worker"]]

            status, other = await get(f"/api/calls/{kept['id']}")  # the other worker's call goes on
            assert other["end_reason"] != "worker_lost", other
            # And its media still flows, unless it has reached its own end meanwhile (the caller's goodbye).
            heard = listener.frames

            async def ended_normally() -> dict[str, Any] | None:
                _, record = await get(f"/api/calls/{kept['id']}")
                return record if record["state"] == "ended" else None

            flowing = asyncio.ensure_future(listener.frames_beyond(heard))
            ending = asyncio.ensure_future(_until(ended_normally, "the other call's media or its end"))
            done, _ = await asyncio.wait({flowing, ending}, timeout=HANG_S, return_when=asyncio.FIRST_COMPLETED)
            for task in (flowing, ending):
                task.cancel()
            assert done, "the other worker's call neither carried media nor ended"
            if ending in done:
                assert ending.result()["end_reason"] == "caller_hangup", ending.result()
            await listener.close()
            async with http.post("/api/calls", json=CALL) as r:
                assert r.status == 201, await r.text()
                fresh = await r.json()
            assert fresh["worker"] == kept["worker"]  # new calls go to the live worker

            # Redis gone: not ready, no new calls, and the live calls go on (seen on the worker itself).
            secret = redis_server.client().get("voicebridge:secret")
            redis_server.stop()
            status, ready = await get("/readyz")
            assert status == 503 and "redis" in ready["failing"], ready
            async with http.post("/api/calls", json=CALL) as r:
                assert r.status == 503 and (await r.json())["error"]["type"] == "redis_unavailable"
            alive = workers[kept["worker"]]
            async with http.get(
                f"http://{alive['host']}:{alive['port']}/api/calls/{fresh['id']}",
                headers={"X-Voicebridge-Cluster": secret},
            ) as r:
                going = await r.json()
            assert r.status == 200 and going["end_reason"] in (None, "caller_hangup"), going

        proc.send_signal(signal.SIGTERM)  # the workers drain: their calls end `shutdown`, as in one process
        try:
            status = await asyncio.wait_for(proc.wait(), HANG_S)
        except TimeoutError:
            raise AssertionError(f"serve did not exit: {''.join(out)}{log.read_text()[-4000:]}") from None
        assert status == 0, out
        summary = json.loads((tmp_path / "calls" / fresh["id"] / "summary.json").read_text())
        assert summary["end_reason"] in ("shutdown", "caller_hangup"), summary
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        errors.close()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

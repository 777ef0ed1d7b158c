"""One worker of `voicebridge emulator --workers N` (workers.py starts them): which worker owns a call, how a
request about it that reached another worker is passed on to its owner, where a full worker passes a new session,
and /readyz for the whole group.

Every worker is a whole emulator. The kernel spreads new connections over the workers (SO_REUSEPORT: one
listening socket per worker on the same public port, workers.py says why), so a request about a session (its
hang-up, its sideband WebSocket) may reach a worker that does not hold it. So a call id a worker makes carries its
index (`rtc_<24 characters>_w1`), and a worker that gets a request about another worker's call passes it on,
untouched, to that worker's private loopback port: plain HTTP as a request of its own (status, headers and body
back as they came), a WebSocket as a second WebSocket pumped both ways.

Ephemeral keys are not any worker's: they are kept in the group's SQLite file (keys.py), so whichever worker a call
made with one reaches makes it, and a worker that is restarted still knows them. The same file holds the parent's
view of each worker (roster.py).

A worker that is full passes a new session (a WebRTC call or a WebSocket session, with an API key or an
ephemeral key) on to the next serving worker, at most once around the group (the count in a header): connections
are spread evenly, not by load, so one worker may fill first. Minting an ephemeral key opens no session, so it is
never passed on or refused for capacity. A worker that is restarted has forgotten its calls (a 404), like an
emulator that was restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from voicebridge.edge.websocket import LimitedWebSocketResponse

from .roster import SERVING, STARTING, WorkerState
from .schema import NO_SUCH_CALL, ApiError

log = logging.getLogger(__name__)

GROUP_ENV = "VOICEBRIDGE_EMULATOR_GROUP"  # set by workers.py for each worker: JSON, see Group.from_env
WORKER_READY = "voicebridge emulator: ready, worker "  # a worker's line on stdout once it serves (workers.py)
_OWNER = re.compile(r"_w(\d{1,4})$")
# Hop-by-hop headers (RFC 9110 7.6.1) and what aiohttp recomputes: never passed on by the proxy.
_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length",
}
# How many workers a new session was passed on by because they were full (a worker passes on at most to every
# other worker once, then answers itself).
PASSED_ON = "X-Voicebridge-Passed-On"
_NOT_PASSED = _HOP | {PASSED_ON.lower()}  # the proxy sets its own count
PROXY_TIMEOUT_S = 60.0  # a restarting owner accepts after its start-up (seconds); a hang-up's SDK waits 600 s
READYZ_TIMEOUT_S = 2.0  # a serving worker that does not answer its /readyz in this long is reported as such
WORKER_SCOPE = "worker"  # /readyz?scope=worker: this worker alone (what the group's /readyz asks each worker)


@dataclass(frozen=True)
class Group:
    """This worker's place in the group: its index, the group's size, each worker's private port, the parent's pid,
    the listening sockets it inherited (file descriptors) and the group's SQLite file (keys.py, roster.py)."""

    index: int
    size: int
    private_ports: tuple[int, ...]
    parent: int
    public_fd: int
    private_fd: int
    state: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Group | None:
        raw = (os.environ if env is None else env).get(GROUP_ENV, "")
        if not raw:
            return None
        d = json.loads(raw)
        return cls(
            index=int(d["index"]), size=int(d["size"]), private_ports=tuple(int(p) for p in d["private_ports"]),
            parent=int(d["parent"]), public_fd=int(d["public_fd"]), private_fd=int(d["private_fd"]),
            state=str(d["state"]),
        )

    def to_env(self) -> str:
        return json.dumps(
            {"index": self.index, "size": self.size, "private_ports": list(self.private_ports),
             "parent": self.parent, "public_fd": self.public_fd, "private_fd": self.private_fd,
             "state": self.state}
        )

    def tag(self, value: str) -> str:
        """An id made here, carrying this worker's index."""
        return f"{value}_w{self.index}"

    def owner(self, call_id: str) -> int | None:
        """The index of another worker that owns this call, or None (this one, or no worker's id: then it is
        answered here, e.g. 404 for an unknown call)."""
        m = _OWNER.search(call_id)
        if m is None:
            return None
        index = int(m.group(1))
        return index if index != self.index and index < self.size else None

    def private_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.private_ports[index]}"

    def pass_on_to(self, request: web.Request, serving: set[int]) -> tuple[int, int] | None:
        """Where a full worker passes this new session on to: the next worker after it that serves (`serving`, the
        roster's) and the count of workers that passed it on, for PASSED_ON; None when every serving worker has
        been asked already (answer it here, with a 429)."""
        hops = self.passed_on(request)
        if hops >= len(serving | {self.index}) - 1:
            return None
        for step in range(1, self.size):
            index = (self.index + step) % self.size
            if index in serving:
                return index, hops + 1
        return None

    def passed_on(self, request: web.Request) -> int:
        """How many full workers passed this new session on: PASSED_ON, counted only on a request that came in on
        this worker's private port (from another worker); a client's own header on the public port means 0."""
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if not isinstance(sockname, tuple) or sockname[1] != self.private_ports[self.index]:
            return 0
        text = request.headers.get(PASSED_ON, "0")
        return int(text) if text.isascii() and text.isdigit() and len(text) < 4 else 0


class Forwarder:
    """Passes requests on to the worker that owns them (one HTTP client for the worker's lifetime)."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self._client: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S), auto_decompress=False
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def http(self, request: web.Request, owner: int, passed_on: int = 0) -> web.Response:
        """The request as it came, answered by worker `owner`: its status, headers and body. `passed_on`: a new
        session passed on by that many full workers (PASSED_ON)."""
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_PASSED}
        if passed_on:
            headers[PASSED_ON] = str(passed_on)
        url = self.group.private_url(owner) + request.path_qs
        try:
            async with self._session().request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as r:
                data = await r.read()
                out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP and k.lower() != "date"}
                return web.Response(status=r.status, body=data, headers=out)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _unreachable(owner, e) from None

    async def readiness(self, own: dict[str, Any], roster: list[WorkerState]) -> dict[str, Any]:
        """/readyz for the group: `ready` while any worker would take a new session, `workers` each one's state
        (the parent's view, roster.py) and, for those that serve, its own /readyz (`own`: this worker's)."""
        states = {w.index: w for w in roster}

        async def one(index: int) -> dict[str, Any]:
            w = states.get(index)
            entry: dict[str, Any] = {"index": index, "state": w.state if w else STARTING, "pid": w.pid if w else 0}
            if index == self.group.index:  # it answers: it serves, whatever the parent has noted yet
                return {**entry, "state": SERVING, "pid": os.getpid(), **_readiness_of(own)}
            if w is None or w.state != SERVING:
                return {**entry, "ready": False, "failing": {"worker": w.detail if w and w.detail else entry["state"]}}
            url = f"{self.group.private_url(index)}/readyz?scope={WORKER_SCOPE}"
            try:
                async with self._session().get(url, timeout=aiohttp.ClientTimeout(total=READYZ_TIMEOUT_S)) as r:
                    return {**entry, **_readiness_of(await r.json())}
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                why = f"serving, but its /readyz did not answer: {e or type(e).__name__}"
                return {**entry, "ready": False, "failing": {"worker": why}}

        workers = await asyncio.gather(*(one(i) for i in range(self.group.size)))
        ready = any(w["ready"] for w in workers)
        failing = {} if ready else {"workers": "no worker would take a new session: " + "; ".join(
            f"worker {w['index']}: {', '.join(w['failing'].values())}" for w in workers
        )}  # fmt: skip
        return {
            "ready": ready, "failing": failing, "sessions": sum(int(w.get("sessions", 0)) for w in workers),
            "workers": workers, **group_status(self.group),
        }

    async def websocket(
        self, request: web.Request, owner: int, max_msg_size: int, passed_on: int = 0
    ) -> web.StreamResponse:
        """A WebSocket to worker `owner` with the request's headers, and one to the client, pumped both ways
        (text, binary and the close code) until either side closes. A refused handshake is the same status
        here (404 for an unknown call, as the owner said; 429 when every worker is full; other refusals name
        the status). `passed_on`: as for `http`."""
        headers = {
            k: v for k, v in request.headers.items()
            if k.lower() not in _NOT_PASSED and not k.lower().startswith("sec-websocket-")
        }
        if passed_on:
            headers[PASSED_ON] = str(passed_on)
        url = self.group.private_url(owner) + request.path_qs
        try:
            upstream = await self._session().ws_connect(url, headers=headers, max_msg_size=0, autoping=True)
        except aiohttp.WSServerHandshakeError as e:
            raise _refused_handshake(e) from None
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _unreachable(owner, e) from None
        client = LimitedWebSocketResponse(max_msg_size=max_msg_size, autoping=True)
        try:
            await client.prepare(request)
            await _pump(client, upstream)
        finally:
            await upstream.close()
            await client.close()
        return client


_Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """The owner's events to the client and the client's to the owner, until either side closes."""
    tasks = [asyncio.ensure_future(_copy(upstream, client)), asyncio.ensure_future(_copy(client, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await t


async def _copy(src: _Socket, dst: _Socket) -> None:
    """Every text and binary message of `src` to `dst`, then `src`'s close code (1000 when it gave none)."""
    async for msg in src:
        if msg.type == WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
    await dst.close(code=src.close_code or 1000)


def _readiness_of(body: dict[str, Any]) -> dict[str, Any]:
    """What the group's /readyz shows of one worker's own."""
    return {
        "ready": bool(body.get("ready")), "failing": dict(body.get("failing") or {}),
        "sessions": int(body.get("sessions") or 0), "capacity": body.get("capacity"),
    }


def _refused_handshake(e: aiohttp.WSServerHandshakeError) -> ApiError:
    headers = {"Retry-After": e.headers["Retry-After"]} if e.headers and "Retry-After" in e.headers else None
    if e.status == 404:
        return ApiError(404, NO_SUCH_CALL, code="call_id_not_found", param="call_id")
    if e.status == 401:
        return ApiError(401, "Ephemeral key is expired, unknown or already used.", code="invalid_api_key")
    if e.status == 429:
        retry = f" Please try again in {headers['Retry-After']}s." if headers else " Please try again later."
        return ApiError(
            429, "Rate limit reached for gpt-realtime on concurrent sessions: every worker of this emulator is at "
            "capacity or at its session limit." + retry, type_="requests", code="rate_limit_exceeded",
            headers=headers,
        )
    return ApiError(e.status, f"The worker that owns this session refused the WebSocket (HTTP {e.status}).")


def _unreachable(owner: int, e: BaseException) -> ApiError:
    log.warning("emulator worker %d did not answer a request passed on to it: %s", owner, e or type(e).__name__)
    return ApiError(
        503, f"The emulator worker that owns this session is not answering (worker {owner}); please try again.",
        type_="server_error", headers={"Retry-After": "2"},
    )


def owned_elsewhere(group: Group | None, call_id: str) -> int | None:
    """The other worker that owns this call, or None."""
    return group.owner(call_id) if group is not None else None


def group_status(group: Group | None) -> dict[str, Any]:
    return {} if group is None else {"worker": {"index": group.index, "workers": group.size, "pid": os.getpid()}}

"""One worker of `voicebridge emulator --workers N` (workers.py starts them): which worker owns a call or an
ephemeral key, and how a request about it that reached another worker is passed on to its owner.

Every worker is a whole emulator. The kernel spreads new connections over the workers (SO_REUSEPORT: one
listening socket per worker on the same public port, workers.py says why), so a request about a session (its
hang-up, its sideband WebSocket) may reach a worker that does not hold it. So an id a worker makes carries its
index (`rtc_<24 characters>_w1`, `ek_<32 characters>_w1`), and a worker that gets a request about another worker's
call or key passes it on, untouched, to that worker's private loopback port: plain HTTP as a request of its own
(status, headers and body back as they came), a WebSocket as a second WebSocket pumped both ways.

A worker that is full passes a new call made with an API key on to the next worker (at most once around the
group, the count in a header): connections are spread evenly, not by load, so one worker may fill first.

Ephemeral keys stay where they were minted, and a call made with one is made by the worker that minted it (the
request is passed on like a hang-up): the key is good for one call, which only its minter can tell without shared
state, and the session it was minted for (instructions, tools: up to a MiB) could not ride inside the key, a
header of at most 8 KiB. A worker that is restarted has forgotten its keys (a 401, as for an unknown key) and its
calls (a 404), like an emulator that was restarted.
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
PROXY_TIMEOUT_S = 60.0  # a restarting owner accepts after its start-up (seconds); a hang-up's SDK waits 600 s


@dataclass(frozen=True)
class Group:
    """This worker's place in the group: its index, the group's size, each worker's private port, the parent's pid
    and the listening sockets it inherited (file descriptors)."""

    index: int
    size: int
    private_ports: tuple[int, ...]
    parent: int
    public_fd: int
    private_fd: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Group | None:
        raw = (os.environ if env is None else env).get(GROUP_ENV, "")
        if not raw:
            return None
        d = json.loads(raw)
        return cls(
            index=int(d["index"]), size=int(d["size"]), private_ports=tuple(int(p) for p in d["private_ports"]),
            parent=int(d["parent"]), public_fd=int(d["public_fd"]), private_fd=int(d["private_fd"]),
        )

    def to_env(self) -> str:
        return json.dumps(
            {"index": self.index, "size": self.size, "private_ports": list(self.private_ports),
             "parent": self.parent, "public_fd": self.public_fd, "private_fd": self.private_fd}
        )

    def tag(self, value: str) -> str:
        """An id made here, carrying this worker's index."""
        return f"{value}_w{self.index}"

    def owner(self, value: str) -> int | None:
        """The index of another worker that owns this id, or None (this one, or no worker's id: then it is
        answered here, e.g. 404 for an unknown call)."""
        m = _OWNER.search(value)
        if m is None:
            return None
        index = int(m.group(1))
        return index if index != self.index and index < self.size else None

    def private_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.private_ports[index]}"


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
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP and k != PASSED_ON}
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

    async def websocket(self, request: web.Request, owner: int, max_msg_size: int) -> web.StreamResponse:
        """A WebSocket to worker `owner` with the request's headers, and one to the client, pumped both ways
        (text, binary and the close code) until either side closes. A refused handshake is the same status
        here (404 for an unknown call, as the owner said; other refusals name the status)."""
        headers = {
            k: v for k, v in request.headers.items()
            if k.lower() not in _HOP and not k.lower().startswith("sec-websocket-")
        }
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


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    async def down() -> None:  # the owner's events to the client
        async for msg in upstream:
            if msg.type == WSMsgType.TEXT:
                await client.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await client.send_bytes(msg.data)
        await client.close(code=upstream.close_code or 1000)

    async def up() -> None:  # the client's events to the owner
        async for msg in client:
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
        await upstream.close(code=client.close_code or 1000)

    tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await t


def _refused_handshake(e: aiohttp.WSServerHandshakeError) -> ApiError:
    headers = {"Retry-After": e.headers["Retry-After"]} if e.headers and "Retry-After" in e.headers else None
    if e.status == 404:
        return ApiError(404, NO_SUCH_CALL, code="call_id_not_found", param="call_id")
    if e.status == 401:
        return ApiError(401, "Ephemeral key is expired, unknown or already used.", code="invalid_api_key")
    if e.status == 429:
        return ApiError(
            429, "Rate limit reached for gpt-realtime on concurrent sessions: the worker that owns this key is "
            "at capacity. Please try again later.", type_="requests", code="rate_limit_exceeded", headers=headers,
        )
    return ApiError(e.status, f"The worker that owns this session refused the WebSocket (HTTP {e.status}).")


def _unreachable(owner: int, e: BaseException) -> ApiError:
    log.warning("emulator worker %d did not answer a request passed on to it: %s", owner, e or type(e).__name__)
    return ApiError(
        503, f"The emulator worker that owns this session is not answering (worker {owner}); please try again.",
        type_="server_error", headers={"Retry-After": "2"},
    )


def die_with_parent(parent: int) -> None:
    """A worker ends with the group's parent, however the parent ended (as the recognition workers do)."""
    from .recognition import _die_with_parent  # here: the parent never loads the recognizer

    _die_with_parent(parent)


def passed_on(request: web.Request) -> int:
    """How many full workers passed this new session on (0: it came from a client)."""
    text = request.headers.get(PASSED_ON, "0")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 4 else 0


def owned_elsewhere(group: Group | None, value: str) -> int | None:
    """The other worker that owns `value` (a call id or an ephemeral key), or None."""
    return group.owner(value) if group is not None else None


def group_status(group: Group | None) -> dict[str, Any]:
    return {} if group is None else {"worker": {"index": group.index, "workers": group.size, "pid": os.getpid()}}

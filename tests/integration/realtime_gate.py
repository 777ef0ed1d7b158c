"""A Realtime server that answers when the test says so: a small aiohttp proxy in front of a real emulator.

`Gate` forwards `POST /v1/realtime/calls` and the hang-up endpoint to the emulator, and lets a test decide, per
leg (told apart by the session's `instructions`), when each step happens:

* `hold_request`: the offer has reached the server but the emulator has not seen it yet; on release it is
  forwarded (the session is created after the client may have given up on it);
* `hold_answer`: the emulator has created the session; its answer is held until release;
* `fail`: on release, answer 500 in the API's error shape (nothing is created);
* `unreachable`: the answer goes back at once with its ICE password changed, so the client's connectivity checks
  can never succeed: the call exists, `session.created` never comes (the emulator's session waits for a peer).

Every session the emulator created through the gate is kept (`Create.session`), so a test checks on the
server's side how each one ended (`Session.close_reason`), and `hangups` lists the hang-up requests it saw.

`TcpGate` is a byte-level proxy for the WebSocket transport: it passes the client's bytes on at once and holds
the server's until released (the handshake's 101 and `session.created` included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, FormData, web

from voicebridge.emulator.server import Emulator
from voicebridge.emulator.session import Session
from voicebridge.scenarios.model import Scenario

RULES = ("pass", "hold_request", "hold_answer", "fail", "unreachable")


@dataclass
class Create:
    role: str
    rule: str
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # the request reached the gate
    created: asyncio.Event = field(default_factory=asyncio.Event)  # the emulator answered it
    release: asyncio.Event = field(default_factory=asyncio.Event)
    call_id: str | None = None
    session: Session | None = None
    client_gone: bool = False  # the answer could not be delivered (the client had given up)


class Gate:
    def __init__(self, emulator: Emulator, scenario: Scenario) -> None:
        self.emulator = emulator
        self._instructions = {scenario.caller.instructions.strip(): "caller", scenario.cs.instructions.strip(): "cs"}
        self.rules: dict[str, str] = {"caller": "pass", "cs": "pass"}
        self.creates: list[Create] = []
        self.arrived: dict[str, asyncio.Event] = {"caller": asyncio.Event(), "cs": asyncio.Event()}
        self.hangups: list[tuple[str, int]] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None

    def by_role(self, role: str) -> Create:
        return next(c for c in self.creates if c.role == role)

    def release_all(self) -> None:
        for c in self.creates:
            c.release.set()

    async def start(self) -> str:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/realtime/calls", self._create)
        app.router.add_post("/v1/realtime/calls/{call_id}/hangup", self._hangup)
        self._http = ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self.base_url

    async def stop(self) -> None:
        self.release_all()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def created_sessions(self) -> list[Session]:
        return [c.session for c in self.creates if c.session is not None]

    async def _create(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        sdp, raw_session = _text(form.get("sdp")), _text(form.get("session"))
        session = json.loads(raw_session)
        role = self._instructions[str(session.get("instructions", "")).strip()]
        c = Create(role, self.rules[role])
        self.creates.append(c)
        c.arrived.set()
        self.arrived[role].set()
        if c.rule in ("hold_request", "fail"):
            await c.release.wait()
            if c.rule == "fail":
                body = {"error": {"message": "The server had an error while processing your request.",
                                  "type": "server_error", "param": None, "code": None}}
                return web.json_response(body, status=500)
        data = FormData()
        data.add_field("sdp", sdp, content_type="application/sdp")
        data.add_field("session", raw_session, content_type="application/json")
        assert self._http is not None
        auth = {"Authorization": request.headers["Authorization"]}
        async with self._http.post(self.emulator.base_url + "/realtime/calls", data=data, headers=auth) as up:
            answer = await up.text()
            location = up.headers.get("Location", "")
            status = up.status
        if status == 201:
            c.call_id = location.rsplit("/", 1)[-1]
            c.session = self.emulator.sessions.get(c.call_id)
        c.created.set()
        if c.rule == "hold_answer":
            await c.release.wait()
        if c.rule == "unreachable":
            answer = re.sub(r"^a=ice-pwd:\S+", "a=ice-pwd:" + "x" * 24, answer, flags=re.MULTILINE)
        headers = {"Location": location}
        response = web.Response(status=status, text=answer, content_type="application/sdp", headers=headers)
        try:
            await response.prepare(request)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            c.client_gone = True
        return response

    async def _hangup(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        assert self._http is not None
        async with self._http.post(
            f"{self.emulator.base_url}/realtime/calls/{call_id}/hangup",
            headers={"Authorization": request.headers["Authorization"]},
        ) as up:
            body = await up.read()
            self.hangups.append((call_id, up.status))
            return web.Response(status=up.status, body=body, content_type=up.content_type)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    return str(value.file.read().decode())


class TcpGate:
    """127.0.0.1 byte proxy to `port`: client -> server passes at once, server -> client waits for `release`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.release = asyncio.Event()
        self.connected = asyncio.Event()  # a client connection reached the gate
        self.upstream_closed = asyncio.Event()  # the client went away and the gate closed its server connection
        self._spoke = 0  # connections on which the server has sent something (held)
        self._spoke_changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def server_spoke(self, connections: int) -> None:
        """Until the server has sent something (a handshake's answer) on this many connections."""
        while self._spoke < connections:
            self._spoke_changed.clear()
            await self._spoke_changed.wait()

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.connected.set()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            first = True
            try:
                while data := await src.read(65536):
                    if gated and first:
                        first = False
                        self._spoke += 1
                        self._spoke_changed.set()
                    if gated:
                        await self.release.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()
                with contextlib.suppress(Exception):
                    await dst.wait_closed()

        to_server = asyncio.ensure_future(pump(reader, up_writer, gated=False))
        to_client = asyncio.ensure_future(pump(up_reader, writer, gated=True))
        self._tasks.update({to_server, to_client})
        await to_server  # the client closed its side: the server's connection is closed with it
        self.upstream_closed.set()
        to_client.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await to_client

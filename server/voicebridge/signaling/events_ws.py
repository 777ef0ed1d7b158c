"""WebSocket /api/calls/{call_id}/events: a call's messages, the backlog first and then live, until it ends.

Each text message is `{"seq", "kind", "data"}` with kind one of state, event, turn, tool_call, ended; the
first message is `{"kind": "hello", "data": {"call_id", "state", "truncated"}}` (truncated: the oldest
backlog messages were dropped). `?since=N` skips messages with seq <= N, for a client that reconnects. The
socket closes (1000) after the `ended` message; an unknown call is a JSON 404 before any upgrade. A client
message over 4 KiB closes it with 1009 and a reason (edge/websocket.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import WSMsgType, web

from voicebridge.edge.websocket import LimitedWebSocketResponse

from .calls import Watcher
from .http import ApiError, find_record, safe_dumps

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 4096  # the console sends nothing; a client that does gets room for a little, no more


async def _pump(ws: web.WebSocketResponse, app: web.Application, watcher: Watcher, since: int) -> None:
    with contextlib.suppress(ConnectionResetError):
        while True:
            msg = await watcher.queue.get()
            if msg is None:
                break
            if msg["seq"] > since:
                await ws.send_str(safe_dumps(app, msg))
        if watcher.dropped:
            await ws.close(code=1013, message=b"too far behind; reconnect with ?since=")
        else:
            await ws.close()


async def call_events(request: web.Request) -> web.WebSocketResponse:
    rec = find_record(request)
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise ApiError(400, f"`since` must be a whole number, got {request.query['since'][:40]!r}") from None
    ws = LimitedWebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE_BYTES)  # over it: close 1009
    await ws.prepare(request)
    backlog, watcher = await rec.open_stream()  # a retired call's backlog is read back from its folder
    pump: asyncio.Task[None] | None = None
    try:
        hello = {"call_id": rec.call.id, "state": rec.call.state, "truncated": rec.truncated}
        await ws.send_str(safe_dumps(request.app, {"seq": 0, "kind": "hello", "data": hello}))
        for msg in backlog:
            if msg["seq"] > since:
                await ws.send_str(safe_dumps(request.app, msg))
        if watcher is None:
            await ws.close()
            return ws
        pump = asyncio.ensure_future(_pump(ws, request.app, watcher, since))
        async for incoming in ws:  # the console sends nothing; reading is how its close is noticed
            if incoming.type == WSMsgType.ERROR:
                break
    except ConnectionResetError:
        pass
    finally:
        if watcher is not None:
            rec.unsubscribe(watcher)
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
    return ws

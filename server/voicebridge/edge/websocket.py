"""A WebSocket that refuses an oversized message the way RFC 6455 says: a close frame with 1009 (message too
big) and a reason the client can read, then the close, not a reset.

aiohttp refuses a message over `max_msg_size` as soon as its frame header announces the size: it sends a
close frame (1009, no reason) and closes the TCP connection at once. The client is then usually still
sending that message, so the unread bytes make the kernel reset the connection, and the client never reads
the close frame: it sees a dropped connection. `LimitedWebSocketResponse` puts the limit in the reason and
keeps the connection open (aiohttp's parser, stopped at the error, discards whatever still arrives) until the
client closes it, at most LINGER_S.

This leans on two aiohttp internals, `close()` being how `receive()` reacts to the error and
`_close_transport()` being how it drops the connection; tests/integration/test_ws_limits.py sends an
oversized message to every WebSocket of both servers and fails loudly if an aiohttp upgrade changes that.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSCloseCode, web

LINGER_S = 5.0  # long enough for a client on a slow link to finish sending what it started
_POLL_S = 0.05


class LimitedWebSocketResponse(web.WebSocketResponse):
    def __init__(self, *, max_msg_size: int, **kw: object) -> None:
        super().__init__(max_msg_size=max_msg_size, **kw)  # type: ignore[arg-type]
        self.limit = max_msg_size
        self._lingering = False

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code != WSCloseCode.MESSAGE_TOO_BIG or self.closed:
            return await super().close(code=code, message=message, drain=drain)
        reason = message or f"message too big: over the {self.limit}-byte limit".encode()
        self._lingering = True
        try:
            return await super().close(code=code, message=reason[:123], drain=drain)  # 125 bytes with the code
        finally:
            await self._linger()

    def _close_transport(self) -> None:
        if not self._lingering:
            super()._close_transport()

    async def _linger(self) -> None:
        """Wait for the client to close the connection after reading our close frame, then close it anyway."""
        request = self._req
        deadline = time.monotonic() + LINGER_S
        while request is not None and time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(_POLL_S)
        self._lingering = False
        super()._close_transport()

"""Call creation that fails: a tiny aiohttp stub on 127.0.0.1 speaks the Realtime API's URLs and error shapes
and answers POST /v1/realtime/calls with a 5xx, a 401, nothing (time-out), a body that is not SDP, SDP that
cannot be applied, or no Location. Each time: Call.start() raises a LegError naming the step and the cause,
the call ends with end_reason `error`, summary.json is written, no peer connection, task or socket is left,
and the API key never appears in the error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.test_faults import check_nothing_left, sockets_open, tools
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.realtime.api import LegError
from voicebridge.scenarios.model import load_scenario

pytestmark = pytest.mark.integration
KEY = "sk-" + "faults-SECRET-0123456789abcdef"  # split: no key-shaped literal in the source
BAD_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=garbage\r\n"


@dataclass
class Stub:
    mode: str = "500"
    base_url: str = ""
    requests: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": code}}, status=status)


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    state = Stub()

    async def create(request: web.Request) -> web.StreamResponse:
        state.requests += 1
        await request.read()
        headers = {"Location": "/v1/realtime/calls/rtc_stub"}
        if state.mode == "500":
            return _error(500, "The server had an error while processing your request.", "server_error")
        if state.mode == "503":
            return _error(503, "The engine is currently overloaded, please try again later.", "server_error")
        if state.mode == "401":
            return _error(401, "Incorrect API key provided: sk-fa****cdef.", "invalid_request_error", "invalid_api_key")
        if state.mode == "timeout":
            await asyncio.wait_for(state.release.wait(), 30)  # released at teardown; the client gives up first
            return web.Response(status=500)
        if state.mode == "not_sdp":
            return web.Response(status=201, text="<html>gateway</html>", content_type="text/html", headers=headers)
        if state.mode == "bad_sdp":
            return web.Response(status=201, text=BAD_SDP, content_type="application/sdp", headers=headers)
        if state.mode == "no_location":
            return web.Response(status=201, text=BAD_SDP, content_type="application/sdp")
        raise AssertionError(state.mode)

    async def hangup(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/realtime/calls", create)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


CASES = {
    "500": r"HTTP 500 from http://127\.0\.0\.1:\d+/v1: The server had an error",
    "503": r"HTTP 503 .*overloaded",
    "401": r"401 unauthorized .*check OPENAI_API_KEY",
    "timeout": r"did not answer in time",
    "not_sdp": r"the answer from .* is not SDP: '<html>gateway",
    "bad_sdp": r"the SDP answer was refused",
    "no_location": r"without a Location header",
}


@pytest.mark.parametrize("mode", list(CASES))
async def test_call_creation_failures_end_the_call_with_a_clear_error(stub: Stub, mode: str, tmp_path: Path) -> None:
    stub.mode = mode
    before = sockets_open()
    settings = Settings(base_url=stub.base_url, api_key=KEY, session_timeout_s=1.0)
    call = Call(load_scenario("late_order"), settings, tmp_path / "call", tools=tools())
    ended: list[dict[str, object]] = []
    call.on("ended", ended.append)
    with pytest.raises(LegError, match=CASES[mode]) as info:
        await asyncio.wait_for(call.start(), 20)
    assert KEY not in str(info.value)
    assert call.ended and len(ended) == 1
    summary = call.summary()
    assert summary.end_reason == "error" and summary.state == "ended"
    assert isinstance(summary.error, str) and "LegError" in summary.error and KEY not in summary.error
    on_disk = (tmp_path / "call" / "summary.json").read_text()
    assert '"end_reason": "error"' in on_disk and KEY not in on_disk
    assert stub.requests >= 1
    stub.release.set()  # the stub's own handlers (time-out case) are not the call's to clean up
    await check_nothing_left(call, before)

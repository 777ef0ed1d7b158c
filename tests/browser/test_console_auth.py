"""The web console against a server that requires the management (admin) token, in headless Chromium.

Opened with `#admin_token=...` the page lists calls and follows one live (REST with the bearer token, the
events WebSocket with `?access_token=`), and the token leaves the address bar at once. Opened without it,
the first 401 brings up a form; the token typed there lets the page carry on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.browser.conftest import BASE_ARGS, CHROMIUM
from tests.conftest import StartEmulator
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.signaling.app import create_app
from voicebridge.signaling.security import SecurityPolicy

pytestmark = pytest.mark.browser
ADMIN = "console-admin-token-0123456789abcdef"
WAIT_MS = 30_000

playwright_api = pytest.importorskip("playwright.async_api")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@dataclasses.dataclass
class Guarded:
    url: str
    call_id: str


@pytest.fixture
async def guarded(tmp_path: Path, start_emulator: StartEmulator) -> AsyncIterator[Guarded]:
    """A server with an admin token on 127.0.0.1 and one call started through the API with that token."""
    emulator = await start_emulator()
    base = emulator.base_url
    settings = dataclasses.replace(Settings(), base_url=base, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    app = await create_app(settings, security=SecurityPolicy(admin_token=ADMIN))
    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(srv.make_url("/api/calls"))
            async with http.post(url, json={"scenario": "late_order"}) as resp:
                assert resp.status == 401  # the guard is on: the page cannot list anything without the token
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with http.post(url, json={"scenario": "late_order"}, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                call_id = (await resp.json())["id"]
        yield Guarded(str(srv.make_url("/")), call_id)
    finally:
        await srv.close()


@pytest.fixture
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield page, errors
        finally:
            await browser.close()


async def test_console_opened_with_the_token_lists_and_follows_calls(
    guarded: Guarded, browser_page: tuple[Any, list[str]]
) -> None:
    page, errors = browser_page
    await page.goto(f"{guarded.url}#admin_token={ADMIN}")
    row = f'#call-list .call-row[data-call="{guarded.call_id}"]'
    await page.wait_for_selector(row, timeout=WAIT_MS)
    assert ADMIN not in page.url  # gone from the address bar (and so from history and bookmarks)
    assert await page.evaluate("sessionStorage.getItem('voicebridge.admin_token')") == ADMIN
    assert not await page.is_visible("#auth-form")
    await page.click(row)
    # The raw events arrive over the WebSocket, which carries the token as ?access_token=.
    await page.wait_for_selector("#events .ev", timeout=WAIT_MS)
    await page.wait_for_selector("#debug .pc-card", timeout=WAIT_MS)  # debug.js fetches with the token too
    # A plain link cannot carry the token: the page fetches the debug report and saves it from a blob.
    async with page.expect_download() as info:
        await page.click("#debug-download")
    download = await info.value
    assert download.suggested_filename == f"{guarded.call_id}-debug.json"
    saved = Path(await download.path())
    assert json.loads(await asyncio.to_thread(saved.read_text))["call_id"] == guarded.call_id
    assert errors == [], f"the page logged errors: {errors}"


async def test_console_without_the_token_asks_for_it(guarded: Guarded, browser_page: tuple[Any, list[str]]) -> None:
    page, errors = browser_page
    await page.goto(guarded.url)
    await page.wait_for_selector("#auth-form", state="visible", timeout=WAIT_MS)
    assert "admin token" in str(await page.text_content("#auth-why"))
    assert await page.eval_on_selector_all("#call-list .call-row", "rows => rows.length") == 0
    # The browser reports each refused request as a console error; anything else is a real problem.
    assert all("401" in e for e in errors), errors
    errors.clear()
    await page.fill("#admin-token", ADMIN)
    await page.click("#auth-submit")
    await page.wait_for_selector(f'#call-list .call-row[data-call="{guarded.call_id}"]', timeout=WAIT_MS)
    assert not await page.is_visible("#auth-form")
    assert await page.text_content("#backend") == "emulator"
    assert errors == [], f"the page logged errors: {errors}"


async def test_a_stale_token_on_a_server_without_one_is_dropped(
    tmp_path: Path, browser_page: tuple[Any, list[str]], start_emulator: StartEmulator
) -> None:
    # The tab kept a token from before the server restarted without one: the operator's hang-up must stay an
    # operator hang-up (with the stale bearer, the server would take it for a human's forged join token).
    emulator = await start_emulator()
    base = emulator.base_url
    settings = dataclasses.replace(Settings(), base_url=base, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    srv = TestServer(await create_app(settings), host="127.0.0.1")
    await srv.start_server()
    page, errors = browser_page
    try:
        await page.goto(f"{srv.make_url('/')}#admin_token=stale-token-from-another-server")
        await page.wait_for_selector("#scenario option[value=late_order]", state="attached", timeout=WAIT_MS)
        await page.click("#start")
        await page.wait_for_selector("#call-state.live", timeout=WAIT_MS)
        await page.click("#hangup")
        await page.wait_for_selector("#call-state.ended", timeout=WAIT_MS)
        assert "operator_hangup" in str(await page.text_content("#call-end"))
        assert await page.evaluate("sessionStorage.getItem('voicebridge.admin_token')") is None
        assert not await page.is_visible("#auth-form")
        assert all("401" in e for e in errors), errors  # the one refused hang-up before the token was dropped
    finally:
        await srv.close()

"""The web console in Debian's Chromium (Playwright, headless) against the real server, Call and emulator.

The page is driven like a person would: pick the scenario, press "Start call", watch the transcript fill, and
see the call end. Screenshots land in test-artifacts/ for the README and for humans reading a failed run.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.browser.conftest import ARTIFACTS, BASE_ARGS, CHROMIUM
from tests.conftest import StartEmulator
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.signaling.app import create_app

pytestmark = pytest.mark.browser
CALL_MS = 60_000  # the demo call is ~30 s of speech

playwright_api = pytest.importorskip("playwright.async_api")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def server(tmp_path: Path, start_emulator: StartEmulator) -> AsyncIterator[str]:
    emulator = await start_emulator()
    url = emulator.base_url
    settings = dataclasses.replace(Settings(), base_url=url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path)
    srv = TestServer(await create_app(settings), host="127.0.0.1")
    await srv.start_server()
    try:
        yield str(srv.make_url("/"))
    finally:
        await srv.close()


@pytest.fixture
async def page(server: str) -> AsyncIterator[Any]:
    ARTIFACTS.mkdir(exist_ok=True)
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BASE_ARGS)
        try:
            pg = await browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await pg.goto(server)
            yield pg
            assert errors == [], f"the page logged errors: {errors}"
        finally:
            await browser.close()


async def start_demo_call(page: Any) -> str:
    await page.wait_for_selector("#scenario option[value=late_order]", state="attached")
    assert await page.text_content("#backend") == "emulator"
    await page.select_option("#scenario", "late_order")
    await page.click("#start")
    await page.wait_for_selector("#call-list .call-row.selected")
    call_id = str(await page.text_content("#call-id"))
    assert call_id.startswith("call_")
    return call_id


async def test_demo_call_transcript_fills_and_caller_hangs_up(page: Any) -> None:
    await start_demo_call(page)
    await page.wait_for_selector("#transcript .turn.said.cs", timeout=CALL_MS)
    await page.wait_for_selector("#events .ev", timeout=CALL_MS)
    await page.wait_for_selector("#call-state.live", timeout=CALL_MS)
    await page.screenshot(path=str(ARTIFACTS / "console-live.png"))
    await page.wait_for_selector("#call-state.ended", timeout=CALL_MS)
    await page.screenshot(path=str(ARTIFACTS / "console-ended.png"))
    assert "caller_hangup" in str(await page.text_content("#call-end"))
    speakers = await page.eval_on_selector_all(
        "#transcript .turn.said", "els => els.map(e => e.dataset.speaker)"
    )
    assert "caller" in speakers and "cs" in speakers
    tools = await page.eval_on_selector_all("#tool-calls tr", "rows => rows.map(r => r.dataset.tool)")
    assert "lookup_order" in tools and "issue_refund" in tools
    assert await page.is_disabled("#hangup")


async def test_hang_up_button_and_event_filter(page: Any) -> None:
    await start_demo_call(page)
    await page.wait_for_selector("#transcript .turn.said.cs", timeout=CALL_MS)
    # Filter the raw log to the caller leg's outgoing events: every row shown must be one.
    await page.select_option("#event-leg", "caller")
    await page.select_option("#event-dir", "out")
    rows = await page.eval_on_selector_all("#events .ev", "els => els.map(e => e.className)")
    assert rows and all("caller" in r and "out" in r for r in rows)
    await page.fill("#event-filter", "item.create")  # the caller's context message, sent before going live
    types = await page.eval_on_selector_all("#events .ev .type", "els => els.map(e => e.textContent)")
    assert types and all(t == "conversation.item.create" for t in types)
    await page.click("#hangup")
    await page.wait_for_selector("#call-state.ended", timeout=CALL_MS)
    assert "operator_hangup" in str(await page.text_content("#call-end"))
    await page.wait_for_selector("#call-list .call-row.selected[data-state=ended]")
    assert "operator_hangup" in str(await page.text_content("#call-list .call-row.selected"))

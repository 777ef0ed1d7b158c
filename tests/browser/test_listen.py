"""A listener in Chromium hears both parties of a live demo call (measured in the page), receive-only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, JoinServer, Launch
from voicebridge.signaling.http import MANAGER

pytestmark = pytest.mark.browser
CALL_MS = 60_000
AUDIBLE = 0.02  # RMS of a [-1, 1] signal; espeak speech through Opus is ~0.1, silence is 0


async def start_call(page: Any) -> str:
    await page.wait_for_selector("#scenario option[value=late_order]", state="attached")
    await page.select_option("#scenario", "late_order")
    await page.click("#start")
    await page.wait_for_selector("#call-list .call-row.selected")
    await page.wait_for_selector("#join-listen:not([disabled])")
    return str(await page.text_content("#call-id"))


async def test_listener_hears_both_parties(webrtc_browser: Launch, join_server: JoinServer) -> None:
    page = await webrtc_browser()
    call_id = await start_call(page)
    await page.click("#join-listen")
    await page.wait_for_function("() => window.vbJoin.stats().connectionState === 'connected'", timeout=CALL_MS)
    # Both parties arrive as bytes and as sound: the CS agent greets, the caller agent answers.
    for party in ("cs", "caller"):
        await page.wait_for_function(
            f"""() => {{ const p = window.vbJoin.stats().parties.{party};
                         return p && p.bytes > 2000 && p.peak > {AUDIBLE}; }}""",
            timeout=CALL_MS,
        )
    await page.screenshot(path=str(ARTIFACTS / "console-listening.png"))
    # The meters are styled by style.css (no <style> injected by a script): the caller's bar has its own colour.
    meter = await page.evaluate(
        """() => ({ styles: document.querySelectorAll("style").length,
                   caller: getComputedStyle(document.querySelector(".join-row.caller .join-bar-fill")).backgroundColor,
                   cs: getComputedStyle(document.querySelector(".join-row.cs .join-bar-fill")).backgroundColor })"""
    )
    assert meter == {"styles": 0, "caller": "rgb(231, 111, 81)", "cs": "rgb(42, 157, 143)"}
    stats = await page.evaluate("() => window.vbJoin.stats()")
    assert stats["role"] == "listen" and stats["callId"] == call_id
    call = join_server.app[MANAGER].get(call_id).call  # type: ignore[union-attr]
    assert not call.relay.on_hold  # a listener never becomes the caller
    views = call.relay.stats()["listeners"]
    assert views["count"] == 1 and views["packets"] > 0
    await page.click("#join-leave")
    await page.wait_for_function("() => window.vbJoin.stats().connectionState === 'closed'")
    await call.wait_ended(CALL_MS / 1000)
    assert call.end_reason == "caller_hangup"  # joining and leaving did not disturb the call
    await page.wait_for_selector("#call-state.ended")
    assert await page.is_disabled("#join-listen")  # join.js follows the call's state (ui.js): no joining it now
    notes = [e["event"] for e in _events(call) if e["leg"] == "bridge"]
    assert [n["type"] for n in notes] == ["participant.joined", "participant.left"]


def _events(call: Any) -> list[dict[str, Any]]:
    from voicebridge.bridge.artifacts import read_events

    return read_events(call.out_dir)

"""The console's Debug panel in Chromium during a live demo call against the emulator.

It must show, as visible text: the transcript, the tool calls, and for BOTH agent legs the SDP explanation
(Opus with its fmtp, the data channel, BUNDLE, DTLS roles, candidates), the connection states, RTP stats
that move, and the download of the whole debug JSON. Screenshots go to test-artifacts/, and the one taken
late in the call (transcript, tools and debug all filled) becomes docs/console.png for the README when
VOICEBRIDGE_UPDATE_DOCS=1 is set (a plain test run never changes a tracked file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.browser import test_console as console
from tests.browser.conftest import ARTIFACTS
from tests.browser.test_console import CALL_MS, start_demo_call

# The console tests' fixtures (a server with the embedded emulator, a Chromium page on it), shared as they are.
server = console.server
page = console.page

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
DOCS_IMAGE = ROOT / "docs" / "console.png"


async def stat_packets(page: Any, leg: str) -> int:
    text = await page.text_content(f'.pc-card[data-pc="{leg}"] tr[data-stat="outbound-rtp"] td:nth-child(2)')
    return int(str(text))


async def test_debug_panel_shows_both_legs_during_a_live_call(page: Any, tmp_path: Path) -> None:
    await page.set_viewport_size({"width": 1600, "height": 1000})
    call_id = await start_demo_call(page)
    await page.wait_for_selector("#call-state.live", timeout=CALL_MS)
    for leg in ("caller", "cs"):
        card = f'.pc-card[data-pc="{leg}"]'
        await page.wait_for_selector(f"{card} .sdp-explained .sdp-side", timeout=CALL_MS)
        text = str(await page.inner_text(card))
        # The explanation of the offer (ours) and of the answer (the emulator's), as a person reads it.
        assert "local: offer" in text and "remote: answer" in text
        assert "audio mid 0 sendrecv · opus/48000/2" in text
        assert "data channel · sctp-port 5000" in text
        assert "BUNDLE 0 1" in text and "setup actpass→active" in text
        assert "host udp 127.0.0.1:" in text
        assert "no warnings" in text
        assert "conn connected" in text and "DTLS connected" in text
        assert await page.is_visible(f'{card} tr[data-stat="outbound-rtp"]')

    # The stats refresh every second by themselves: wait until the caller leg's sent packets grow.
    before = await stat_packets(page, "caller")
    await page.wait_for_function(
        """([sel, n]) => Number(document.querySelector(sel)?.textContent) > n""",
        arg=['.pc-card[data-pc="caller"] tr[data-stat="outbound-rtp"] td:nth-child(2)', before],
        timeout=CALL_MS,
    )

    # Late in the call: both tools have run and the caller has had its say; the picture for the README.
    await page.wait_for_selector('#tool-calls tr[data-tool="issue_refund"]', timeout=CALL_MS)
    await page.wait_for_selector("#transcript .turn.said.caller", timeout=CALL_MS)
    await page.wait_for_selector("#turn-latency table", timeout=CALL_MS)
    assert "lookup_order" in str(await page.inner_text("#tool-calls"))
    transcript = str(await page.inner_text("#transcript"))
    assert "CS agent" in transcript and "Caller" in transcript
    await page.click('.pc-card[data-pc="cs"] details[data-key="cs:timeline"] summary')
    assert "dtls" in str(await page.inner_text('.pc-card[data-pc="cs"] .timeline'))
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "console-debug.png"), full_page=True)
    if os.environ.get("VOICEBRIDGE_UPDATE_DOCS") == "1":  # refresh the README's picture only when asked to
        await page.screenshot(path=str(DOCS_IMAGE), full_page=True)

    # The download is the same report as the API's, with the stats history.
    async with page.expect_download() as info:
        await page.click("#debug-download")
    download = await info.value
    assert download.suggested_filename == f"{call_id}-debug.json"
    saved = tmp_path / download.suggested_filename
    await download.save_as(str(saved))
    report = json.loads(saved.read_text())
    assert [pc["name"] for pc in report["peer_connections"]] == ["caller", "cs"]
    assert all(len(pc["stats_history"]) >= 2 for pc in report["peer_connections"])
    assert "a=ice-pwd:***" in report["peer_connections"][0]["local"]["sdp"]

    # After the end, the last numbers stay on screen and the states say closed.
    await page.wait_for_selector("#call-state.ended", timeout=CALL_MS)
    await page.wait_for_selector('.pc-card[data-pc="cs"].closed', timeout=CALL_MS)
    assert "conn closed" in str(await page.inner_text('.pc-card[data-pc="cs"] .chips'))
    assert await stat_packets(page, "cs") > 0
    # The timeline figure of the ended call, drawn from its summary: its lanes hold speech, its tool row the tools.
    await page.wait_for_function(
        """() => { const i = document.querySelector('#call-timeline img');
                   return i && i.complete && i.naturalWidth === 900; }""", timeout=CALL_MS,
    )
    svg = await page.evaluate(
        "id => fetch(`/api/calls/${id}/timeline.svg`)"
        ".then(async r => r.headers.get('content-type') + ' ' + await r.text())",
        call_id,
    )
    assert svg.startswith("image/svg+xml")
    assert 'class="speech caller"' in svg and 'class="speech cs"' in svg and 'data-name="issue_refund"' in svg
    await page.screenshot(path=str(ARTIFACTS / "console-debug-ended.png"), full_page=True)

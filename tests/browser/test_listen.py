"""A listener in Chromium hears both parties of a live demo call (measured in the page), receive-only, through a
downlink of its own with 10 % loss: the browser's own getStats counts exactly the loss the bridge applied."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, JoinServer, Launch
from voicebridge.signaling.http import MANAGER
from voicebridge.signaling.join import PARTICIPANTS

pytestmark = pytest.mark.browser
CALL_MS = 60_000
AUDIBLE = 0.02  # RMS of a [-1, 1] signal; espeak speech through Opus is ~0.1, silence is 0
LOSS = 0.10  # the listener's downlink (its own `impair`), each party's stream on its own seeded stage
MIN_PACKETS = 500  # per stream in the browser before counting: 10 s of 20 ms packets (the agents send silence too)


def within_binomial(lost: int, n: int, p: float = LOSS, sigmas: float = 4.5) -> bool:
    """lost of n is a plausible draw of Binomial(n, p): within `sigmas` standard deviations (false ~1 in 150,000)."""
    return abs(lost / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


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
    # What #join-listen does (join.js), with this browser's own downlink impaired.
    await page.evaluate("() => window.vbJoin.join('listen', {impair: 'bridge>browser: loss=10%', impairSeed: 1})")
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

    # The browser's own count of lost packets (inbound-rtp packetsLost, taken with packetsReceived from one
    # getStats) is exactly what the bridge's stage dropped between the first and that many packets it sent.
    await page.wait_for_function(
        f"""() => {{ const p = window.vbJoin.stats().parties;
                     return p.caller.packets >= {MIN_PACKETS} && p.cs.packets >= {MIN_PACKETS}; }}""",
        timeout=CALL_MS,
    )
    seen = (await page.evaluate("() => window.vbJoin.stats()"))["parties"]
    listener = join_server.app[PARTICIPANTS][call_id].members[stats["participantId"]]
    for party in ("caller", "cs"):
        received, lost = seen[party]["packets"], seen[party]["lost"]
        sink = listener.sinks[party]
        assert lost == sink.visible_loss(received) > 0, party
        assert within_binomial(lost, received + lost), (party, lost, received)
        applied = sink.stage.stats()
        assert applied["dropped"] == applied["lost_random"]
        assert within_binomial(applied["dropped"], applied["packets_in"])
        print(f"{party}: applied {applied['dropped']}/{applied['packets_in']}, browser lost {lost}/{received + lost}")
    assert not call.relay.on_hold  # a listener never becomes the caller
    views = call.relay.stats()["listeners"]
    assert views["count"] == 1 and views["packets"] > 0
    await page.click("#join-leave")
    await page.wait_for_function("() => window.vbJoin.stats().connectionState === 'closed'")
    await call.wait_ended(CALL_MS / 1000)
    assert call.end_reason == "caller_hangup"  # joining and leaving did not disturb the call
    # The summary records what the listener's own path applied; the agents' paths were not impaired.
    summary = call.summary()
    assert summary.impairment is None
    [browser] = summary.browser_impairment
    assert (browser["participant_id"], browser["role"], browser["uplink"]) == (stats["participantId"], "listen", None)
    assert {party: (s["spec"], s["seed"]) for party, s in browser["downlink"].items()} == {
        "caller": ("loss=10%", 1), "cs": ("loss=10%", 2)
    }
    for party, s in browser["downlink"].items():
        assert s["packets_in"] >= seen[party]["packets"] + seen[party]["lost"]
    await page.wait_for_selector("#call-state.ended")
    assert await page.is_disabled("#join-listen")  # join.js follows the call's state (ui.js): no joining it now
    notes = [e["event"] for e in _events(call) if e["leg"] == "bridge"]
    assert [n["type"] for n in notes] == ["participant.joined", "participant.left"]
    assert notes[0]["impair"] == {"downlink": "loss=10%", "uplink": "none", "seed": 1}


def _events(call: Any) -> list[dict[str, Any]]:
    from voicebridge.bridge.artifacts import read_events

    return read_events(call.out_dir)

"""A human in Chromium takes over as the caller with a fake microphone (a WAV made with espeak-ng at test time
saying the caller persona's first scripted line), is heard and answered by the CS emulator, hands back, and the
caller agent finishes the call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import ARTIFACTS, JoinServer, Launch, spoken_wav
from tests.browser.test_listen import AUDIBLE, CALL_MS, start_call
from voicebridge.scenarios.model import load_scenario, normalize_phrase
from voicebridge.signaling.http import MANAGER

pytestmark = pytest.mark.browser
LATE_ORDER = load_scenario("late_order")
LINE = LATE_ORDER.caller.script[0].say or ""


class Events:
    """The call's event records as they happen, with a wait for the first one that matches."""

    def __init__(self, call: Any) -> None:
        self.records: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        call.on("event", self._on)

    def _on(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self._changed.set()

    async def wait(self, leg: str, kind: str, within: float = CALL_MS / 1000, **match: Any) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for r in self.records:
                    e = r["event"]
                    if r["leg"] == leg and e.get("type") == kind and all(m in str(e.get(k)) for k, m in match.items()):
                        return e
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(find(), within)
        except TimeoutError:
            tail = [(r["leg"], r["event"].get("type")) for r in self.records[-12:]]
            raise AssertionError(f"no {leg} {kind} {match} within {within} s; last: {tail}") from None


async def test_human_takes_over_is_answered_and_hands_back(
    webrtc_browser: Launch, join_server: JoinServer, tmp_path: Path
) -> None:
    wav = await spoken_wav(LINE, LATE_ORDER.caller.espeak_voice, LATE_ORDER.caller.espeak_speed, tmp_path / "mic.wav")
    page = await webrtc_browser(mic_wav=wav)
    call_id = await start_call(page)
    call = join_server.app[MANAGER].get(call_id).call  # type: ignore[union-attr]
    events = Events(call)
    await page.click("#join-takeover")
    await events.wait("bridge", "takeover.started")
    assert call.relay.on_hold  # the caller agent is muted, not hung up
    await page.wait_for_selector("#join-handback:not([hidden])")
    # The CS emulator hears exactly the line the WAV says, and answers it with its tools and the refund line.
    heard = await events.wait("cs", "conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == normalize_phrase(LINE)
    refund = await events.wait("cs", "response.output_audio_transcript.done", transcript="refund")
    assert [t.name for t in call.tool_calls if t.leg == "cs"] == ["lookup_order", "issue_refund"]
    # The human hears the CS agent: bytes and sound measured in the page.
    await page.wait_for_function(
        f"""() => {{ const p = window.vbJoin.stats().parties;
                     return p.cs && p.cs.bytes > 5000 && p.cs.peak > {AUDIBLE}
                         && p.mic && p.mic.peak > {AUDIBLE}; }}""",
        timeout=CALL_MS,
    )
    await events.wait("cs", "output_audio_buffer.stopped", response_id=refund["response_id"])
    await page.screenshot(path=str(ARTIFACTS / "console-takeover.png"))
    await page.click("#join-handback")
    back = await events.wait("bridge", "takeover.handback")
    assert refund["transcript"] in back["missed_lines"]
    await call.wait_ended(CALL_MS / 1000)
    assert (call.end_reason, call.ended_by) == ("caller_hangup", "caller")  # the caller agent finished the call
    caller_lines = [t.text for t in call.transcript.said() if t.speaker == "caller"]
    assert caller_lines and "goodbye" in caller_lines[-1].lower()
    await page.wait_for_selector("#call-state.ended", timeout=CALL_MS)
    await page.screenshot(path=str(ARTIFACTS / "console-after-handback.png"))
    stats = await page.evaluate("() => window.vbJoin.stats()")
    assert stats["role"] == "takeover" and stats["connectionState"] == "closed"

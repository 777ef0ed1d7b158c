"""The same bridge against the real OpenAI Realtime API: runs only when OPENAI_API_KEY is set.

Real models are not scripted, so this checks what must hold for any conversation: both legs connect, the
call goes live, both agents speak, the CS agent hears the caller, and an operator hang-up ends it cleanly.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.media.loopback import set_loopback_only
from voicebridge.scenarios.model import load_scenario

pytestmark = [
    pytest.mark.openai,
    pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY"), reason="OPENAI_API_KEY is not set"),
]


async def test_demo_call_against_openai(tmp_path: Path) -> None:
    set_loopback_only(False)  # the API is on the internet: gather real host candidates
    settings = Settings.from_env()
    assert settings.uses_openai
    call = Call(load_scenario("late_order"), settings, tmp_path / "call")
    heard_caller: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    call.on(
        "turn",
        lambda t: (
            t.kind == "heard"
            and t.leg == "cs"
            and t.text
            and not heard_caller.done()
            and heard_caller.set_result(None)
        ),
    )
    await call.start()
    try:
        await asyncio.wait_for(heard_caller, 90)
    finally:
        if not call.ended:
            await call.hangup()
    summary = call.summary()
    assert summary.succeeded
    assert {t.speaker for t in summary.turns} == {"caller", "cs"}
    assert all((leg.call_id or "").startswith("rtc_") for leg in summary.legs)

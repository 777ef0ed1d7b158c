"""The emulator's think time (emulator/timing.py) is a setting and a deadline: a response's output never starts
before it is over, a scenario persona's own `response_delay_ms` wins over the emulator's, and it counts from the
turn's end rather than after the work: a response whose turn ended long before starts at once, counted late."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.conftest import Client
from voicebridge.emulator.server import Emulator
from voicebridge.scenarios.model import BUILTIN_DIR

pytestmark = pytest.mark.integration


async def test_think_time_is_a_deadline_from_the_turns_end(tmp_path: Path) -> None:
    # quick_bye, its CS persona thinking 700 ms (the emulator's own setting: none).
    text = (BUILTIN_DIR / "quick_bye.toml").read_text()
    text = text.replace('name = "quick_bye"', 'name = "slow_bye"').replace("a test call", "a slow test call")
    text = text.replace("[cs]\n", "[cs]\nresponse_delay_ms = 700\n")
    path = tmp_path / "slow_bye.toml"
    path.write_text(text)
    emu = Emulator(scenarios=[path], response_delay_ms=0)
    await emu.start()
    client = Client()
    try:
        persona = emu.personas.load(str(path)).cs
        await client.connect(emu.base_url, {"type": "realtime", "instructions": persona.instructions})
        await client.wait_for("session.created")
        session = emu.sessions[client.call_id]
        assert session.response_delay_s == 0.7

        # A client's response.create: the output starts no sooner than 700 ms after it was sent.
        added_at: list[float] = []
        client.channel.on(
            "message", lambda m: added_at.append(time.perf_counter()) if "response.output_item.added" in m else None
        )
        sent_at = time.perf_counter()
        client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await client.wait_for("response.done", within=30)
        assert done["response"]["status"] == "completed"
        assert added_at and added_at[0] - sent_at >= 0.7 - 0.005  # the loop's timers may fire a clock tick early
        types = client.types()
        assert types.index("response.created") < types.index("response.output_item.added")

        # A turn that ended 60 s ago: the think time is long over, so the answer starts at once and counts late
        # (a pause after the work would keep it waiting another 700 ms).
        start = len(client.events)
        r = session.start_response({"output_modalities": ["text"]}, turn_ended_at=time.perf_counter() - 60)
        assert r.start_at is not None
        done = await client.wait_for("response.done", within=30, start=start)
        assert done["response"]["status"] == "completed"
        assert session.late_starts == 1 and r.late_ms >= 59_000
    finally:
        await client.close()
        await emu.stop()

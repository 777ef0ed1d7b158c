"""voicebridge bench for real: one small job per relay kind (the bridge in this process, a real load process, real
WebRTC on loopback) and the CLI end to end. What is asserted is what the bench measured and how it counts, never how
fast: every figure is compared with another measured in the same run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voicebridge.bench.bridge import Job, event_loop_runner, run_job
from voicebridge.bench.report import figures

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def test_a_small_passthrough_job_relays_every_packet_and_matches_them_end_to_end() -> None:
    raw = await run_job(Job("passthrough", 1, 1.0, 0.3, listeners=2))
    lv = figures(raw)
    win = raw["window"]
    assert win["bridge_in"] > 0 and win["bridge_out"] == win["bridge_in"] and win["bridge_dropped"] == 0
    assert lv["added_latency_ms"]["count"] == win["bridge_out"]  # one latency sample per forwarded packet
    assert lv["e2e_latency_ms"]["count"] > 0  # the load matched payloads sent by one agent, received by the other
    assert lv["e2e_latency_ms"]["p50"] > lv["presend_latency_ms"]["p50"] > 0
    assert lv["packets_sent"] > 0 and lv["mem_mib_per_call"] is not None
    assert lv["load_sched"] == ["batch"]  # the load does not preempt the bridge on wake-up (bench/load.py)
    assert lv["bridge_context_switches"]["voluntary"] > 0  # it slept between packets, and that was counted
    assert lv["bridge_legs_down"] == 0  # every leg still connected at the end of the window
    fan = lv["fanout"]
    assert fan["listeners"] == 2 and fan["listener_delivery_pct"] > 0


def test_a_small_passthrough_job_on_uvloop_relays_every_packet() -> None:
    """`--loop uvloop`: aiortc, aioice and the pass-through's synchronous send path on libuv's event loop."""
    job = Job("passthrough", 1, 1.0, 0.3, loop="uvloop")
    with event_loop_runner(job.loop) as runner:
        raw = runner.run(run_job(job))
    win = raw["window"]
    assert win["bridge_in"] > 0 and win["bridge_out"] == win["bridge_in"] and win["bridge_dropped"] == 0
    lv = figures(raw)
    assert lv["e2e_latency_ms"]["count"] > 0 and lv["cpu_us_per_packet"] is not None


async def test_a_small_transcode_job_decodes_and_reencodes_and_traces_frames_to_packets() -> None:
    raw = await run_job(Job("transcode", 1, 1.0, 0.3, listeners=1))
    lv = figures(raw)
    assert lv["added_latency_ms"]["count"] > 0  # decoded frames traced back to the packets they came from
    assert lv["e2e_latency_ms"] is None  # re-encoded payloads cannot be matched: reported as such
    assert raw["window"]["bridge_in"] > 0 and raw["window"]["bridge_out"] > 0  # packets in, frames out
    assert lv["packets_received"] > 0
    fan = lv["fanout"]  # its listener fan-out (FanOut[ForwardTrack]): a decoder and an encoder per party
    assert fan["listeners"] == 1 and fan["listener_delivery_pct"] > 0


def test_bench_cli_json_last_line_and_files(tmp_path: Path) -> None:
    flags = ["--quick", "--calls", "1", "--relay", "passthrough", "--json", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "voicebridge.cli", "bench", *flags],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("calls", "added_latency_ms", "cpu_pct_per_call", "mem_mib_per_call", "loss_pct", "setup_ms_p50"):
        assert key in result, key
    assert result["calls"] == 1 and set(result["added_latency_ms"]) >= {"p50", "p99", "max"}
    assert "baseline" in result and result["baseline"] is None  # --relay passthrough: no baseline run
    assert result["max_calls_without_loss"] in (0, 1) and len(result["levels"]) == 1
    # The floor of the same run, and every figure judged by it: bridge CPU per forwarded packet / floor.
    assert result["floor_us_per_packet"] == result["floor"]["us_per_packet"] > 0
    level = result["levels"][0]
    assert level["floor_ratio"] == pytest.approx(level["cpu_us_per_packet"] / result["floor_us_per_packet"], rel=0.02)
    assert result["floor_ratio"] == level["floor_ratio"]
    assert "x floor" in proc.stderr and "Floor (receive + SRTP unprotect" in proc.stderr
    # The event-loop floor at the run's level: a receiver on each loop only counting and forwarding real packets
    # paced as the load paces them, every packet of the window received; the bridge judged by its own loop's.
    floors = {(m["loop"], m["work"]): m for m in result["loop_floor"]}
    assert {work for _loop, work in floors} == {"count", "forward"} and ("asyncio", "forward") in floors
    for m in floors.values():
        assert m["calls"] == 1 and m["packets"] > 0 and m["us_per_packet"] > 0
        assert m["floor_ratio"] == pytest.approx(m["us_per_packet"] / result["floor_us_per_packet"], rel=0.02)
    forward = floors[(level["loop"], "forward")]["us_per_packet"]
    assert level["loop_floor_ratio"] == pytest.approx(level["cpu_us_per_packet"] / forward, rel=0.02)
    assert "| event-loop floor (same run) |" in proc.stderr
    assert json.loads((tmp_path / "bench.json").read_text())["levels"] == result["levels"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[bench" in proc.stderr  # progress on stderr


async def test_the_emulator_bench_measures_both_emulators_in_every_phase_and_times_turns() -> None:
    import argparse

    from voicebridge.bench.emulator import NEW_AUDIO, NEW_TURNS, PHASES, _measure, table

    args = argparse.Namespace(sessions=[1], seconds=1.0, settle=1.5, turns=1, new_audio_at=[1])
    result = await _measure(args)
    assert list(result["levels"]) == ["1"]
    phases = result["levels"]["1"]["phases"]
    assert list(phases) == list(PHASES)
    for phase, row in phases.items():
        for side in ("baseline", "now"):
            assert row[side]["cpu_pct_per_session"] >= 0, phase
            assert row[side]["loop_lag_ms"]["count"] > 0, phase  # the emulator's loop was probed in the window
    assert phases["idle"]["now"]["packets_in"] == 0
    # Silence in (while listening, and while speaking, once the last turn heard has ended): none was decoded.
    for phase in ("silence", "speaking"):
        assert phases[phase]["now"]["packets_in"] > 0 and phases[phase]["now"]["decoded_pct"] == 0.0, phase
    assert phases["hearing"]["now"]["decoded_pct"] > 50  # speech is decoded (the pauses may not be)
    assert phases[NEW_AUDIO]["now"]["decoded_pct"] > 50
    assert phases[NEW_AUDIO]["now"]["turns_remembered"] == 0  # the memory was off in the emulator's process
    assert result["levels"]["1"]["responses"] > 0  # the speaking phase really had the emulators speak
    # One turn each: heard as said, answered, and its gap is the sum of its parts.
    for side in ("baseline", "now"):
        turn = phases["turns"][side]["turn"]
        assert turn["timed"] == turn["understood"] == 1, side
        parts = sum(turn[k]["p50"] for k in ("vad", "recognition", "response_start", "first_audio"))
        assert turn["gap"]["p50"] == pytest.approx(parts, abs=0.5), side
    # With the memory off, the timed turn was recognised, not answered from memory.
    new = phases[NEW_TURNS]["now"]
    assert new["turn"]["timed"] == 1
    assert new["turns_recognised"] >= new["turn"]["timed"] and new["turns_remembered"] == 0
    text = table(result)
    assert "| 1 | now | 1 (1; 0) |" in text
    assert "| 1 | now, new audio | 1 (1; 0) |" in text

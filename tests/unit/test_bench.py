"""voicebridge bench: the load's cached packets and the figures/table built from raw jobs. The real jobs (WebRTC on
loopback, a load process) and the CLI end to end are in tests/integration/test_bench_run.py."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from voicebridge.bench import main as bench_main
from voicebridge.bench.bridge import event_loop_runner
from voicebridge.bench.floor import measure_floor, rtp_packets
from voicebridge.bench.load import noise_packets
from voicebridge.bench.probes import profile_shares
from voicebridge.bench.report import (
    check_doc,
    comparisons_table,
    doc_markers,
    figures,
    judge_by_loop_floor,
    loop_floor_table,
    loop_floor_verdict,
    lossy,
    markdown,
    max_without_loss,
    splice_doc,
    summarise,
    table,
    targets,
    targets_table,
)
from voicebridge.media.passthrough import opus_samples

pytestmark = pytest.mark.unit


def test_the_load_replays_unique_20ms_opus_packets() -> None:
    packets = noise_packets(200)
    assert len(packets) == len(set(packets)) == 200  # a payload identifies its send time
    assert all(opus_samples(p) == 960 for p in packets)
    assert all(len(p) > 10 for p in packets)  # speech-sized, not silence frames


def raw_job(relay: str, calls: int, sent: int, received: int, cpu: float, lat: list[float]) -> dict[str, Any]:
    load = {
        "sent": sent,
        "received": received,
        "listener_received": 0,
        "matched": [x + 0.001 for x in lat],
        "late_ticks": 0,
        "cpu_pct": 10.0,
        "loop_lag_ms": {"count": 0},
    }
    window = {
        "cpu_pct": cpu,
        "cpu_user_pct": cpu * 0.8,
        "cpu_sys_pct": cpu * 0.2,
        "wall_s": 10.0,
        "loop_lag_ms": {"count": 0},
        "gc_pauses": {"count": 0, "max_ms": 0.0},
        "bridge_samples": lat,
        "presend_samples": [],
        "bridge_in": sent,
        "bridge_out": sent,
        "bridge_dropped": 0,
        "udp_rcvbuf_errors": 0,
        "loads": [load],
    }
    return {
        "relay": relay,
        "calls": calls,
        "load_processes": 1,
        "setup_s": [0.05, 0.07, 0.06],
        "rss_mib_before": 100.0,
        "rss_mib_after": 100.0 + calls,
        "window": window,
    }


def test_figures_loss_ratios_and_the_last_level_without_loss() -> None:
    levels = [
        figures(raw_job("passthrough", 1, 1000, 1000, 2.0, [0.0001] * 99 + [0.002])),
        figures(raw_job("transcode", 1, 1000, 990, 30.0, [0.08] * 100)),
        figures(raw_job("passthrough", 10, 10000, 10000, 15.0, [0.0002] * 100)),
        figures(raw_job("passthrough", 25, 25000, 24000, 50.0, [0.0003] * 100)),
    ]
    one = levels[0]
    assert one["added_latency_ms"]["p50"] == pytest.approx(0.1) and one["added_latency_ms"]["max"] == pytest.approx(2)
    assert one["e2e_latency_ms"]["p50"] == pytest.approx(1.1)
    assert one["cpu_pct_per_call"] == 2.0 and one["mem_mib_per_call"] == 1.0
    assert one["setup_ms_p50"] == 60.0 and one["loss_pct"] == 0.0
    assert levels[1]["loss_pct"] == pytest.approx(1.0)
    assert levels[3]["cpu_pct_per_call"] == 2.0 and levels[3]["loss_pct"] == pytest.approx(4.0)
    assert levels[3]["cpu_us_per_packet"] == pytest.approx(200.0)  # 5 s of CPU for 25000 packets forwarded
    assert levels[3]["floor_ratio"] is None  # no floor given
    raw = raw_job("passthrough", 25, 25000, 12500, 25.0, [0.0003] * 100)
    raw["window"]["bridge_in"] = raw["window"]["bridge_out"] = 12500  # a starved bridge forwarded half the packets
    starved = figures(raw)
    assert starved["cpu_pct_per_call"] == 1.0 and starved["cpu_pct_per_call_full_rate"] == pytest.approx(2.0)
    assert max_without_loss(levels, "passthrough") == 10
    text = table(levels)
    assert "| 1 | transcode / passthrough | 800.0x |" in text  # 80 ms against 0.1 ms
    assert "15.0x" in text  # CPU per call, 30 % against 2 %


def test_bench_out_that_is_a_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = argparse.Namespace(
        quick=True, json=False, calls=[1], relay="passthrough", out=blocker / "sub", loop="asyncio"
    )
    assert bench_main(args) == 2
    assert "--out" in capsys.readouterr().err


def test_profile_shares_attribute_leaf_time_to_owners() -> None:
    text = """
10.0 _UnixSelectorEventLoop.run_forever  asyncio/base_events.py:593
|- 6.0 EpollSelector.select  selectors.py:451
|  `- 6.0 epoll.poll  <built-in>
|- 2.0 socket.sendto  <built-in>
|- 1.0 [self]  aiortc/rtp.py
|- 0.5 [self]  voicebridge/media/passthrough.py
`- 0.5 Lib.srtp_protect  <built-in>
"""
    shares = profile_shares(text)
    assert shares == {"kernel sendto (loopback delivery)": 50.0, "aiortc": 25.0, "voicebridge": 12.5, "SRTP": 12.5}


def test_the_headline_baseline_is_never_an_overloaded_level_and_ratios_share_a_level() -> None:
    measured = [
        figures(raw_job("passthrough", 1, 1000, 1000, 4.0, [0.0003] * 100)),
        figures(raw_job("transcode", 1, 1000, 1000, 32.0, [0.08] * 100)),
        figures(raw_job("passthrough", 25, 25000, 25000, 40.0, [0.0001] * 100)),
        figures(raw_job("transcode", 25, 25000, 5000, 60.0, [3.0] * 100)),  # overloaded: 80 % loss
    ]
    out = summarise(measured, "passthrough", 25)
    assert out["calls"] == 25 and out["cpu_pct_per_call"] == 1.6
    assert out["baseline"]["calls"] == 1 and out["baseline"]["loss_pct"] == 0.0
    assert out["baseline_at_headline"]["loss_pct"] == pytest.approx(80.0)
    assert out["ratios"]["calls"] == 1 and out["ratios"]["added_latency_p50"] == pytest.approx(266.67)
    assert out["ratios"]["cpu_pct_per_call"] == 8.0
    assert out["max_calls_without_loss"] == 25
    assert out["calls_per_core_estimate"] == {"calls": 62, "from_level": 25}
    run = {"date": "d", "machine": {"cpus": 2, "platform": "p", "python": "3"}, "quick": False, "window_s": 10}
    text = markdown({**out, **run, "levels": measured, "failures": []})
    assert "| memory <= 10 MiB per call | 1.0 | yes |" in text
    assert "| added latency p50 <= 0.5 ms | 0.1 | yes |" in text


def test_the_floor_forwards_real_srtp_packets_and_gives_a_positive_figure() -> None:
    payloads = noise_packets(50)
    floor = measure_floor(payloads, rounds=3, packets_per_round=128)
    assert floor["packets"] == 384 and len(floor["rounds_us_per_packet"]) == 3
    assert floor["us_per_packet"] > 0 and all(x > 0 for x in floor["rounds_us_per_packet"])
    assert floor["us_per_packet"] == sorted(floor["rounds_us_per_packet"])[1]  # the median round
    plain = sum(len(p) for p in rtp_packets(payloads)) / len(payloads)
    # Every packet came out SRTP-protected (header + payload + an authentication tag), none lost or truncated.
    assert floor["srtp_bytes_mean"] > plain
    assert floor["srtp_profile"].startswith("SRTP_")
    with pytest.raises(ValueError, match="one batch"):
        measure_floor(payloads, rounds=1, packets_per_round=10)


def test_rtp_packets_carry_the_mid_extension_as_the_bridge_sends_them() -> None:
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    ext = HeaderExtensionsMap()
    ext.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(1, "urn:ietf:params:rtp-hdrext:sdes:mid")])
    )
    pkt = RtpPacket.parse(rtp_packets([b"\xfc\x01\x02"])[0], ext)
    assert (pkt.payload_type, pkt.extensions.mid, pkt.payload) == (111, "0", b"\xfc\x01\x02")


def test_the_table_and_report_judge_cpu_per_packet_by_the_floor() -> None:
    lv = figures(raw_job("passthrough", 25, 25000, 25000, 50.0, [0.0003] * 100), floor_us=10.0)
    assert lv["cpu_us_per_packet"] == pytest.approx(200.0) and lv["floor_ratio"] == pytest.approx(20.0)
    assert "| 200.0 | 20.0 |" in table([lv])
    out = summarise([lv], "passthrough", 25)
    assert out["floor_ratio"] == pytest.approx(20.0)
    floor = {
        "us_per_packet": 10.0,
        "rounds_us_per_packet": [9.0, 10.0, 11.0],
        "srtp_bytes_mean": 106.7,
        "srtp_profile": "SRTP_AEAD_AES_256_GCM",
        "packets": 300,
    }
    run = {"date": "d", "machine": {"cpus": 2, "platform": "p", "python": "3"}, "quick": True, "window_s": 2.5}
    text = markdown({**out, **run, "levels": [lv], "failures": [], "floor": floor, "floor_us_per_packet": 10.0})
    cpu = "| bridge CPU per forwarded packet <= 2x the floor"
    assert f"{cpu} | 25 calls | 20.0 | **missed** (10.0x the limit) |" in text
    assert f"{cpu} | 100 calls | - | - |" in text  # not measured in this run
    assert "10.0 us of CPU per packet" in text


def test_issue_16_targets_say_met_or_by_how_much_they_missed() -> None:
    fast = figures(raw_job("passthrough", 25, 25000, 25000, 5.0, [0.00003] * 100), floor_us=10.0)  # 20 us/packet
    slow = figures(raw_job("passthrough", 100, 100000, 100000, 60.0, [0.0004] * 100), floor_us=10.0)
    result = {**summarise([fast, slow], "passthrough", 25), "levels": [fast, slow]}
    rows = {(r["target"], r["calls"]): r for r in targets(result)}
    cpu = "bridge CPU per forwarded packet <= 2x the floor"
    assert rows[(cpu, 25)]["met"] is True and rows[(cpu, 25)]["value"] == pytest.approx(2.0)
    assert rows[(cpu, 100)]["met"] is False and rows[(cpu, 100)]["by"] == "3.0x the limit"  # 60 us = 6x floor
    assert rows[("added latency p50 <= 0.05 ms", 25)]["met"] is True  # 0.03 ms
    assert rows[("added latency p99 <= 0.3 ms", 100)]["met"] is False  # 0.4 ms
    lossless = rows[("calls without loss >= 200", None)]
    assert lossless["met"] is False and lossless["by"] == "100 of 200"
    text = targets_table(targets(result))
    assert "| calls without loss >= 200 | the run | 100 | **missed** (100 of 200) |" in text
    variant = {**fast, "variant": "uvloop loop", "against": {"floor_ratio": 2.5}}
    assert "| uvloop loop | 25 | 20.0 | 2.0 | 2.5 |" in comparisons_table([variant])


def test_the_bridge_is_judged_by_the_event_loop_floor_of_its_own_loop_and_level() -> None:
    lv = figures(raw_job("passthrough", 25, 25000, 25000, 50.0, [0.0003] * 100), floor_us=10.0)  # 200 us/packet
    other = {**figures(raw_job("passthrough", 25, 25000, 25000, 25.0, [0.0003] * 100), floor_us=10.0)}
    other["loop"] = "uvloop"  # 100 us/packet on uvloop
    floors = [
        {"calls": 25, "loop": "asyncio", "work": "count", "us_per_packet": 30.0, "floor_ratio": 3.0},
        {"calls": 25, "loop": "asyncio", "work": "forward", "us_per_packet": 50.0, "floor_ratio": 5.0},
        {"calls": 25, "loop": "uvloop", "work": "forward", "us_per_packet": 40.0, "floor_ratio": 4.0},
    ]
    judge_by_loop_floor([lv, other], floors)
    assert lv["loop_floor_ratio"] == pytest.approx(4.0) and lv["loop_floor_us"] == 50.0  # asyncio's forwarder
    assert other["loop_floor_ratio"] == pytest.approx(2.5)  # uvloop's
    other["variant"] = "uvloop loop"
    paced = {**lv, "variant": "aiortc's RTCP pace", "cpu_us_per_packet": 300.0}  # another change: not in the table
    comparisons = [other, paced]
    result = {**summarise([lv], "passthrough", 25), "levels": [lv], "comparisons": comparisons, "loop_floor": floors}
    assert result["loop_floor_ratio"] == pytest.approx(4.0)  # the headline carries it
    text = loop_floor_table(result)
    assert "| asyncio | 25 | 30.0 (3.0x) | 50.0 (5.0x) | 200.0 (20.0x) | 4.0 |" in text
    assert "| uvloop | 25 | - | 40.0 (4.0x) | 100.0 (10.0x) | 2.5 |" in text
    assert "4.0x the floor at best (25 calls on uvloop)" in text and "out of reach" in text
    row = next(r for r in targets(result) if r["calls"] == 25 and "floor" in r["target"])
    assert row["loop_floor_ratio"] == pytest.approx(4.0) and row["loop_floor_x_floor"] == pytest.approx(5.0)
    assert "| 4.0x the event-loop floor (a receiver on the same loop only forwarding: 5.0x the floor) |" in (
        targets_table(targets(result))
    )
    floors[2]["floor_ratio"] = 1.5
    assert "can forward within 2x the floor here: 1.5x at 25 calls on uvloop" in loop_floor_verdict(floors)
    assert loop_floor_verdict([]) == ""


def test_the_bridge_process_runs_on_the_event_loop_it_is_given() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    with event_loop_runner("asyncio") as runner:
        assert runner.run(loop_module()).startswith("asyncio")
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        event_loop_runner("trio")
    with event_loop_runner("uvloop") as runner:
        assert runner.run(loop_module()).startswith("uvloop")


def test_the_doc_gets_the_report_between_its_markers_and_a_doc_without_them_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start, end = doc_markers("bench")
    doc = tmp_path / "bench.md"
    doc.write_text(f"# Title\n\nintro\n{start}\nold run\n{end}\n\n## Notes kept\n", encoding="utf-8")
    splice_doc(doc, "bench", "new run\n")
    assert doc.read_text(encoding="utf-8") == f"# Title\n\nintro\n{start}\nnew run\n{end}\n\n## Notes kept\n"
    with pytest.raises(ValueError, match="emulator: generated by voicebridge bench, start"):
        check_doc(doc, "emulator")
    args = argparse.Namespace(out=tmp_path / "out", doc=tmp_path / "plain.md", loop="asyncio")
    (tmp_path / "plain.md").write_text("# no markers\n", encoding="utf-8")
    assert bench_main(args) == 2  # refused before any measuring
    assert "no '<!-- bench: generated by voicebridge bench, start -->'" in capsys.readouterr().err


def test_the_repository_doc_has_both_sections_make_bench_writes() -> None:
    doc = Path(__file__).parents[2] / "docs" / "bench.md"
    for kind in ("bench", "emulator"):
        check_doc(doc, kind)


def _turn_side(timed: int, recognition: float, recognised: int | None, remembered: int | None) -> dict[str, Any]:
    part = {"p50": recognition, "p90": recognition}
    side: dict[str, Any] = {
        "cpu_pct_per_session": 1.0,
        "loop_lag_ms": {"p99": 2.0},
        "turn": {
            "turns": timed, "cut": 0, "understood": timed, "timed": timed,
            "gap": {"p50": 900.0, "p90": 1200.0}, "vad": part, "recognition": part, "response_start": part,
            "first_audio": part,
        },
    }
    if recognised is not None:
        side["turns_recognised"], side["turns_remembered"] = recognised, remembered
    return side


def test_the_emulator_turn_table_has_a_new_audio_row_only_where_it_was_measured() -> None:
    from voicebridge.bench.emulator import NEW_TURNS, table, turns_asked

    assert turns_asked(NEW_TURNS, argparse.Namespace(turns=3)) == 2  # fewer turns for the memory-off row
    assert turns_asked(NEW_TURNS, argparse.Namespace(turns=1)) == 1
    assert turns_asked("turns", argparse.Namespace(turns=3)) == 3

    def turns_row(now: dict[str, Any]) -> dict[str, Any]:
        return {
            "baseline": _turn_side(3, 150.0, None, None), "now": now, "machine_busy_cores": 1.0,
            "loadavg_1m": 1.0, "bench_loop_lag_ms": {"baseline": {"p99": 1.0}, "now": {"p99": 1.0}},
        }

    result = {
        "window_s": 8.0, "settle_s": 2.0, "turns_per_session": 3, "new_audio_turns_per_session": 2,
        "levels": {
            "1": {"phases": {"turns": turns_row(_turn_side(3, 4.0, 1, 2))}},
            "12": {
                "phases": {
                    "turns": turns_row(_turn_side(36, 4.0, 12, 24)),
                    NEW_TURNS: turns_row({**_turn_side(24, 170.0, 24, 0), "late_starts": 5}),
                }
            },
        },
    }
    text = table(result)
    assert "| 12 | before | 3 (3; 0) | - / - | 900 / 1200 | 150 | 150 |" in text
    assert "| 12 | now | 36 (36; 0) | 12 / 24 | 900 / 1200 | 4 | 4 |" in text
    assert "| 12 | now, new audio | 24 (24; 0) | 24 / 0 | 900 / 1200 | 170 | 170 | 170 | 170 | 5 | 1.0 % |" in text
    assert "| 12 | now | 36 (36; 0) | 12 / 24 | 900 / 1200 | 4 | 4 | 4 | 4 | - | 1.0 % |" in text  # an older JSON
    assert "| 1 | now, new audio |" not in text  # not measured at 1 session: no row
    assert "(`now, new audio`: 2," in text


def test_comparisons_run_beside_a_default_run_of_their_level_in_abba_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variant is judged against the default run next to it (A B1 B2 A B3 B4 A), not against a level measured
    minutes earlier: a machine whose load changes during the bench biases no comparison one way."""
    import voicebridge.bench as bench

    ran: list[str] = []
    cpu_of = {"default": 10.0, "aiortc's packet path": 20.0, "aiortc's RTCP pace": 30.0}

    def fake_run_job(job: bench.Job) -> dict[str, Any]:  # the bridge process's result for this job, as it comes
        name = next((v for v, j in plan if j is job), "default")  # which planned job (or the default) it is
        ran.append(name)
        cpu = cpu_of.get(name, 40.0) + len(ran) / 10  # each run a little different: shows which one was used
        return raw_job("passthrough", job.calls, 25000, 25000, cpu, [0.0001] * 100)

    args = argparse.Namespace(loop="uvloop")
    plan = bench.comparison_plan(args, [1, 25, 100], 25, 1.0, 0.1)[25]
    assert [v for v, _ in plan] == [
        "aiortc's packet path", "aiortc's RTCP pace", "load preempting the bridge", "asyncio loop"
    ]
    assert plan[2][1].load_sched == "normal" and plan[3][1].loop == "asyncio"
    monkeypatch.setattr(bench, "run_job", fake_run_job)
    level = figures(raw_job("passthrough", 25, 25000, 25000, 10.0, [0.0001] * 100), 1.0)
    rows, again = bench.run_interleaved(plan, level, bench.Job("passthrough", 25, 1.0, 0.1), 1.0)
    assert ran == [
        "aiortc's packet path", "aiortc's RTCP pace", "default", "load preempting the bridge", "asyncio loop", "default"
    ]
    assert len(again) == 2 and all(r["variant"] == "default (again)" for r in again)
    # B1 against the level (before it), B2 and B3 against the default run between them, B4 against the last one.
    assert [r["against"]["run"] for r in rows] == ["level", "again", "again", "again"]
    against = [r["against"]["cpu_us_per_packet"] for r in rows]
    assert against[0] == level["cpu_us_per_packet"]
    assert against[1] == against[2] == again[0]["cpu_us_per_packet"] != against[3] == again[1]["cpu_us_per_packet"]


def test_the_load_runs_as_a_far_end_that_does_not_preempt_the_bridge() -> None:
    """SCHED_BATCH in a process of its own (policy is per process; the test runner keeps its own)."""
    import subprocess
    import sys

    code = (
        "import os; from voicebridge.bench.load import far_end_scheduling as f; "
        "print(f('batch'), os.sched_getscheduler(0) == os.SCHED_BATCH)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["batch", "True"]
    code = code.replace("f('batch')", "f('normal')").replace("== os.SCHED_BATCH", "== os.SCHED_OTHER")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["normal", "True"]


def test_the_emulator_cpu_table_gives_the_recognition_workers_part_where_it_was_measured() -> None:
    from voicebridge.bench.emulator import NEW_AUDIO, table

    def cpu_row(now: dict[str, Any]) -> dict[str, Any]:
        side = {"cpu_pct_per_session": 3.0, "loop_lag_ms": {"p99": 2.0}, "decoded_pct": 100.0, "packets_in": 9600}
        return {
            "baseline": {"cpu_pct_per_session": 4.0, "loop_lag_ms": {"p99": 9.0}}, "now": {**side, **now},
            "machine_busy_cores": 1.5, "loadavg_1m": 1.0,
        }

    result = {
        "window_s": 8.0, "settle_s": 2.0, "turns_per_session": 3,
        "levels": {
            "24": {
                "phases": {
                    NEW_AUDIO: cpu_row({"recognition_cpu_pct_per_session": 2.1, "turns_recognised": 58,
                                        "turns_remembered": 0}),
                    "hearing": cpu_row({}),  # a JSON from before the split: no figure
                }
            }
        },
    }
    text = table(result)
    assert f"| 24 | {NEW_AUDIO} | 4.0 % | 3.0 % | 2.1 % | 100.0 % of 9600 packets | 58 / 0 |" in text
    assert "| 24 | hearing | 4.0 % | 3.0 % | - | 100.0 % of 9600 packets | - / - |" in text


def test_a_level_with_a_leg_down_is_not_without_loss() -> None:
    """An agent whose leg is down sends nothing: no packet of it is counted lost, yet the level did not carry its
    calls."""
    raw = raw_job("passthrough", 200, 1000, 1000, 5.0, [0.0001] * 100)
    lv = figures(raw, floor_us=10.0)
    assert lv["loss_pct"] == 0.0 and not lossy(lv)
    raw["window"]["legs_down"] = 374
    down = figures(raw, floor_us=10.0)
    assert down["loss_pct"] == 0.0 and down["bridge_legs_down"] == 374 and lossy(down)
    assert max_without_loss([lv, {**down, "calls": 250}], "passthrough") == 200

"""`voicebridge batch`: real calls (real WebRTC, Opus and espeak speech) against the emulator (a child), a report
that says what happened to each, and failures that stay one row in the report instead of ending the batch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from voicebridge.batch.cli import run_batch
from voicebridge.batch.runner import default_call_factory
from voicebridge.config import Settings
from voicebridge.observability.metrics import Metrics
from voicebridge.results import BatchReport
from voicebridge.scenarios.model import Scenario, load_scenario

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LINES = ["Hello there.", "Goodbye now."]
_BACKEND_ENV = ("OPENAI_API_KEY", "VOICEBRIDGE_BASE_URL")


def failing_factory(scenario: Scenario, settings: Settings, folder: Path, call_id: str) -> Any:
    """Call 2 cannot even be built; call 3 is a real Call whose Realtime endpoint refuses connections."""
    if call_id.endswith("_0002"):
        raise RuntimeError("factory exploded for call 2")
    if call_id.endswith("_0003"):
        settings = dataclasses.replace(settings, base_url="http://127.0.0.1:9/v1")
    return default_call_factory(scenario, settings, folder, call_id)


async def test_a_batch_with_failures_reports_every_call(tmp_path: Path) -> None:
    out = tmp_path / "batch"
    progress: list[tuple[int, int, str]] = []
    metrics = Metrics()
    result, typed = await run_batch(
        load_scenario("quick_bye"),
        4,
        2,
        out,
        batch_id="batch_t",
        progress=lambda done, total, s: progress.append((done, total, s.call_id)),
        metrics=metrics,
        call_factory=failing_factory,
    )
    # The report as report.json holds it; it reads back into the same record.
    report = json.loads((out / "report.json").read_text())
    assert BatchReport.model_validate(report) == typed and typed.model_dump(mode="json") == report
    assert [c.summary.succeeded for c in result.calls] == [r["ok"] for r in report["calls"]]

    # Every call ran and was reported, whatever happened to the others.
    assert sorted(p[0] for p in progress) == [1, 2, 3, 4] and {p[1] for p in progress} == {4}
    assert sorted(p[2] for p in progress) == [f"batch_t_{i:04d}" for i in range(1, 5)]
    assert (report["total"], report["succeeded"], report["failed"]) == (4, 2, 2)
    assert report["success_rate"] == 0.5
    assert report["end_reasons"] == {"caller_hangup": 2, "error": 2}
    errors = {e["call_id"]: e["error"] for e in report["errors"]}
    assert "factory exploded" in errors["batch_t_0002"]
    assert "cannot reach http://127.0.0.1:9/v1" in errors["batch_t_0003"]

    # The good calls: their transcript, their hang-up, their turn latency and their files.
    rows = {r["call_id"]: r for r in report["calls"]}
    for cid in ("batch_t_0001", "batch_t_0004"):
        row = rows[cid]
        assert row["ok"] and row["end_reason"] == "caller_hangup"
        assert [t["text"] for t in row["turns"]] == LINES
        assert [(t["leg"], t["name"], t["ok"]) for t in row["tool_calls"]] == [("caller", "hangup", True)]
        assert [r["responder"] for r in row["turn_latency"]] == ["caller"]
        assert {"transcript.txt", "summary.json", "events.jsonl"} <= set(row["links"])
        for href in row["links"].values():
            assert not Path(href).is_absolute() and (out / href).is_file()
        assert "Goodbye now." in (out / row["links"]["transcript.txt"]).read_text()
        assert row["setup_s"] is not None and row["setup_s"] > 0
        # Its timing figures are its summary's own.
        summary = json.loads((out / row["links"]["summary.json"]).read_text())["timing"]
        assert row["timing"] == {
            "overlap_s": summary["overlap_s"], "overlap_ratio": summary["overlap_ratio"],
            "interruptions": len(summary["interruptions"]), "time_to_yield_ms": summary["time_to_yield_ms"],
            "turn_gap_ms": summary["turn_gap_ms"], "max_silence_s": summary["max_silence_s"],
        }
        assert "timeline.svg" in row["links"]
    # Aggregated over the calls that have a speech timeline (the two that relayed audio).
    timing = report["timing"]
    assert timing["calls"] == 2 and timing["overlap_s"]["count"] == 2 and timing["max_silence_s"]["count"] == 2
    assert timing["interruptions"] == sum(rows[c]["timing"]["interruptions"] for c in ("batch_t_0001", "batch_t_0004"))
    gaps = sorted(rows[c]["timing"]["turn_gap_ms"]["p50"] for c in ("batch_t_0001", "batch_t_0004"))
    assert timing["turn_gap_ms"]["p50"] == gaps[0]  # one turn a call: nearest rank of two is the lower
    assert report["turn_latency_s"]["count"] == 2 and report["turn_latency_s"]["p50"] > 0
    assert report["tool_calls"]["by_tool"]["caller.hangup"]["count"] == 2
    assert report["duration_s"]["count"] == 4

    # report.html is one self-contained page.
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert all(src.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) for src in sources)
    assert sum(src.startswith("data:image/svg+xml;base64,") for src in sources) == 2  # the calls that relayed
    assert "Timing and talk-over" in page and "longest silence" in page
    for src in re.findall(r"<audio [^>]*src='([^']*)'", page):  # recordings, when the calls have them
        assert (out / src).is_file(), src
    for href in re.findall(r"href='([^']*)'", page):
        assert (out / href).is_file(), href
    for cid in rows:
        assert cid in page
    assert "factory exploded for call 2" in page

    # Structured logs: JSON lines, the calls' own lines carry their call_id.
    logs = [json.loads(line) for line in (out / "batch.log.jsonl").read_text().splitlines()]
    ids = {r["call_id"] for r in logs}
    assert {"batch_t_0001", "batch_t_0002", "batch_t_0003", "batch_t_0004"} <= ids
    assert any(r["call_id"] == "batch_t_0002" and "failed" in r["message"] for r in logs)

    # The metrics saw the three calls that existed (call 2 never became a call).
    assert metrics.value("voicebridge_calls_ended_total", {"end_reason": "caller_hangup"}) == 2
    assert metrics.value("voicebridge_calls_ended_total", {"end_reason": "error"}) == 1
    assert metrics.value("voicebridge_active_calls") == 0
    assert metrics.value("voicebridge_relay_packets_total", {"party": "caller"}) > 0
    assert result.interrupted is False


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicebridge.cli", "batch", *args],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in _BACKEND_ENV},  # the emulator, as a child
    )


def test_cli_runs_a_batch_and_prints_the_headline(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    p = run_cli("--scenario", "quick_bye", "--calls", "2", "--concurrency", "2", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    headline = json.loads(p.stdout.strip().splitlines()[-1])
    assert (headline["total"], headline["succeeded"], headline["backend"]) == (2, 2, "emulator")
    assert "calls" not in headline  # the per-call rows stay in report.json
    assert Path(headline["report_html"]).is_file() and (out / "report.json").is_file()
    assert "2/2 ok (100.0%)" in p.stderr
    assert re.search(r"\[\d/2\] batch_\w+ ok caller_hangup", p.stderr)  # progress, one line per call off a tty


def test_cli_batch_with_the_emulator_in_child_processes(tmp_path: Path) -> None:
    """`--emulator-workers 2`: the emulator runs as `voicebridge emulator --workers 2`, a child of the batch (its
    sessions named by their worker, its log in the batch folder), not in the batch's own process."""
    out = tmp_path / "children"
    p = run_cli(
        "--scenario", "quick_bye", "--calls", "2", "--concurrency", "2", "--out", str(out), "--json",
        "--emulator-workers", "2",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    headline = json.loads(p.stdout.strip().splitlines()[-1])
    assert (headline["total"], headline["succeeded"]) == (2, 2)
    assert 1 <= headline["peak_live"] <= 2 and "peak live calls at once" in p.stderr
    assert re.search(r"session rtc_\w+_w[01] closed", (out / "emulator.log").read_text())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--emulator-workers", "two"], "expected 0, a whole number of processes or `auto`, got 'two'"),
        (["--calls", "0"], "expected a number from 1 to 100000, got 0"),
        (["--concurrency", "many"], "expected a whole number, got 'many'"),
        (["--scenario", "no_such_scenario"], "bad scenario: no scenario named 'no_such_scenario'"),
    ],
)
def test_cli_bad_arguments_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    p = run_cli(*args, "--out", str(tmp_path / "x"))
    assert p.returncode == 2
    assert message in p.stderr
    assert not (tmp_path / "x").exists()

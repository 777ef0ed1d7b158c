"""`voicebridge call`: one whole call, start to hang-up, live progress on stderr, then a summary.

Against the embedded emulator unless OPENAI_API_KEY is set or --emulator-url is given. With `--json`, stdout's
last line is one JSON object (call_id, end_reason, duration_s, turns, tool_calls, legs, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

from voicebridge import eventloop
from voicebridge.backend import realtime_backend
from voicebridge.bridge.call import Call
from voicebridge.bridge.context import ContextError
from voicebridge.bridge.turns import format_turns
from voicebridge.config import Settings
from voicebridge.lab.criteria import check_scenario
from voicebridge.lab.timing import format_timing
from voicebridge.realtime.api import LegError
from voicebridge.results import CallSummary, ToolCallRecord, TranscriptLine
from voicebridge.scenarios.impairment import ImpairSpecError, parse_directions
from voicebridge.scenarios.model import Scenario, ScenarioError, load_scenario


def _progress(call: Call, out: TextIO) -> None:
    def say(text: str) -> None:
        print(f"[{call.now():6.2f}] {text}", file=out, flush=True)

    def turn(t: TranscriptLine) -> None:
        say(f"{t.speaker}: {t.text}" if t.kind == "said" else f"  ({t.leg} heard: {t.text})")

    def tool_call(c: ToolCallRecord) -> None:
        say(f"tool {c.leg}.{c.name}({json.dumps(c.arguments)}) -> {'ok' if c.ok else 'ERROR'} {c.output[:120]}")

    call.on("state", lambda state: say(f"call {state}"))
    call.on("turn", turn)
    call.on("tool_call", tool_call)


def print_summary(summary: CallSummary, out: TextIO) -> None:
    print(
        f"\ncall {summary.call_id} ({summary.scenario}): {summary.end_reason} "
        f"by {summary.ended_by} after {summary.duration_s:.1f} s",
        file=out,
    )
    if summary.error:
        print(f"error: {summary.error}", file=out)
    for t in summary.turns:
        print(f"  {t.start:6.2f}-{t.end:6.2f} {t.speaker:>6}: {t.text}", file=out)
    for c in summary.tool_calls:
        print(f"  tool {c.leg}.{c.name} ok={c.ok} {c.duration_ms:.1f} ms -> {c.output[:100]}", file=out)
    for line in format_turns(summary.turn_latency):
        print(line, file=out)
    for line in format_timing(summary.timing) if summary.timing is not None else []:
        print(line, file=out)
    if summary.criteria:
        ran = [v for v in summary.criteria if not v.skipped]
        print(f"criteria: {sum(v.passed for v in ran)}/{len(ran)} passed", file=out)
        for v in summary.criteria:
            mark = "skip" if v.skipped else ("PASS" if v.passed else "FAIL")
            print(f"  {mark} {v.name} [{v.kind}]: {v.detail}", file=out)
    files = ", ".join(sorted(summary.artifacts.values()))
    print(f"artifacts: {summary.out_dir} ({files})", file=out, flush=True)


async def run_call(
    scenario: Scenario,
    settings: Settings,
    out_dir: Path | None,
    progress: TextIO | None = sys.stderr,
    transports: tuple[str, str] = ("webrtc", "webrtc"),
) -> CallSummary:
    """Run one call to its end and return its summary. Ctrl-C ends it gracefully (end_reason `shutdown`).

    `transports`: (caller, cs), each "webrtc" or "ws" (the Realtime WebSocket transport)."""
    from voicebridge.realtime.transports import leg_factory

    call = Call(scenario, settings, out_dir, leg_factory=leg_factory(*transports))
    if progress is not None:
        _progress(call, progress)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(
            signal.SIGINT, lambda: asyncio.ensure_future(call.hangup("shutdown", "operator"))
        )
    try:
        try:
            await call.start()
        except (LegError, ContextError):
            pass  # the call has ended with end_reason `error`; its summary says why
        await call.wait_ended()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        if not call.ended:
            await call.hangup("shutdown", "bridge")
    return call.summary()


def with_impairment(scenario: Scenario, impair: str | None, seed: int | None) -> Scenario:
    """The scenario with --impair / --impair-seed applied over its own `impair` keys (ScenarioError if bad)."""
    update: dict[str, object] = {}
    if impair is not None:
        try:
            parse_directions(impair)
        except ImpairSpecError as e:
            raise ScenarioError(f"--impair: {e}") from None
        update["impair"] = impair.strip()
    if seed is not None:
        update["impair_seed"] = seed
    return scenario.model_copy(update=update) if update else scenario


async def _main(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    scenario = with_impairment(scenario, getattr(args, "impair", None), getattr(args, "impair_seed", None))
    check_scenario(scenario)  # bad criteria are scenario errors before any call is placed
    async with realtime_backend(
        [scenario], args.emulator_url, emulator_workers_flag=getattr(args, "emulator_workers", None)
    ) as backend:
        print(f"Realtime backend: {backend.description}", file=sys.stderr)
        transports = (getattr(args, "caller_transport", "webrtc"), getattr(args, "cs_transport", "webrtc"))
        summary = await run_call(scenario, backend.settings, args.out, transports=transports)
    print_summary(summary, sys.stderr)
    if summary.end_reason == "error":
        print(f"voicebridge call: {summary.error}", file=sys.stderr)
    failed = [v.name for v in summary.criteria if not v.passed and not v.skipped]
    if failed:
        print(f"voicebridge call: criteria failed: {', '.join(failed)}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.model_dump(mode="json")))
    return 0 if summary.succeeded else 1


def main(args: argparse.Namespace) -> int:
    try:
        return eventloop.run(_main(args))
    except ScenarioError as e:
        print(f"voicebridge call: bad scenario: {e}", file=sys.stderr)
        return 2
    except (LegError, ContextError) as e:
        print(f"voicebridge call: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

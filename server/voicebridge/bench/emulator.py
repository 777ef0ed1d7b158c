"""`voicebridge bench --emulator`: the emulator's CPU per session while idle, listening to silence, hearing speech and
speaking, and its turn gap split into its own parts, at several numbers of concurrent sessions; the emulator as it
was before issue 17 (the baseline) beside the emulator as shipped, measured in the same windows.

Two emulator processes run side by side, so the baseline and the new way meet the same machine load: the baseline
with the old ways switched back on (`_as_before` in emulator_process.py: aiortc's jitter buffer and decoder thread
hand every packet, decoded, to the session's track reader; pocketsphinx runs in a thread of the emulator's own
process, where it holds the GIL for the whole utterance, scores every frame and recognises every turn, an identical
one too; every speech frame's pitch is searched; aiortc's send loop pulls each session's speech from its track), the
other as shipped (speech sent by the process's pacer through `OutboundAudio`: emulator/mouth.py). A driver process
per emulator (so that the peers' own CPU is split too) drives the same number of WebRTC sessions on 127.0.0.1 into
it: cheap peers that send cached Opus packets SFU style (`OutboundAudio`, no encoder) and take the emulator's audio
off their receiver (`InboundTap`, no decoder). Each emulator's CPU (its process and its recognition workers) is read
from /proc/PID/stat over the window; the machine's from /proc/stat; each event loop's lag from a 50 ms timer.

Every session plays the caller of the built-in late_order scenario (its instructions pick the persona), so what
it hears is recognised against that persona's grammar, as in a real offline call. Phases (the peer's side): idle
(a connected peer that sends no audio), silence (3-byte Opus silence every 20 ms), hearing (the agent's greeting,
looped with 400 ms of silence between, each peer at its own place in the loop, turn detection on but no response
created), hearing, new audio (the same, with each emulator's remembered turns off: the looped line's turns repeat to
the sample, so in hearing the emulator as shipped recognises only each peer's first few and remembers the rest, while
audio that never repeats, a person's or a lossy path's, goes to pocketsphinx every turn; at NEW_AUDIO_LEVELS only, or
--new-audio-at), speaking (silence in, the
emulator answering response.create after response.create, so it speaks all the time), turns (each peer says
the greeting, the emulator recognises it and answers with the caller's line, the peer waits for the answer to
end, pauses and says it again; starts staggered over 2 s) and turns, new audio (the same with the remembered turns
off, so that the now emulator recognises every turn; at the NEW_AUDIO levels, NEW_TURNS_ASKED turns at most).
A turn's gap runs from the peer's last packet of its line to the first packet of the emulator's answer that may hold
speech, split at speech_stopped (the VAD's decision: it includes the 500 ms of silence the VAD waits for), the
transcription's completion (recognition), response.created (response start) and that first audio packet.

Here: the levels and phases run, and the report written. The pieces: emulator_phases.py (phases and settings),
emulator_process.py (the emulator process), emulator_drivers.py (a driver process per emulator), emulator_run.py (a
driver's emulator and peers, each phase measured), emulator_peers.py, emulator_turns.py (turn timing), proc_cpu.py,
emulator_table.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from .emulator_drivers import Drivers
from .emulator_phases import (
    KINDS,
    MEMORY_OFF,
    NEW_AUDIO,
    NEW_AUDIO_LEVELS,
    NEW_TURNS,
    PHASE_FLAGS,
    PHASES,
    STAGGER_S,
    TURN_CAP_S,
    TURN_PHASES,
    say,
)
from .emulator_process import recv
from .emulator_table import p99, table
from .emulator_turns import turns_asked
from .proc_cpu import machine_cpu_s

# Imported from here by the tests and the CLI.
__all__ = ["NEW_AUDIO", "NEW_TURNS", "PHASES", "main", "table", "turns_asked"]


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    levels = sorted(set(args.sessions))
    new_audio_at = sorted(set(getattr(args, "new_audio_at", None) or NEW_AUDIO_LEVELS))
    results: dict[str, Any] = {
        "window_s": args.seconds,
        "settle_s": args.settle,
        "turns_per_session": args.turns,
        "new_audio_turns_per_session": turns_asked(NEW_TURNS, args),
        "new_audio_levels": new_audio_at,
        "levels": {},
    }
    chosen = {PHASE_FLAGS.get(p, p) for p in getattr(args, "phases", None) or PHASES}
    drivers = Drivers(args)
    phase_cap = 120 + args.settle + args.seconds + STAGGER_S + TURN_CAP_S * args.turns
    try:
        for kind in KINDS:
            await asyncio.to_thread(recv, drivers.conns[kind], 120)  # "ready"
        for sessions in levels:
            t0 = time.perf_counter()
            await drivers.ask(("connect", sessions), 60 + 2 * sessions)
            say(f"{sessions} session(s) on each emulator ({', '.join(KINDS)}), connected in "
                 f"{time.perf_counter() - t0:.1f} s")
            level: dict[str, Any] = {"phases": {}}
            for phase in PHASES:
                if (phase in MEMORY_OFF and sessions not in new_audio_at) or phase not in chosen:
                    continue
                machine0, load0, t1 = machine_cpu_s(), os.getloadavg()[0], time.perf_counter()
                answers = await drivers.ask(("phase", phase, sessions), phase_cap)
                machine1 = machine_cpu_s()
                row: dict[str, Any] = {kind: answers[kind]["side"] for kind in KINDS}
                # Each driver settles, then measures its window; the machine is read over both, settling included.
                row["machine_busy_cores"] = round((machine1[0] - machine0[0]) / (time.perf_counter() - t1), 2)
                row["loadavg_1m"] = round(load0, 2)
                row["peers_lost"] = {kind: answers[kind]["peers_lost"] for kind in KINDS}
                row["bench_loop_lag_ms"] = {kind: answers[kind]["bench_loop_lag_ms"] for kind in KINDS}
                row["window_s"] = {kind: answers[kind]["window_s"] for kind in KINDS}
                level["phases"][phase] = row
                base, now = row["baseline"], row["now"]
                say(
                    f"{sessions:3} sessions, {phase:18}: baseline {base['cpu_pct_per_session']:5.2f} % of a core per "
                    f"session, now {now['cpu_pct_per_session']:5.2f} % (recognition workers "
                    f"{now.get('recognition_cpu_pct_per_session', '-')} %, decoded {now['decoded_pct']} %); loop lag "
                    f"p99 {p99(base)} / {p99(now)} ms; machine {row['machine_busy_cores']} cores busy, load "
                    f"{row['loadavg_1m']}"
                    + (f"; peers lost {row['peers_lost']}" if any(row["peers_lost"].values()) else "")
                )
                if phase in TURN_PHASES:
                    gaps = base["turn"]["gap"]["p50"], now["turn"]["gap"]["p50"]
                    say(f"    turn gap p50 baseline {gaps[0]} ms, now {gaps[1]} ms (now: recognised "
                         f"{now['turns_recognised']}, remembered {now['turns_remembered']}; late starts "
                         f"{base['late_starts']} / {now['late_starts']})")
            level["responses"] = sum(answers[kind]["responses"] for kind in KINDS)
            results["levels"][str(sessions)] = level
            await drivers.ask(("disconnect",), 60)
    finally:
        await asyncio.to_thread(drivers.stop)
    return results


def main(args: argparse.Namespace) -> int:
    from voicebridge.extras import require

    require("emulator")  # espeak, pocketsphinx, webrtcvad: before minutes of measuring, not after
    from .report import doc_ready, publish

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = getattr(args, "doc", None)
    if not doc_ready(doc, "emulator", "voicebridge bench --emulator"):
        return 2
    started = time.perf_counter()
    result = asyncio.run(_measure(args))
    result["cores"] = os.cpu_count()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["duration_s"] = round(time.perf_counter() - started)
    publish(out, doc, "emulator", "emulator-bench", result, table(result), say, args.json)
    if args.json:
        print(json.dumps(result))
    return 0

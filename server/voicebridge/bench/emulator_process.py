"""The emulator bench's emulator process (the baseline or as shipped), and the driver's side of its pipe."""

from __future__ import annotations

import asyncio
from typing import Any

from voicebridge import eventloop

from .emulator_phases import SCENARIO


def emulator_main(conn: Any, kind: str) -> None:
    """Child process: an Emulator on 127.0.0.1 with the late_order personas; answers "stats" (its sessions' decode
    counters, and its event loop's lag since the last "stats"), ("remember", on) (its turn memory off, or back as
    this emulator has it) and "stop"."""
    asyncio.run(_serve_emulator(conn, kind))


def _as_before() -> None:
    """The baseline: the ways of the emulator before issue 17, switched back on in this process."""
    from voicebridge.emulator.hearing import Recognizer
    from voicebridge.emulator.recognition import Recognition
    from voicebridge.emulator.session import Session
    from voicebridge.emulator.voicing import SpeechJudge

    Session.aiortc_decode = True
    Session.paced_send = False  # each session's speech pulled from its track by aiortc's send loop
    Recognition.in_process = True  # pocketsphinx in a thread of the emulator's process
    Recognition.remember = 0  # every turn recognised, an identical one too
    Recognizer.frame_step, Recognizer.word_beam = 1, 1e-60  # every frame's Gaussians evaluated
    Recognizer.max_unexplained = 1.0  # any whole-phrase hypothesis taken, however much audio it leaves unexplained
    SpeechJudge.eager_onset = True  # every speech frame's pitch searched, inside a turn too


async def _serve_emulator(conn: Any, kind: str) -> None:
    eventloop.quiet_lost_peer_tasks()  # aiortc's data-channel sends to a peer that is gone: no traceback each
    from voicebridge.emulator import recognition
    from voicebridge.emulator.persona import Script
    from voicebridge.emulator.recognition import Recognition
    from voicebridge.emulator.server import Emulator

    from .probes import LagProbe

    if kind == "baseline":
        _as_before()
    from voicebridge.emulator.limits import Limits

    emu = Emulator(limits=Limits(sessions_per_core=0, max_lag_ms=0))  # measured past its capacity: no refusals
    scenario = emu.load_scenario(SCENARIO)
    # Start the recognition workers (and load the persona's grammar) now, not inside the first measured window.
    await recognition.shared().warm(Script(scenario.caller).phrases)
    conn.send({"url": await emu.start(), "instructions": scenario.caller.instructions})
    lag = LagProbe()
    try:
        while True:
            msg = await asyncio.to_thread(conn.recv)
            if msg == "stop":
                break
            if isinstance(msg, tuple) and msg[0] == "remember":
                # Off: every turn goes to pocketsphinx, as audio that never repeats does (a person, a lossy path).
                # On: the class's setting, which the baseline has off anyway (_as_before).
                recognition.shared().remember = Recognition.remember if msg[1] else 0
                conn.send("ok")
                continue
            listeners = [s.listener for s in emu.sessions.values() if s.listener is not None]
            conn.send(
                {
                    "sessions": len(emu.sessions),
                    "packets": sum(lst.packets for lst in listeners),
                    "decoded": sum(lst.decoded for lst in listeners),
                    "remembered": recognition.shared().remembered,  # turns not recognised again (recognition.py)
                    # Turns sent to a recognition worker (the baseline recognises in threads: not counted).
                    "recognised": recognition.shared().jobs + recognition.shared().fallbacks,
                    # Responses whose output started after the think time was over (timing.py): the work before
                    # it (recognition, response start) did not fit in the think time, so the gap grew.
                    "late_starts": sum(s.late_starts for s in emu.sessions.values()),
                    "loop_lag_ms": lag.summary(),
                }
            )
            lag.lags.clear()
    finally:
        lag.stop()
        await emu.stop()
        conn.send("stopped")


def recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"bench: the emulator process gave no answer within {timeout:.0f} s")
    return conn.recv()


async def ask_stats(conn: Any) -> dict[str, Any]:
    conn.send("stats")
    stats: dict[str, Any] = await asyncio.to_thread(recv, conn, 30)
    return stats


def stop_child(proc: Any, conn: Any, msg: Any, within_s: float) -> None:
    """Ask a child process to stop (msg on its pipe), wait within_s for it, then terminate it."""
    try:
        conn.send(msg)
    except (OSError, EOFError):
        pass
    proc.join(within_s)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)

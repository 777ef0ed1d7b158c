"""The emulator bench's driver processes: one per emulator kind, each running an emulator and its peers."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
from typing import Any

from voicebridge import eventloop

from .emulator_phases import KINDS
from .emulator_process import recv, stop_child
from .emulator_run import Run


def driver_main(conn: Any, kind: str, args: argparse.Namespace) -> None:
    """Child process: one emulator (in a process of its own) and its peers. Each emulator's peers get a process of
    their own, so that the bench's side (aiortc: SRTP and RTP in Python for every packet both ways) is not what
    gives out first at 50 sessions on each emulator."""
    asyncio.run(_drive(conn, kind, args))


async def _drive(conn: Any, kind: str, args: argparse.Namespace) -> None:
    eventloop.quiet_lost_peer_tasks()  # aiortc's data-channel sends to a peer that is gone: no traceback each
    from voicebridge.media.loopback import set_loopback_only

    set_loopback_only(True)
    run = Run(args, (kind,))
    try:
        await run.start()
        conn.send("ready")
        while True:
            msg = await asyncio.to_thread(conn.recv)
            if msg[0] == "connect":
                await run.connect(msg[1])
                conn.send("connected")
            elif msg[0] == "phase":
                row = await run.phase(msg[1], msg[2])
                conn.send(
                    {
                        "side": row[kind],
                        "peers_lost": row["peers_lost"][kind],
                        "bench_loop_lag_ms": row["bench_loop_lag_ms"],
                        "window_s": row["window_s"],
                        "responses": sum(p.responses for p in run.everyone),
                    }
                )
            elif msg[0] == "disconnect":
                await run.disconnect()
                conn.send("disconnected")
            else:
                break
    finally:
        await run.stop()
        conn.send("stopped")


class Drivers:
    """One driver process per emulator kind; every command goes to both at once and waits for both."""

    def __init__(self, args: argparse.Namespace) -> None:
        ctx = mp.get_context("spawn")
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        for kind in KINDS:
            parent, child = ctx.Pipe()
            # Not daemonic: it starts the emulator's process, which starts its recognition workers.
            proc = ctx.Process(target=driver_main, args=(child, kind, args))
            proc.start()
            self.procs[kind], self.conns[kind] = proc, parent

    async def ask(self, msg: Any, within_s: float) -> dict[str, Any]:
        for conn in self.conns.values():
            conn.send(msg)
        answers = await asyncio.gather(*(asyncio.to_thread(recv, self.conns[k], within_s) for k in KINDS))
        return dict(zip(KINDS, answers, strict=True))

    def stop(self) -> None:
        for kind, conn in self.conns.items():
            stop_child(self.procs[kind], conn, ("stop",), 60)

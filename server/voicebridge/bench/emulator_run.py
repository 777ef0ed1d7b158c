"""One process's side of the emulator bench: the emulator processes, their peers, and each phase set up and measured."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import time
from typing import Any

from .emulator_peers import Peer, Sender
from .emulator_phases import (
    CONNECT_BATCH,
    KINDS,
    LINE,
    LINE_SPEED,
    MEMORY_OFF,
    NEW_AUDIO,
    STAGGER_S,
    TURN_CAP_S,
    TURN_PHASES,
    say,
)
from .emulator_process import ask_stats, emulator_main, recv, stop_child
from .emulator_turns import turn_summary, turns_asked
from .proc_cpu import machine_cpu_s, process_cpu_s


class Run:
    """The emulator processes, their peers, the sender and this process's own loop probe."""

    def __init__(self, args: argparse.Namespace, kinds: tuple[str, ...] = KINDS) -> None:
        self.args = args
        self.kinds = kinds
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self.urls: dict[str, str] = {}
        self.instructions = ""
        self.peers: dict[str, list[Peer]] = {kind: [] for kind in self.kinds}
        self.silence = b""
        self.speech: list[bytes] = []
        self.line: tuple[bytes, ...] = ()

    async def start(self) -> None:
        from voicebridge.emulator.voice import Voice

        voice = Voice()
        self.silence = voice.silence_packet
        self.line = (await voice.speak(LINE, "en-us", LINE_SPEED)).packets
        self.speech = list(self.line) + [self.silence] * 20
        ctx = mp.get_context("spawn")
        for kind in self.kinds:
            parent, child = ctx.Pipe()
            # Not daemonic: the emulator starts its recognition workers (emulator/recognition.py).
            proc = ctx.Process(target=emulator_main, args=(child, kind))
            proc.start()
            self.procs[kind], self.conns[kind] = proc, parent
        for kind in self.kinds:
            hello = await asyncio.to_thread(recv, self.conns[kind], 60)
            self.urls[kind], self.instructions = hello["url"], hello["instructions"]
        self.sender = Sender()

    async def connect(self, sessions: int) -> None:
        for kind in self.kinds:
            for i in range(0, sessions, CONNECT_BATCH):
                batch = [Peer(self.silence) for _ in range(min(CONNECT_BATCH, sessions - i))]
                self.peers[kind].extend(batch)
                await asyncio.gather(*(p.connect(self.urls[kind], self.instructions) for p in batch))
        self.sender.peers = self.everyone

    @property
    def everyone(self) -> list[Peer]:
        return [p for kind in self.kinds for p in self.peers[kind]]

    async def disconnect(self) -> None:
        self.sender.peers = []
        peers = self.everyone
        self.peers = {kind: [] for kind in self.kinds}
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        for _ in range(150):  # the emulators notice the closed peer connections and end their sessions
            left = [(await ask_stats(self.conns[kind]))["sessions"] for kind in self.kinds]
            if not any(left):
                return
            await asyncio.sleep(0.2)
        say("some sessions outlived their peers by 30 s; going on")

    async def stop(self) -> None:
        if hasattr(self, "sender"):
            self.sender.stop()
        await self.disconnect()
        for kind, conn in self.conns.items():
            stop_child(self.procs[kind], conn, "stop", 15)

    async def phase(self, phase: str, sessions: int) -> dict[str, Any]:
        """Set the phase up, let it settle, and measure one window (the turns phase: until every peer is done)."""
        everyone = self.everyone
        rng = random.Random(17)
        for p in everyone:
            p.speaking = phase == "speaking"
            p.sending = phase != "idle"
            # Hearing: each peer at its own place in the looped line, as calls in a batch are (in step, every
            # session would wake up and decode its ring in the same 20 ms).
            if phase in ("hearing", NEW_AUDIO):
                p.play(self.speech, loop=True, start=rng.randrange(len(self.speech)))
            else:
                p.play([], loop=True)
        if phase == "speaking":
            for p in everyone:
                p.answered.clear()
                p.send_event({"type": "response.create"})
            live = [p for p in everyone if not p.lost]
            try:
                await asyncio.wait_for(asyncio.gather(*(p.answered.wait() for p in live)), 60)
            except TimeoutError:  # an overloaded emulator's data channel can stall before ICE gives up on it
                for p in live:
                    p.stalled = p.stalled or not p.answered.is_set()
                say(f"speaking: no response.created within 60 s from {sum(p.stalled for p in live)} session(s)")
        if phase in MEMORY_OFF:  # the line heard as if it never repeated: each turn recognised anew
            await self._remember(False)
        try:
            return await self._measure(phase, sessions)
        finally:
            if phase in MEMORY_OFF:
                await self._remember(True)

    async def _remember(self, on: bool) -> None:
        """Each emulator's turn memory off, or back as that emulator has it."""
        for kind in self.kinds:
            self.conns[kind].send(("remember", on))
            await asyncio.to_thread(recv, self.conns[kind], 30)

    async def _measure(self, phase: str, sessions: int) -> dict[str, Any]:
        from voicebridge.scenarios import normalize_phrase

        from .probes import LagProbe

        everyone = self.everyone
        if phase not in TURN_PHASES:
            await asyncio.sleep(self.args.settle)  # the phase's steady state, not its start
        before = {kind: (process_cpu_s(self.procs[kind].pid), await ask_stats(self.conns[kind])) for kind in self.kinds}
        machine0, load0 = machine_cpu_s(), os.getloadavg()[0]
        probe = LagProbe()
        t0 = time.perf_counter()
        if phase in TURN_PHASES:
            await self._turns(everyone, turns_asked(phase, self.args))
        else:
            await asyncio.sleep(self.args.seconds)
        wall = time.perf_counter() - t0
        probe.stop()
        machine1 = machine_cpu_s()
        row: dict[str, Any] = {
            "peers_lost": {kind: sum(p.lost for p in self.peers[kind]) for kind in self.kinds},
            "window_s": round(wall, 1),
            "machine_busy_cores": round((machine1[0] - machine0[0]) / wall, 2),
            "loadavg_1m": round(load0, 2),
            "bench_loop_lag_ms": probe.summary(),
        }
        for kind in self.kinds:
            total, own = process_cpu_s(self.procs[kind].pid)
            cpu = total - before[kind][0][0]
            workers = cpu - (own - before[kind][0][1])
            stats = await ask_stats(self.conns[kind])
            packets = stats["packets"] - before[kind][1]["packets"]
            decoded = stats["decoded"] - before[kind][1]["decoded"]
            row[kind] = {
                "cpu_pct_per_session": round(cpu / wall / sessions * 100, 2),
                "loop_lag_ms": stats["loop_lag_ms"],  # how late a 50 ms timer fired in the window
                "late_starts": stats["late_starts"] - before[kind][1]["late_starts"],
            }
            if kind == "now":  # the baseline decodes every packet by construction (and has no counter)
                row[kind]["packets_in"] = packets
                row[kind]["decoded_pct"] = round(decoded / packets * 100, 1) if packets else 0.0
                row[kind]["turns_remembered"] = stats["remembered"] - before[kind][1]["remembered"]
                row[kind]["turns_recognised"] = stats["recognised"] - before[kind][1]["recognised"]
                # Its recognition workers' part (the baseline recognises in its own process: no split).
                row[kind]["recognition_cpu_pct_per_session"] = round(workers / wall / sessions * 100, 2)
            if phase in TURN_PHASES:
                turns = [t for p in self.peers[kind] for t in p.turns]
                cut = sum(p.cut for p in self.peers[kind])
                row[kind]["turn"] = turn_summary(turns, normalize_phrase(LINE), cut)
        return row

    async def _turns(self, everyone: list[Peer], want: int) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(17)
        for p in everyone:
            p.line, p.turns, p.turn, p.want, p.cut = self.line, [], None, want, 0
            p.done.clear()
            p.configure(create_response=True)
            loop.call_later(rng.uniform(0, STAGGER_S), p.say)
        cap = STAGGER_S + TURN_CAP_S * want
        try:
            await asyncio.wait_for(asyncio.gather(*(p.done.wait() for p in everyone if not p.lost)), cap)
        except TimeoutError:
            late = {kind: sum(not p.done.is_set() for p in self.peers[kind]) for kind in self.kinds}
            say(f"turns: peers that did not finish {want} turn(s) within {cap:.0f} s: {late}")
        for p in everyone:
            p.turn = None  # an unfinished turn is not counted
            p.configure(create_response=False)

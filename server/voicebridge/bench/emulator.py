"""`voicebridge bench --emulator`: the emulator's CPU per session while idle, listening to silence, hearing speech and
speaking, decoding as before (every incoming packet) beside decoding only what may be speech (emulator/listening.py).

Two emulator processes run side by side in the same window, so the baseline and the new way meet the same machine
load: one with `Session.aiortc_decode` (the baseline: aiortc's jitter buffer and decoder thread hand every packet,
decoded, to the session's track reader, as before), one as shipped. This process drives the same number of WebRTC
sessions on 127.0.0.1 into each: cheap peers that send cached Opus packets SFU style (`OutboundAudio`, no encoder)
and take the emulator's audio off their receiver (`InboundTap`, no decoder). Each emulator's CPU is read from
/proc/PID/stat over the window; the machine's from /proc/stat.

Phases (the peer's side): idle (a connected peer that sends no audio), silence (3-byte Opus silence every 20 ms,
what aiortc and the emulator send when quiet), hearing (a spoken line, looped with 400 ms of silence between, turn
detection on but no response created) and speaking (silence in, the emulator answering response.create after
response.create, so it speaks all the time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

FRAME_S = 0.020
PHASES = ("idle", "silence", "hearing", "speaking")
KINDS = ("baseline", "gated")  # decode every packet (as before) / only what may hold speech
LINE = "Hello, my order has not arrived. The order number is four two one seven."
API_KEY = "sk-bench-emulator"


def _say(text: str) -> None:
    print(f"[bench emulator {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- the emulator processes ------------------------------------------------------------------------------------


def emulator_main(conn: Any, decode_all: bool) -> None:
    """Child process: an Emulator on 127.0.0.1; answers "stats" (its sessions' decode counters, and its event
    loop's lag since the last "stats") and "stop"."""
    asyncio.run(_serve_emulator(conn, decode_all))


async def _serve_emulator(conn: Any, decode_all: bool) -> None:
    from voicebridge.emulator.server import Emulator
    from voicebridge.emulator.session import Session

    from .probes import LagProbe

    Session.aiortc_decode = decode_all
    emu = Emulator()
    conn.send(await emu.start())
    lag = LagProbe()
    try:
        while True:
            msg = await asyncio.to_thread(conn.recv)
            if msg == "stop":
                break
            listeners = [s.listener for s in emu.sessions.values() if s.listener is not None]
            conn.send(
                {
                    "sessions": len(emu.sessions),
                    "packets": sum(lst.packets for lst in listeners),
                    "decoded": sum(lst.decoded for lst in listeners),
                    "loop_lag_ms": lag.summary(),
                }
            )
            lag.lags.clear()
    finally:
        lag.stop()
        await emu.stop()
        conn.send("stopped")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / tick, sum(parts) / tick


# ---- the peers -------------------------------------------------------------------------------------------------


class Peer:
    """One client session: sends what the phase says every 20 ms, counts the audio it receives, asks for speech."""

    def __init__(self) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        from voicebridge.media.passthrough import InboundTap, OutboundAudio

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.out = OutboundAudio()
        self.out.add_to(self.pc)
        assert self.out.receiver is not None
        self.tap = InboundTap(self.out.receiver)
        self.received = 0
        self.tap.subscribe(self._count)
        self.channel = self.pc.createDataChannel("oai-events")
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channel.on("open", self._on_open)
        self.channel.on("message", self._on_message)
        self.speaking = False
        self.responses = 0  # response.created events
        self.answered = asyncio.Event()  # a response was created: the emulator speaks
        self._seq = 0
        self._ts = 0

    def _on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def _count(self, _pkt: Any) -> None:
        self.received += 1

    def _on_message(self, message: str) -> None:
        event = json.loads(message)
        if event.get("type") == "response.created":
            self.responses += 1
            self.answered.set()
        elif event.get("type") == "response.done":
            if self.speaking:
                self.send_event({"type": "response.create"})

    def send_event(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def connect(self, base_url: str) -> None:
        import aiohttp
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base_url}/realtime/calls", data=self.pc.localDescription.sdp, headers=headers
            ) as r:
                body = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"bench: the emulator refused the call ({r.status}): {body[:300]}")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        await asyncio.wait_for(self.opened, 30)
        # Turns are detected (the VAD runs) but answered only when the bench asks: hearing stays hearing.
        self.send_event(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}},
                },
            }
        )

    def send(self, payload: bytes) -> None:
        from voicebridge.media.passthrough import RtpAudio

        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + 960) & 0xFFFFFFFF
        self.out.send(RtpAudio(payload, self._ts, self._seq, False, time.perf_counter()), "bench")

    async def close(self) -> None:
        self.out.close()
        self.tap.close()
        await self.pc.close()


class Sender:
    """One 20 ms clock for every peer: each tick sends each peer the next packet of the phase's stream."""

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers
        self.stream: list[bytes] = []
        self._i = 0
        self._next = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.late = 0

    def play(self, stream: list[bytes]) -> None:
        self.stream, self._i = stream, 0
        if self._handle is None and stream:
            loop = asyncio.get_running_loop()
            self._next = loop.time()
            self._handle = loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._next > 0.2:
            self.late += 1
            self._next = loop.time()
        if self.stream:
            payload = self.stream[self._i % len(self.stream)]
            self._i += 1
            for peer in self.peers:
                peer.send(payload)
            self._next += FRAME_S
            self._handle = loop.call_at(self._next, self._tick)
        else:
            self._handle = None


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from voicebridge.emulator.voice import Voice
    from voicebridge.media.loopback import set_loopback_only

    set_loopback_only(True)
    voice = Voice()
    silence = [voice.silence_packet]
    line = await voice.speak(LINE)
    speech = list(line.packets) + silence * 20
    ctx = mp.get_context("spawn")
    procs: dict[str, Any] = {}
    conns: dict[str, Any] = {}
    peers: dict[str, list[Peer]] = {}
    results: dict[str, Any] = {"sessions": args.sessions, "window_s": args.seconds, "phases": {}}
    try:
        for kind in KINDS:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=emulator_main, args=(child, kind == "baseline"), daemon=True)
            proc.start()
            procs[kind], conns[kind] = proc, parent
        urls = {kind: await asyncio.to_thread(_recv, conns[kind], 60) for kind in KINDS}
        for kind in KINDS:
            peers[kind] = [Peer() for _ in range(args.sessions)]
            await asyncio.gather(*(p.connect(urls[kind]) for p in peers[kind]))
        _say(f"{args.sessions} session(s) on each emulator: {', '.join(KINDS)}")
        everyone = [p for kind in KINDS for p in peers[kind]]
        sender = Sender(everyone)
        for phase in PHASES:
            for p in everyone:
                p.speaking = phase == "speaking"
            sender.play(speech if phase == "hearing" else silence if phase in ("silence", "speaking") else [])
            if phase == "speaking":
                for p in everyone:
                    p.send_event({"type": "response.create"})
                await asyncio.wait_for(asyncio.gather(*(p.answered.wait() for p in everyone)), 60)
            await asyncio.sleep(args.settle)  # the phase's steady state, not its start
            before = {kind: (_cpu_s(procs[kind].pid), await _stats(conns[kind])) for kind in KINDS}
            machine0, load0 = _machine(), os.getloadavg()[0]
            t0 = time.perf_counter()
            await asyncio.sleep(args.seconds)
            wall = time.perf_counter() - t0
            machine1 = _machine()
            row: dict[str, Any] = {
                "machine_busy_cores": round((machine1[0] - machine0[0]) / wall, 2),
                "loadavg_1m": round(load0, 2),
            }
            for kind in KINDS:
                cpu = _cpu_s(procs[kind].pid) - before[kind][0]
                stats = await _stats(conns[kind])
                packets = stats["packets"] - before[kind][1]["packets"]
                decoded = stats["decoded"] - before[kind][1]["decoded"]
                row[kind] = {
                    "cpu_pct_per_session": round(cpu / wall / args.sessions * 100, 2),
                    "loop_lag_ms": stats["loop_lag_ms"],  # how late a 50 ms timer fired in the window
                }
                if kind == "gated":  # the baseline decodes every packet by construction (and has no counter)
                    row[kind]["packets_in"] = packets
                    row[kind]["decoded_pct"] = round(decoded / packets * 100, 1) if packets else 0.0
            results["phases"][phase] = row
            base, gated = row["baseline"], row["gated"]
            _say(
                f"{phase:9} baseline {base['cpu_pct_per_session']:5.2f} % of a core per session, gated "
                f"{gated['cpu_pct_per_session']:5.2f} % (decoded {gated['decoded_pct']} %); "
                f"machine {row['machine_busy_cores']} cores busy"
            )
        sender.play([])
        results["sender_resyncs"] = sender.late
        results["responses"] = sum(p.responses for p in everyone)
    finally:
        for kind in peers:
            await asyncio.gather(*(p.close() for p in peers[kind]), return_exceptions=True)
        for kind, conn in conns.items():
            try:
                conn.send("stop")
            except (OSError, EOFError):
                pass
            procs[kind].join(15)
            if procs[kind].is_alive():
                procs[kind].terminate()
                procs[kind].join(5)
    return results


def _recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"bench: the emulator process gave no answer within {timeout:.0f} s")
    return conn.recv()


async def _stats(conn: Any) -> dict[str, Any]:
    conn.send("stats")
    stats: dict[str, Any] = await asyncio.to_thread(_recv, conn, 30)
    return stats


def _p99(side: dict[str, Any]) -> Any:
    return side["loop_lag_ms"].get("p99", "-")


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Emulator CPU per session (% of one core), {result['sessions']} sessions on each emulator, "
        f"{result['window_s']:g} s windows, both emulators measured in the same windows:",
        "",
        "| phase | decode every packet (before) | decode what may be speech (now) | decoded now | loop lag p99 "
        "before / now | machine busy |",
        "|---|---|---|---|---|---|",
    ]
    for phase, row in result["phases"].items():
        lines.append(
            f"| {phase} | {row['baseline']['cpu_pct_per_session']} % | {row['gated']['cpu_pct_per_session']} % | "
            f"{row['gated']['decoded_pct']} % of {row['gated']['packets_in']} packets | "
            f"{_p99(row['baseline'])} / {_p99(row['gated'])} ms | "
            f"{row['machine_busy_cores']} cores (load {row['loadavg_1m']}) |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from voicebridge.extras import require

    require("emulator")  # espeak, pocketsphinx, webrtcvad: before a minute of measuring, not after
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = asyncio.run(_measure(args))
    result["cores"] = os.cpu_count()
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = table(result)
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
    (out / "emulator-bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "emulator-bench.md").write_text(text + "\n", encoding="utf-8")
    _say(f"done in {time.perf_counter() - started:.0f} s: {out / 'emulator-bench.json'}")
    if args.json:
        print(json.dumps(result))
    return 0

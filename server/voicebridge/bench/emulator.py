"""`voicebridge bench --emulator`: the emulator's CPU per session while idle, listening to silence, hearing speech and
speaking, and its turn gap split into its own parts, at several numbers of concurrent sessions; the emulator as it
was before issue 17 (the baseline) beside the emulator as shipped, measured in the same windows.

Two emulator processes run side by side, so the baseline and the new way meet the same machine load: the baseline
with the old ways switched back on (`_as_before`: aiortc's jitter buffer and decoder thread hand every packet,
decoded, to the session's track reader; pocketsphinx runs in a thread of the emulator's own process, where it
holds the GIL for the whole utterance, scores every frame and recognises every turn, an identical one too; every
speech frame's pitch is searched; aiortc's send loop pulls each session's speech from its track), the other as
shipped (speech sent by the process's pacer through `OutboundAudio`: emulator/mouth.py). A driver process per
emulator (so that the peers' own CPU is split too) drives the same number of WebRTC sessions on 127.0.0.1 into
it: cheap peers that send cached Opus packets SFU style (`OutboundAudio`, no encoder) and take the emulator's audio
off their receiver (`InboundTap`, no decoder). Each emulator's CPU (its process and its recognition workers) is
read from /proc/PID/stat over the window; the machine's from /proc/stat; each event loop's lag from a 50 ms timer.

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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicebridge import eventloop

FRAME_S = 0.020
NEW_AUDIO = "hearing, new audio"  # hearing with the `now` emulator's turn memory off (recognition.py)
NEW_TURNS = "turns, new audio"  # turns with the `now` emulator's turn memory off: every turn recognised
PHASES = ("idle", "silence", "hearing", NEW_AUDIO, "speaking", "turns", NEW_TURNS)
PHASE_FLAGS = {"hearing-new": NEW_AUDIO, "turns-new": NEW_TURNS}  # --phases names of the phases with spaces
TURN_PHASES = ("turns", NEW_TURNS)
MEMORY_OFF = (NEW_AUDIO, NEW_TURNS)  # the phases measured with each emulator's remembered turns off
# Where NEW_AUDIO is measured by default: at 1 session a session's share of the process's fixed costs hides what a
# turn costs, and at 50 hearing at once is past this 2-core machine already (docs/bench.md); two levels cost the
# default run about 20 s.
NEW_AUDIO_LEVELS = (12, 24)
# Turns per session in NEW_TURNS (fewer if --turns asks fewer): a turn takes about 7 s, so two keep the default
# run's extra time to about 35 s over the two levels, and give 24 / 48 turns timed.
NEW_TURNS_ASKED = 2
KINDS = ("baseline", "now")  # the emulator as it was before issue 17 / as shipped
LEVELS = (1, 12, 24, 50)
SCENARIO = "late_order"
# The agent's greeting, as the late_order CS persona says it: the caller persona hears it and answers.
LINE = "Thank you for calling the help desk, how can I help you today?"
LINE_SPEED = 215
API_KEY = "sk-bench-emulator"
PAUSE_S = 0.4  # the peer's pause after the emulator's answer ends, before its next line
STAGGER_S = 2.0  # the peers' first lines start spread over this, as calls in a batch do
TURN_CAP_S = 20.0  # a turn that takes longer than this (per turn asked) ends the phase: something is wrong
CONNECT_BATCH = 10  # peers connecting at once


def _say(text: str) -> None:
    print(f"[bench emulator {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---- the emulator processes ------------------------------------------------------------------------------------


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


def _cpu_s(pid: int) -> tuple[float, float]:
    """User + system CPU seconds so far of a process and its live descendants (the emulator's recognition
    workers do its work too), and of the process alone."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, (0, 0.0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total, stats.get(pid, (0, 0.0))[1]


def _machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / tick, sum(parts) / tick


# ---- the peers -------------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """One line of the peer and the emulator's answer, as perf_counter() seconds in this process."""

    end: float | None = None  # the line's last packet sent
    vad: float | None = None  # input_audio_buffer.speech_stopped received
    recognized: float | None = None  # ...input_audio_transcription.completed received
    created: float | None = None  # response.created received
    audio: float | None = None  # the answer's first packet that may hold speech arrived
    transcript: str = ""

    def parts_ms(self) -> dict[str, float] | None:
        if None in (self.end, self.vad, self.recognized, self.created, self.audio):
            return None
        assert self.end is not None and self.vad is not None and self.recognized is not None
        assert self.created is not None and self.audio is not None
        return {
            "gap": (self.audio - self.end) * 1000,
            "vad": (self.vad - self.end) * 1000,
            "recognition": (self.recognized - self.vad) * 1000,
            "response_start": (self.created - self.recognized) * 1000,
            "first_audio": (self.audio - self.created) * 1000,
        }


class Peer:
    """One client session: sends its stream (or silence) every 20 ms, counts the audio it receives, asks for
    speech, and in the turns phase says its line and times the emulator's answer."""

    def __init__(self, silence: bytes) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        from voicebridge.media.passthrough import InboundTap, OutboundAudio

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.out = OutboundAudio()
        self.out.add_to(self.pc)
        assert self.out.receiver is not None
        self.tap = InboundTap(self.out.receiver)
        self.received = 0
        self.tap.subscribe(self._on_audio)
        self.channel = self.pc.createDataChannel("oai-events")
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.channel.on("open", self._on_open)
        self.channel.on("message", self._on_message)
        self.speaking = False
        self.responses = 0  # response.created events
        self.answered = asyncio.Event()  # a response was created: the emulator speaks
        self.stalled = False  # asked for a response that never came: given up on
        self.sending = False
        self._silence = silence
        self._stream: tuple[bytes, ...] = ()
        self._pos = 0
        self._loop_stream = False
        self._seq = 0
        self._ts = 0
        # The turns phase.
        self.line: tuple[bytes, ...] = ()
        self.turns: list[Turn] = []
        self.turn: Turn | None = None
        self.want = 0
        self.cut = 0  # answers cut off (a line heard as two turns)
        self.done = asyncio.Event()

    def _on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def _on_audio(self, pkt: Any) -> None:
        from voicebridge.emulator.listening import may_hold_speech

        self.received += 1
        turn = self.turn
        if turn is not None and turn.created is not None and turn.audio is None and may_hold_speech(pkt.payload):
            turn.audio = pkt.received_at

    def _on_message(self, message: str) -> None:
        event = json.loads(message)
        kind = event.get("type")
        now = time.perf_counter()
        turn = self.turn
        if kind == "response.created":
            self.responses += 1
            self.answered.set()
            if turn is not None and turn.created is None:
                turn.created = now
        elif kind == "response.done":
            if self.speaking:
                self.send_event({"type": "response.create"})
        elif turn is None:
            return
        elif kind == "input_audio_buffer.speech_stopped" and turn.vad is None:
            turn.vad = now
        elif kind == "conversation.item.input_audio_transcription.completed" and turn.recognized is None:
            turn.recognized, turn.transcript = now, event.get("transcript") or ""
        elif kind == "output_audio_buffer.stopped" and turn.audio is not None:
            self.turns.append(turn)
            self.turn = None
            if len(self.turns) >= self.want:
                self.done.set()
            else:
                asyncio.get_running_loop().call_later(PAUSE_S, self.say)
        elif kind == "output_audio_buffer.cleared" and turn.end is not None:
            # The answer was cut off: the VAD heard the line as two turns and the second interrupted the answer
            # to the first. Not a turn that can be timed; say the line again.
            self.cut += 1
            self.turn = None
            asyncio.get_running_loop().call_later(PAUSE_S, self.say)

    def send_event(self, event: dict[str, Any]) -> None:
        if self.channel.readyState != "open":  # the session ended (an overloaded emulator can lose its peers)
            return
        self.channel.send(json.dumps(event))

    @property
    def lost(self) -> bool:
        closed = self.pc.connectionState in ("failed", "closed") or self.channel.readyState != "open"
        return closed or self.stalled

    async def connect(self, base_url: str, instructions: str) -> None:
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
        # Turns are detected (the VAD runs) and transcribed, but answered only when the bench asks: hearing stays
        # hearing until the turns phase.
        self.configure(create_response=False, instructions=instructions)

    def configure(self, create_response: bool, instructions: str | None = None) -> None:
        session: dict[str, Any] = {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {"type": "server_vad", "create_response": create_response},
                    "transcription": {"model": "gpt-4o-transcribe"},
                }
            },
        }
        if instructions is not None:
            session["instructions"] = instructions
        self.send_event({"type": "session.update", "session": session})

    def play(self, stream: list[bytes] | tuple[bytes, ...], loop: bool, start: int = 0) -> None:
        self._stream, self._pos, self._loop_stream = tuple(stream), start, loop

    def say(self) -> None:
        """The turns phase: say the line once (then silence), and time the answer."""
        self.turn = Turn()
        self.play(self.line, loop=False)

    def next_payload(self) -> bytes | None:
        if not self.sending:
            return None
        if self._pos >= len(self._stream):
            return self._silence
        payload = self._stream[self._pos]
        self._pos += 1
        if self._pos == len(self._stream):
            if self._loop_stream:
                self._pos = 0
            elif self.turn is not None and self.turn.end is None:
                self.turn.end = time.perf_counter()
        return payload

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
    """One 20 ms clock for every peer: each tick sends each peer its next packet."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.late = 0
        loop = asyncio.get_running_loop()
        self._next = loop.time()
        self._handle = loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._next > 0.2:
            self.late += 1
            self._next = loop.time()
        for peer in self.peers:
            payload = peer.next_payload()
            if payload is not None:
                peer.send(payload)
        self._next += FRAME_S
        self._handle = loop.call_at(self._next, self._tick)

    def stop(self) -> None:
        self._handle.cancel()


# ---- measuring -------------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def turns_asked(phase: str, args: argparse.Namespace) -> int:
    """Turns per session the phase asks for: --turns, and at most NEW_TURNS_ASKED with the memory off."""
    turns: int = args.turns
    return min(turns, NEW_TURNS_ASKED) if phase == NEW_TURNS else turns


def turn_summary(turns: list[Turn], expected: str, cut: int = 0) -> dict[str, Any]:
    """Counts, the gap's p50/p90 and each part's p50/p90 (ms) of the turns that completed."""
    parts = [p for p in (t.parts_ms() for t in turns) if p is not None]
    summary: dict[str, Any] = {
        "turns": len(turns),
        "cut": cut,
        "understood": sum(t.transcript == expected for t in turns),
        "timed": len(parts),
    }
    for name in ("gap", "vad", "recognition", "response_start", "first_audio"):
        values = [p[name] for p in parts]
        summary[name] = {"p50": _pct(values, 0.5), "p90": _pct(values, 0.9)}
    return summary


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
            hello = await asyncio.to_thread(_recv, self.conns[kind], 60)
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
            left = [(await _stats(self.conns[kind]))["sessions"] for kind in self.kinds]
            if not any(left):
                return
            await asyncio.sleep(0.2)
        _say("some sessions outlived their peers by 30 s; going on")

    async def stop(self) -> None:
        if hasattr(self, "sender"):
            self.sender.stop()
        await self.disconnect()
        for kind, conn in self.conns.items():
            try:
                conn.send("stop")
            except (OSError, EOFError):
                pass
            self.procs[kind].join(15)
            if self.procs[kind].is_alive():
                self.procs[kind].terminate()
                self.procs[kind].join(5)

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
                _say(f"speaking: no response.created within 60 s from {sum(p.stalled for p in live)} session(s)")
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
            await asyncio.to_thread(_recv, self.conns[kind], 30)

    async def _measure(self, phase: str, sessions: int) -> dict[str, Any]:
        from voicebridge.scenarios import normalize_phrase

        from .probes import LagProbe

        everyone = self.everyone
        if phase not in TURN_PHASES:
            await asyncio.sleep(self.args.settle)  # the phase's steady state, not its start
        before = {kind: (_cpu_s(self.procs[kind].pid), await _stats(self.conns[kind])) for kind in self.kinds}
        machine0, load0 = _machine(), os.getloadavg()[0]
        probe = LagProbe()
        t0 = time.perf_counter()
        if phase in TURN_PHASES:
            await self._turns(everyone, turns_asked(phase, self.args))
        else:
            await asyncio.sleep(self.args.seconds)
        wall = time.perf_counter() - t0
        probe.stop()
        machine1 = _machine()
        row: dict[str, Any] = {
            "peers_lost": {kind: sum(p.lost for p in self.peers[kind]) for kind in self.kinds},
            "window_s": round(wall, 1),
            "machine_busy_cores": round((machine1[0] - machine0[0]) / wall, 2),
            "loadavg_1m": round(load0, 2),
            "bench_loop_lag_ms": probe.summary(),
        }
        for kind in self.kinds:
            total, own = _cpu_s(self.procs[kind].pid)
            cpu = total - before[kind][0][0]
            workers = cpu - (own - before[kind][0][1])
            stats = await _stats(self.conns[kind])
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
            _say(f"turns: peers that did not finish {want} turn(s) within {cap:.0f} s: {late}")
        for p in everyone:
            p.turn = None  # an unfinished turn is not counted
            p.configure(create_response=False)


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
        answers = await asyncio.gather(*(asyncio.to_thread(_recv, self.conns[k], within_s) for k in KINDS))
        return dict(zip(KINDS, answers, strict=True))

    def stop(self) -> None:
        for kind, conn in self.conns.items():
            try:
                conn.send(("stop",))
            except (OSError, EOFError):
                pass
            self.procs[kind].join(60)
            if self.procs[kind].is_alive():
                self.procs[kind].terminate()
                self.procs[kind].join(5)


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
            await asyncio.to_thread(_recv, drivers.conns[kind], 120)  # "ready"
        for sessions in levels:
            t0 = time.perf_counter()
            await drivers.ask(("connect", sessions), 60 + 2 * sessions)
            _say(f"{sessions} session(s) on each emulator ({', '.join(KINDS)}), connected in "
                 f"{time.perf_counter() - t0:.1f} s")
            level: dict[str, Any] = {"phases": {}}
            for phase in PHASES:
                if (phase in MEMORY_OFF and sessions not in new_audio_at) or phase not in chosen:
                    continue
                machine0, load0, t1 = _machine(), os.getloadavg()[0], time.perf_counter()
                answers = await drivers.ask(("phase", phase, sessions), phase_cap)
                machine1 = _machine()
                row: dict[str, Any] = {kind: answers[kind]["side"] for kind in KINDS}
                # Each driver settles, then measures its window; the machine is read over both, settling included.
                row["machine_busy_cores"] = round((machine1[0] - machine0[0]) / (time.perf_counter() - t1), 2)
                row["loadavg_1m"] = round(load0, 2)
                row["peers_lost"] = {kind: answers[kind]["peers_lost"] for kind in KINDS}
                row["bench_loop_lag_ms"] = {kind: answers[kind]["bench_loop_lag_ms"] for kind in KINDS}
                row["window_s"] = {kind: answers[kind]["window_s"] for kind in KINDS}
                level["phases"][phase] = row
                base, now = row["baseline"], row["now"]
                _say(
                    f"{sessions:3} sessions, {phase:18}: baseline {base['cpu_pct_per_session']:5.2f} % of a core per "
                    f"session, now {now['cpu_pct_per_session']:5.2f} % (recognition workers "
                    f"{now.get('recognition_cpu_pct_per_session', '-')} %, decoded {now['decoded_pct']} %); loop lag "
                    f"p99 {_p99(base)} / {_p99(now)} ms; machine {row['machine_busy_cores']} cores busy, load "
                    f"{row['loadavg_1m']}"
                    + (f"; peers lost {row['peers_lost']}" if any(row["peers_lost"].values()) else "")
                )
                if phase in TURN_PHASES:
                    gaps = base["turn"]["gap"]["p50"], now["turn"]["gap"]["p50"]
                    _say(f"    turn gap p50 baseline {gaps[0]} ms, now {gaps[1]} ms (now: recognised "
                         f"{now['turns_recognised']}, remembered {now['turns_remembered']}; late starts "
                         f"{base['late_starts']} / {now['late_starts']})")
            level["responses"] = sum(answers[kind]["responses"] for kind in KINDS)
            results["levels"][str(sessions)] = level
            await drivers.ask(("disconnect",), 60)
    finally:
        await asyncio.to_thread(drivers.stop)
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
    p99 = side["loop_lag_ms"].get("p99")
    return "-" if p99 is None else round(p99, 1)


def _share(value: Any) -> str:
    return "-" if value is None else f"{value} %"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Emulator CPU per session (% of one core), {result['window_s']:g} s windows after {result['settle_s']:g} s "
        "of settling, both emulators measured in the same windows; before = the emulator before issue 17, "
        f"now = as shipped (`{NEW_AUDIO}`: hearing with its remembered turns off, every turn recognised):",
        "",
        "| sessions | phase | before | now | of which recognition workers | decoded now | "
        "turns recognised / remembered now | loop lag p99 before / now | machine busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sessions, level in result["levels"].items():
        for phase, row in level["phases"].items():
            if phase in TURN_PHASES:
                continue
            lines.append(
                f"| {sessions} | {phase} | {row['baseline']['cpu_pct_per_session']} % | "
                f"{row['now']['cpu_pct_per_session']} % | "
                f"{_share(row['now'].get('recognition_cpu_pct_per_session'))} | "
                f"{row['now']['decoded_pct']} % of {row['now']['packets_in']} packets | "
                f"{row['now'].get('turns_recognised', '-')} / {row['now'].get('turns_remembered', '-')} | "
                f"{_p99(row['baseline'])} / {_p99(row['now'])} ms | "
                f"{row['machine_busy_cores']} cores (load {row['loadavg_1m']}) |"
            )
    lines += [
        "",
        f"Turn gap (the peer's line ends -> the emulator's answer's first audio), ms, p50 / p90, "
        f"{result['turns_per_session']} turn(s) per session asked (`now, new audio`: "
        f"{result.get('new_audio_turns_per_session', '-')}, with its remembered turns off, every turn recognised, "
        "measured after the others in the same connections); parts p50; late starts: responses whose output "
        "started after the think time was over (the work before it did not fit in it, so the gap grew); loop "
        "lag p99 (the emulator's, and the process where its peers run):",
        "",
        "| sessions | emulator | turns timed (understood; answers cut off) | recognised / remembered | gap | "
        "VAD decision | recognition | response start | first audio | late starts | CPU/session | "
        "emulator loop lag | bench loop lag | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sessions, level in result["levels"].items():
        rows = [
            (level["phases"].get(phase), kind, label)
            for phase, kind, label in (
                ("turns", "baseline", "before"), ("turns", "now", "now"), (NEW_TURNS, "now", "now, new audio")
            )
        ]
        for row, kind, label in rows:
            if row is None:
                continue
            t = row[kind]["turn"]
            lines.append(
                f"| {sessions} | {label} | {t['timed']} ({t['understood']}; {t['cut']}) | "
                f"{row[kind].get('turns_recognised', '-')} / {row[kind].get('turns_remembered', '-')} | "
                f"{_ms(t['gap']['p50'])} / {_ms(t['gap']['p90'])} | {_ms(t['vad']['p50'])} | "
                f"{_ms(t['recognition']['p50'])} | {_ms(t['response_start']['p50'])} | "
                f"{_ms(t['first_audio']['p50'])} | {row[kind].get('late_starts', '-')} | "
                f"{row[kind]['cpu_pct_per_session']} % | {_p99(row[kind])} ms | "
                f"{_p99({'loop_lag_ms': row['bench_loop_lag_ms'][kind]})} ms | {row['machine_busy_cores']} cores "
                f"(load {row['loadavg_1m']}) |"
            )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from voicebridge.extras import require

    require("emulator")  # espeak, pocketsphinx, webrtcvad: before minutes of measuring, not after
    from .report import doc_ready, splice_doc

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
    text = table(result)
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)
    (out / "emulator-bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "emulator-bench.md").write_text(text + "\n", encoding="utf-8")
    if doc is not None:
        splice_doc(doc, "emulator", f"Run of {result['date']}, {result['cores']} cores:\n\n{text}")
        if (out / "emulator-bench.json").resolve() != (doc.parent / "emulator-bench.json").resolve():
            (doc.parent / "emulator-bench.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        _say(f"report written into {doc}")
    _say(f"done in {result['duration_s']} s: {out / 'emulator-bench.json'}")
    if args.json:
        print(json.dumps(result))
    return 0

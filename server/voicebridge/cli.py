"""`voicebridge serve | worker | call | emulator | bench | sdp explain | batch | test | compare | soak`.

This module only parses flags; each command lives in the package that owns it and is imported on use,
so `voicebridge emulator` never loads the bridge and vice versa.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .eventloop import EventLoopChoiceError
from .extras import EXIT_STATUS, MissingExtra


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def _non_negative_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from voicebridge.batch.args import add_emulator_workers

    p = argparse.ArgumentParser(prog="voicebridge", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="the signaling server and web console (emulator unless OPENAI_API_KEY is set)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_port, default=8080)
    s.add_argument("--artifacts", type=Path, default=Path("calls"), help="where each call's folder is written")
    s.add_argument("--emulator-url", default="", help="use an emulator already running at this /v1 URL")
    add_emulator_workers(s, "0")
    s.add_argument("--cert", type=Path, default=None, help="TLS certificate, PEM (off loopback: certs/dev-cert.pem)")
    s.add_argument("--key", type=Path, default=None, help="TLS private key, PEM (off loopback: certs/dev-key.pem)")
    s.add_argument(
        "--allow-origin", action="append", default=[], metavar="ORIGIN",
        help="another origin (scheme://host[:port]) whose pages may call /api/ (CORS); repeatable",
    )
    s.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="another host name this server answers to (the Host header; others get 421: DNS rebinding); repeatable",
    )
    s.add_argument(
        "--calls-per-core", type=_non_negative_number, default=None, metavar="N",
        help="capacity: live calls per core; beyond, POST /api/calls gets 503 with Retry-After (default 25, "
        "VOICEBRIDGE_CALLS_PER_CORE; 0: no budget)",
    )
    s.add_argument(
        "--max-lag-ms", type=_non_negative_number, default=None, metavar="MS",
        help="capacity: the smoothed event-loop lag beyond which POST /api/calls gets 503 (default 150, "
        "VOICEBRIDGE_MAX_LAG_MS; 0: off)",
    )

    s.add_argument(
        "--workers", default="1", metavar="N",
        help="bridge worker processes: 1 (default) is one process with no Redis; N>1 or `auto` (one per core) "
        "runs a front door and N workers sharing calls through Redis; 0 only the front door",
    )
    s.add_argument("--redis", default="", metavar="URL", help="the cluster's Redis, redis://[:PASSWORD@]HOST:PORT/DB "
                   "(default: VOICEBRIDGE_REDIS_URL); needed unless --workers 1")
    s.add_argument("--advertise", default="", metavar="HOST",
                   help="the address browsers and the front door reach local workers at (default: --host)")

    w = sub.add_parser("worker", help="one bridge worker of a cluster (its front door is `serve --workers`)")
    w.add_argument("--redis", default="", metavar="URL", help="the cluster's Redis (default: VOICEBRIDGE_REDIS_URL)")
    w.add_argument("--advertise", required=True, metavar="HOST",
                   help="this machine's address the front door and browsers reach (127.0.0.1 on one machine)")
    w.add_argument("--host", default="", help="the address to listen on (default: --advertise)")
    w.add_argument("--port", type=_port, default=0, help="the port to listen on (default 0: any free one)")
    w.add_argument("--artifacts", type=Path, default=Path("calls"), help="where each call's folder is written")
    w.add_argument("--emulator-url", default="", help="use an emulator already running at this /v1 URL")
    w.add_argument("--batch-slots", type=_positive_int, default=2,
                   help="batch calls (`voicebridge batch --redis`) this worker runs at once (default 2)")

    c = sub.add_parser("call", help="run one whole call, start to hang-up, then print a summary")
    c.add_argument("--scenario", default="late_order", help="a built-in scenario name or a scenario file path")
    c.add_argument("--json", action="store_true", help="print one JSON object as stdout's last line")
    c.add_argument("--out", type=Path, default=None, help="folder for the call's artifacts (default calls/<id>)")
    c.add_argument("--emulator-url", default="", help="use an emulator already running at this /v1 URL")
    add_emulator_workers(c, "0")
    for role in ("caller", "cs"):
        c.add_argument(
            f"--{role}-transport",
            choices=["webrtc", "ws"],
            default="webrtc",
            help=f"the {role} leg's Realtime transport: WebRTC (Opus, pass-through) or WebSocket (PCM16)",
        )
    c.add_argument(
        "--impair",
        default=None,
        metavar="PROFILE_OR_SPEC",
        help="impair the relay path both ways: good, wifi, 3g, satellite, lossy, or a spec like loss=5%%,delay=80ms"
        " (overrides the scenario's impair)",
    )
    c.add_argument("--impair-seed", type=int, default=None, help="the impairment's random seed (same seed, same run)")

    e = sub.add_parser("emulator", help="the offline Realtime GA API emulator alone, at http://HOST:PORT/v1")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=_port, default=8765)
    e.add_argument("--scenario", action="append", default=[], help="extra scenario file(s) whose personas to load")
    e.add_argument(
        "--allowed-host", action="append", default=[], metavar="NAME",
        help="another host name the emulator answers to (the Host header; others get 421); repeatable",
    )
    e.add_argument(
        "--connect-timeout", type=float, default=30.0, metavar="S",
        help="close a WebRTC session whose peer has not connected this long after the answer (default 30)",
    )
    e.add_argument("--max-sessions", type=_positive_int, default=500, help="live sessions in all (default 500)")
    e.add_argument(
        "--max-sessions-per-key", type=_positive_int, default=200, help="live sessions per API key (default 200)"
    )
    e.add_argument(
        "--sessions-per-core", type=_non_negative_number, default=None, metavar="N",
        help="capacity: live sessions per core; beyond, new sessions get 429 (default 24, "
        "VOICEBRIDGE_EMULATOR_SESSIONS_PER_CORE; 0: no budget)",
    )
    e.add_argument(
        "--max-lag-ms", type=_non_negative_number, default=None, metavar="MS",
        help="capacity: the smoothed event-loop lag beyond which new sessions get 429 (default 150, "
        "VOICEBRIDGE_EMULATOR_MAX_LAG_MS; 0: off)",
    )
    e.add_argument(
        "--workers", default="1", metavar="N",
        help="emulator processes behind the one URL (default 1: this process alone; `auto`: one per usable core); "
        "each holds its own sessions and limits, and a request about a session reaches the one that holds it",
    )
    e.add_argument(
        "--response-delay-ms", type=_non_negative_number, default=None, metavar="MS",
        help="the model's think time: a response's output starts this long after its turn ended, at any load "
        "(default 200, VOICEBRIDGE_EMULATOR_RESPONSE_DELAY_MS; a scenario persona's response_delay_ms wins)",
    )

    b = sub.add_parser("bench", help="measure the media path against a transcoding baseline")
    b.add_argument("--quick", action="store_true", help="a small run in under a minute")
    b.add_argument("--json", action="store_true", help="print one JSON object as stdout's last line")
    b.add_argument("--calls", type=_positive_int, nargs="*", default=None, help="concurrency levels to measure")
    b.add_argument("--relay", choices=["passthrough", "transcode"], default=None, help="measure only this relay")
    b.add_argument("--out", type=Path, default=Path("."), help="where bench.json and bench.png are written")
    b.add_argument(
        "--doc", type=Path, default=None, metavar="MD",
        help="also put the run's report into MD between its bench markers, its JSON (and picture) beside it "
        "(make bench: docs/bench.md)",
    )
    b.add_argument(
        "--emulator", action="store_true",
        help="measure the emulator instead: CPU per session idle, hearing silence or speech and speaking, and "
        "its turn gap split into its parts, before issue 17 beside as shipped",
    )
    b.add_argument(
        "--batch", action="store_true",
        help="run real `voicebridge batch` processes instead (late_order, the emulator their child): 4 calls 2 at "
        "once, 50 at 50, the 4 again, 100 at 100; issue 17's batch targets met or missed",
    )
    b.add_argument(
        "--batch-calls", type=_positive_int, default=50, metavar="N",
        help="--batch: the calls of the at-once batch (default 50); the overload batch has twice as many",
    )
    b.add_argument(
        "--all-admitted", action="store_true",
        help="--batch: also run the at-once batch with no emulator budget (every call admitted at once, whatever "
        "--batch-calls; the default budget admits 50 calls on two cores)",
    )
    b.add_argument(
        "--sessions", type=_positive_int, nargs="+", default=[1, 12, 24, 50],
        help="--emulator: concurrent sessions on each emulator, one level after another (default 1 12 24 50)",
    )
    b.add_argument("--turns", type=_positive_int, default=3, help="--emulator: turns per session in the turns phase")
    b.add_argument(
        "--new-audio-at", type=_positive_int, nargs="+", default=[12, 24], metavar="SESSIONS",
        help="--emulator: the levels (of --sessions) where hearing and turns are measured again with no turn "
        "remembered, as audio that never repeats is heard (turns: at most 2 per session; default 12 24)",
    )
    b.add_argument(
        "--phases", nargs="+", default=None, metavar="PHASE",
        choices=["idle", "silence", "hearing", "hearing-new", "speaking", "turns", "turns-new"],
        help="--emulator: measure only these phases (hearing-new, turns-new: with no turn remembered); default all",
    )
    b.add_argument("--seconds", type=float, default=8.0, help="--emulator: measured window per phase")
    b.add_argument("--settle", type=float, default=2.0, help="--emulator: seconds into a phase before measuring")
    b.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default=None,
        help="the bridge process's event loop (default: the bridge's, VOICEBRIDGE_LOOP or uvloop when installed); "
        "the other one is measured too, at 25 and 100 calls",
    )
    b.add_argument(
        "--compare", action="store_true",
        help="with --calls: also run the same-run comparisons (aiortc's packet path and RTCP pace, the load free to "
        "preempt the bridge, the other event loop), each beside a run of the default",
    )

    from voicebridge.batch.args import add_arguments as add_batch_arguments

    add_batch_arguments(sub.add_parser("batch", help="run many agent-to-agent calls and write a report"))
    from voicebridge.commands.lab_args import add_compare_arguments, add_test_arguments

    add_test_arguments(sub.add_parser("test", help="run scenarios x impairments, judge each call, write reports"))
    add_compare_arguments(sub.add_parser("compare", help="compare two `test` output folders; flags regressions"))
    k = sub.add_parser("soak", help="many short calls against the emulator; fails on failed calls or leaks")
    k.add_argument("--sequential", type=_positive_int, default=200, help="calls one after another (default 200)")
    k.add_argument(
        "--retained", type=_non_negative_int, default=200,
        help="calls through the server's registry, ended calls kept listed: RSS per ended call (default 200)",
    )
    k.add_argument(
        "--kept-whole", type=_non_negative_int, default=20,
        help="calls kept whole once ended, the reference for RSS per ended call (default 20)",
    )
    k.add_argument("--concurrent", type=_positive_int, default=24, help="calls at once, after those (default 24)")
    k.add_argument(
        "--emulator", choices=["process", "embedded"], default="process",
        help="the emulator in a child process (default) or in this one",
    )
    k.add_argument("--json", action="store_true", help="print one JSON object as stdout's last line")

    d = sub.add_parser("sdp", help="SDP tools")
    dsub = d.add_subparsers(dest="sdp_command", required=True, metavar="SUBCOMMAND")
    x = dsub.add_parser("explain", help="explain an SDP offer/answer and warn about classic mistakes")
    x.add_argument("file", type=Path, help="an SDP file (or RTCSessionDescription JSON), or - for standard input")
    x.add_argument("--other", type=Path, default=None, help="its counterpart (offer or answer): also check the pair")
    x.add_argument("--expect-loopback", action="store_true", help="warn about candidates off 127.0.0.0/8")
    x.add_argument("--json", action="store_true", help="print explain()'s JSON instead of text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd: str = args.command
    try:
        return _run(cmd, args)
    except MissingExtra as e:  # a base install: say which extra to install, no traceback
        print(f"voicebridge {cmd}: {e}", file=sys.stderr)
        return EXIT_STATUS
    except EventLoopChoiceError as e:  # VOICEBRIDGE_LOOP=something else
        print(f"voicebridge {cmd}: {e}", file=sys.stderr)
        return 2


def _run(cmd: str, args: argparse.Namespace) -> int:
    if cmd == "emulator" and args.workers != "1":
        from voicebridge.emulator.workers import main as emulator_workers_main

        return emulator_workers_main(args)
    if cmd == "emulator":
        from voicebridge.emulator.server import main as emulator_main

        return emulator_main(args)
    if cmd == "call":
        from voicebridge.commands.call import main as call_main

        return call_main(args)
    if cmd == "serve":
        from voicebridge.commands.serve import main as serve_main

        return serve_main(args)
    if cmd == "worker":
        from .extras import require

        require("cluster", "voicebridge worker")  # before the cluster's modules import redis
        from voicebridge.cluster.worker import main as worker_main

        return worker_main(args)
    if cmd == "bench" and args.batch:
        if args.emulator:
            print("voicebridge bench: --batch and --emulator are two runs: pick one", file=sys.stderr)
            return 2
        from voicebridge.bench.batch import main as batch_bench_main

        return batch_bench_main(args)
    if cmd == "bench" and args.emulator:
        from voicebridge.bench.emulator import main as emulator_bench_main

        return emulator_bench_main(args)
    if cmd == "bench":
        from voicebridge.bench import main as bench_main

        return bench_main(args)
    if cmd == "sdp":
        from voicebridge.diagnostics.sdp_render import main as sdp_main

        return sdp_main(args)
    if cmd == "batch":
        from voicebridge.batch.cli import main as batch_main

        return batch_main(args)
    if cmd == "test":
        from voicebridge.commands.test import main as test_main

        return test_main(args)
    if cmd == "compare":
        from voicebridge.commands.compare import main as compare_main

        return compare_main(args)
    if cmd == "soak":
        from voicebridge.batch.soak import main as soak_main

        return soak_main(args)
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`voicebridge batch` flags, in a module that imports nothing heavy (cli.py builds every parser on start)."""

from __future__ import annotations

import argparse
from pathlib import Path

MAX_CALLS = 100_000
# Where batch and test run the emulator when there is no endpoint (config.emulator_workers): a child `voicebridge
# emulator --workers auto`, one worker per core. Measured side by side on the 2-core machine (README "Where the
# offline emulator runs"): embedded, the bridge and the emulator share one loop and 12 calls were the most at once
# (16 with a larger budget, the lag refusing the rest); in the child 24 ran at once with the same turn gap per call,
# and 50 calls took 76 s instead of 173.
EMULATOR_WORKERS = "auto"


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_CALLS:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_CALLS}, got {value}")
    return value


def emulator_workers(text: str) -> str:
    if text == "auto" or (text.isascii() and text.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected 0, a whole number of processes or `auto`, got {text!r}")


def add_emulator_workers(p: argparse.ArgumentParser, default: str) -> None:
    """`--emulator-workers`: where the emulator runs when there is no endpoint (config.emulator_workers)."""
    p.add_argument(
        "--emulator-workers", type=emulator_workers, default=None, metavar="N",
        help="with no endpoint, where the emulator runs: 0 = in this process, N = N processes of its own "
        f"(`voicebridge emulator --workers N`, a child), auto = one per usable core (default {default}, "
        "VOICEBRIDGE_EMULATOR_WORKERS)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default="late_order", help="a built-in scenario name or a scenario file path")
    p.add_argument("--calls", type=count, default=10, help="how many calls in all (default 10)")
    p.add_argument("--concurrency", type=count, default=2, help="how many at once (default 2)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default batches/<batch_id>)")
    p.add_argument("--json", action="store_true", help="print the report's headline as stdout's last line")
    p.add_argument("--emulator-url", default="", help="use an emulator already running at this /v1 URL")
    add_emulator_workers(p, EMULATOR_WORKERS)
    p.add_argument(
        "--max-attempts", type=count, default=12,
        help="tries per call while the Realtime server refuses to create it (429/503: at capacity), backing off "
        "between them (default 12; 1: never retry)",
    )
    p.add_argument(
        "--redis", default="", metavar="URL",
        help="run the calls on the cluster's bridge workers sharing this Redis, redis://[:PASSWORD@]HOST:PORT/DB "
        "(each worker's own Realtime backend; --emulator-url is then theirs to set)",
    )

"""`voicebridge batch` flags, in a module that imports nothing heavy (cli.py builds every parser on start)."""

from __future__ import annotations

import argparse
from pathlib import Path

MAX_CALLS = 100_000


def count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_CALLS:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_CALLS}, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default="late_order", help="a built-in scenario name or a scenario file path")
    p.add_argument("--calls", type=count, default=10, help="how many calls in all (default 10)")
    p.add_argument("--concurrency", type=count, default=2, help="how many at once (default 2)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default batches/<batch_id>)")
    p.add_argument("--json", action="store_true", help="print the report's headline as stdout's last line")
    p.add_argument("--emulator-url", default="", help="use an emulator already running at this /v1 URL")
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

"""`voicebridge test` and `voicebridge compare` flags, in a module that imports nothing heavy (cli.py builds every
parser on start)."""

from __future__ import annotations

import argparse
from pathlib import Path

from voicebridge.batch.args import EMULATOR_WORKERS, add_emulator_workers, count


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {value:g}")
    return value


def add_test_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO",
        help="built-in scenario names or .toml paths (default: every built-in scenario with [[expect]] criteria)",
    )
    p.add_argument(
        "--impair", action="append", default=[], metavar="PROFILE_OR_SPEC",
        help="run every scenario under this impairment (good, wifi, 3g, satellite, lossy, or a spec such as "
        "loss=5%%,delay=80ms); repeatable (default: each scenario's own, `good` when it has none)",
    )
    p.add_argument(
        "--impair-seed", type=int, default=None, metavar="S",
        help="repeat r is impaired with seed S + r - 1 (default S: the scenario's impair_seed)",
    )
    p.add_argument("--repeat", type=count, default=1, help="calls per scenario and impairment (default 1)")
    p.add_argument("--concurrency", type=count, default=2, help="calls at once (default 2)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default lab-runs/<test_id>)")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="also write JUnit XML there")
    p.add_argument(
        "--min-pass-rate", type=rate, default=1.0, metavar="R",
        help="exit 0 only when at least this fraction of the calls passed (default 1.0)",
    )
    p.add_argument("--json", action="store_true", help="print report.json's object as stdout's last line")
    p.add_argument("--emulator-url", default="", help="use an emulator already running at this /v1 URL")
    add_emulator_workers(p, EMULATOR_WORKERS)
    p.add_argument(
        "--redis", default="", metavar="URL",
        help="run the calls on the cluster's bridge workers sharing this Redis, redis://[:PASSWORD@]HOST:PORT/DB "
        "(each under its impairment and seed, on the worker's own Realtime backend; the report names the worker)",
    )


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("old", type=Path, metavar="OLD", help="a `voicebridge test` output folder (the baseline)")
    p.add_argument("new", type=Path, metavar="NEW", help="another one (the candidate)")
    p.add_argument("--out", type=Path, default=None, help="where compare.html and compare.json go (default NEW)")
    p.add_argument("--json", action="store_true", help="print compare.json's object as stdout's last line")

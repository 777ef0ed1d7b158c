"""`voicebridge compare OLD NEW [--out DIR] [--json]`: two `voicebridge test` output folders compared per scenario x
impairment (lab/compare.py states the regression rules); writes compare.json and compare.html, prints a table.
Exit status: 0 no regression, 1 a regression, 2 bad input (a missing folder, an unreadable report: named).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from voicebridge.batch.lab_html import render_compare
from voicebridge.lab.compare import CompareInputError, Comparison, FigureChange, compare, load_report

from .test import write_text

EXIT_REGRESSION = 1
EXIT_BAD_INPUT = 2


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _pair(figs: dict[str, FigureChange], name: str, fmt: str = "{:g}") -> str:
    f = figs.get(name)
    if f is None or f.old_median is None or f.new_median is None:
        return "–"
    return f"{fmt.format(f.old_median)}→{fmt.format(f.new_median)}{'!' if f.regression else ''}"


def print_table(cmp: Comparison, stream: TextIO) -> None:
    print(f"compare {cmp.old_test_id} -> {cmp.new_test_id}: {cmp.regressions} regressions", file=stream)
    header = ("scenario[impairment]", "pass OLD", "pass NEW", "gap p50", "gap p95", "overlap s", "interr.",
              "duration s", "tool err.", "")
    rows = []
    for c in cmp.cells:
        figs = {f.name: f for f in c.figures}
        rows.append((
            f"{c.scenario}[{c.impairment}]", f"{_pct(c.old_pass_rate)}/{c.old_runs}",
            f"{_pct(c.new_pass_rate)}/{c.new_runs}{'!' if c.pass_rate_regression else ''}",
            _pair(figs, "turn_gap_p50", "{:.0f}"), _pair(figs, "turn_gap_p95", "{:.0f}"),
            _pair(figs, "overlap_s", "{:.2f}"),
            _pair(figs, "interruptions"), _pair(figs, "duration_s", "{:.1f}"), _pair(figs, "tool_errors"),
            "REGRESSION" if c.regression else "ok",
        ))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip(), file=stream)
    for c in cmp.cells:
        for reason in c.reasons:
            print(f"  {c.scenario}[{c.impairment}]: {reason}", file=stream)
        for k in c.criteria_changed:
            print(f"  {c.scenario}[{c.impairment}]: criterion {k.name!r} passed {k.old_passed}/{k.old_ran} -> "
                  f"{k.new_passed}/{k.new_ran}", file=stream)
    print("  (OLD→NEW, figures are medians over the runs; ! beyond run-to-run noise: the rules are in compare.json)",
          file=stream, flush=True)


def main(args: argparse.Namespace) -> int:
    try:
        old, new = load_report(args.old), load_report(args.new)
    except CompareInputError as e:
        print(f"voicebridge compare: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    cmp = compare(old, new, str(args.old), str(args.new))
    out_dir: Path = args.out if args.out is not None else args.new
    try:
        write_text(out_dir / "compare.json", json.dumps(cmp.model_dump(mode="json"), indent=2) + "\n")
        write_text(out_dir / "compare.html", render_compare(cmp))
    except OSError as e:
        print(f"voicebridge compare: cannot write the comparison: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print_table(cmp, sys.stdout)
    print(f"report: {out_dir / 'compare.html'}", file=sys.stderr)
    if args.json:
        print(json.dumps(cmp.model_dump(mode="json")), flush=True)
    return EXIT_REGRESSION if cmp.regression else 0

"""report.html of `voicebridge test`: the pass/fail matrix (scenario x impairment), then each run with its failing
criteria and their evidence, its timing figures, its timeline figure (the call folder's timeline.svg, drawn by
lab/timeline_figure.py) and a player for its recording; and compare.html of `voicebridge compare`. One page each,
no scripts; every link is relative to the page, so the folder can be moved or served whole.
"""

from __future__ import annotations

import json

from voicebridge.lab.compare import Comparison
from voicebridge.lab.report import LabReport, LabRun, tally

from .html import CSS, _e, _num, _player

LAB_CSS = CSS + """
td.cell{text-align:center;font-weight:600}td.cell.ok{background:#ecf8f0}td.cell.bad{background:#fdeceb}
.crit{margin:.2em 0 .2em 1em}.figure img{max-width:100%;height:auto}
"""
# The call's timeline figure (lab/timeline_figure.py), written beside its summary.json.
TIMELINE = "timeline.svg"


def _cells(report: LabReport) -> dict[tuple[str, str], list[LabRun]]:
    cells: dict[tuple[str, str], list[LabRun]] = {}
    for r in report.runs:
        cells.setdefault((r.scenario, r.impairment), []).append(r)
    return cells


def _matrix(report: LabReport) -> list[str]:
    cells = _cells(report)
    impairments = list(dict.fromkeys(i for _, i in cells))
    scenarios = list(dict.fromkeys(s for s, _ in cells))
    out = ["<h2>Pass rate per scenario and impairment</h2><table><tr><th>scenario</th>"]
    out += [f"<th>{_e(i)}</th>" for i in impairments]
    out.append("</tr>")
    for s in scenarios:
        out.append(f"<tr><td>{_e(s)}</td>")
        for i in impairments:
            runs = cells.get((s, i), [])
            if not runs:
                out.append("<td></td>")
                continue
            _, passed, _, errors, rate = tally(runs)
            cls = "ok" if passed == len(runs) else "bad"
            err = f" ({errors} errors)" if errors else ""
            out.append(f"<td class='cell {cls}'><a href='#{_e(f'{s}[{i}]')}'>{passed}/{len(runs)}</a> &middot; "
                       f"{rate * 100:.0f}%{err}</td>")
        out.append("</tr>")
    out.append("</table>")
    return out


def _timing(r: LabRun) -> str:
    t = r.timing
    if t is None:
        return "<p class=sub>no timing analysis (no packet timeline)</p>"
    gap = t.turn_gap_ms
    return (
        f"<p class=sub>turn gap p50 {_num(gap.p50, '{:.0f}')} ms, p95 {_num(gap.p95, '{:.0f}')} ms &middot; overlap "
        f"{_num(t.overlap_s, '{:.2f}')} s ({_num((t.overlap_ratio or 0) * 100, '{:.1f}')}%) &middot; "
        f"{t.interruptions} interruptions (time to yield {_num(t.time_to_yield_ms, '{:.0f}')} ms) &middot; "
        f"longest silence {_num(t.max_silence_s, '{:.2f}')} s</p>"
    )


def _applied(r: LabRun) -> str:
    if not r.impairment_applied:
        return ""
    parts = [
        f"{_e(direction)}: {s['applied_loss'] * 100:.1f}% lost of {s['packets_in']}, delay p50 "
        f"{s['delay_ms']['p50']:.0f} ms p95 {s['delay_ms']['p95']:.0f} ms, {s['reordered']} reordered"
        for direction, s in r.impairment_applied.items()
    ]
    return f"<p class=sub>impairment applied: {'; '.join(parts)}</p>"


def _criteria(r: LabRun) -> str:
    out = []
    for c in r.criteria:
        mark = ("<span class=sub>skipped</span>" if c.skipped
                else "<span class=ok>pass</span>" if c.passed else "<b class=bad>FAIL</b>")
        line = f"<div class=crit>{mark} <b>{_e(c.name)}</b> <code>[{_e(c.kind)}]</code> {_e(c.detail)}"
        if not c.passed and not c.skipped and c.evidence is not None:
            line += f"<pre>{_e(json.dumps(c.evidence, indent=1))}</pre>"
        out.append(line + "</div>")
    return "".join(out)


def _run(r: LabRun) -> str:
    mark = {"passed": "<span class=ok>passed</span>", "failed": "<b class=bad>FAILED</b>",
            "error": "<b class=bad>ERROR</b>"}[r.outcome]
    why = f"<p class=bad>{_e(r.why)}</p>" if r.why else ""
    links = " ".join(f"<a href='{_e(href)}'>{_e(name)}</a>" for name, href in r.links.items())
    svg = r.links.get(TIMELINE)
    fig = f"<div class=figure><img alt='timeline of {_e(r.call_id)}' src='{_e(svg)}'></div>" if svg else ""
    retry = f" (attempt {r.attempt})" if r.attempt > 1 else ""
    worker = f" &middot; worker <code>{_e(r.worker)}</code>{retry}" if r.worker is not None else ""
    return (
        f"<details{' open' if r.outcome != 'passed' else ''}><summary>{mark} <code>{_e(r.name)}</code> "
        f"{_e(r.call_id)} &middot; {_e(r.end_reason)} &middot; {_num(r.duration_s, '{:.1f}')} s &middot; "
        f"{r.tool_errors}/{r.tool_calls} tool errors{worker}</summary>{why}{_criteria(r)}{_timing(r)}{_applied(r)}{fig}"
        f"<p>{links}</p>{_player(r.links)}</details>"
    )


def render_lab(report: LabReport) -> str:
    cls = "ok" if report.ok else "bad"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>voicebridge test {_e(report.test_id)}</title><style>{LAB_CSS}</style></head><body>",
        f"<h1>Test {_e(report.test_id)}</h1>",
        f"<p class=sub>{_e(', '.join(report.scenarios))} under {_e(', '.join(report.impairments) or 'their own')}"
        f" impairment, {report.repeat} repeat{'s' if report.repeat != 1 else ''} &middot; "
        f"backend {_e(report.backend)} ({_e(report.model)}) "
        f"&middot; concurrency {report.concurrency} &middot; {_num(report.wall_s, '{:.1f}')} s wall"
        + (" &middot; <b class=bad>interrupted</b>" if report.interrupted else "") + "</p>",
        "<div class=cards>",
        f"<div class=card><b class={cls}>{report.pass_rate * 100:.1f}%</b>passed (needed "
        f"{report.min_pass_rate * 100:.0f}%)</div>",
        f"<div class=card><b>{report.total}</b>calls</div>",
        f"<div class=card><b class={'ok' if not report.failed else 'bad'}>{report.failed}</b>failed</div>",
        f"<div class=card><b class={'ok' if not report.errors else 'bad'}>{report.errors}</b>errors</div>",
        f"<div class=card><b>{report.refusals}</b>refused at creation ({report.retried} runs retried, "
        f"{report.gave_up} gave up)</div>",
        "</div>",
    ]
    parts += _matrix(report)
    for (scenario, impairment), runs in _cells(report).items():
        parts.append(f"<h2 id='{_e(f'{scenario}[{impairment}]')}'>{_e(scenario)} [{_e(impairment)}]</h2>")
        parts.extend(_run(r) for r in runs)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+g}"


def render_compare(cmp: Comparison) -> str:
    """compare.html: per scenario x impairment, pass rates, changed criteria and figures, regressions in red."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>voicebridge compare {_e(cmp.old_test_id)} {_e(cmp.new_test_id)}</title>"
        f"<style>{LAB_CSS}</style></head><body>",
        f"<h1>Compare {_e(cmp.old_test_id)} &rarr; {_e(cmp.new_test_id)}</h1>",
        f"<p class=sub>OLD {_e(cmp.old)} &middot; NEW {_e(cmp.new)}</p>",
        f"<p><b class={'bad' if cmp.regression else 'ok'}>{cmp.regressions} regressions</b></p>",
        "<ul>" + "".join(f"<li class=sub>{_e(rule)}</li>" for rule in cmp.rules) + "</ul>",
    ]
    for c in cmp.cells:
        cls = "bad" if c.regression else "ok"
        rates = f"{_num(c.old_pass_rate, '{:.0%}')} of {c.old_runs} &rarr; {_num(c.new_pass_rate, '{:.0%}')} of " \
                f"{c.new_runs} (Fisher p {_num(c.p_value, '{:.3f}')})"
        parts.append(f"<h2>{_e(c.scenario)} [{_e(c.impairment)}] <span class={cls}>"
                     f"{'REGRESSION' if c.regression else 'ok'}</span></h2><p>pass rate {rates}</p>")
        parts.extend(f"<p class=bad>{_e(r)}</p>" for r in c.reasons)
        if c.criteria_changed:
            parts.append("<table><tr><th>criterion changed</th><th>OLD passed</th><th>NEW passed</th></tr>")
            parts.extend(f"<tr><td>{_e(k.name)}</td><td class=n>{k.old_passed}/{k.old_ran}</td>"
                         f"<td class=n>{k.new_passed}/{k.new_ran}</td></tr>" for k in c.criteria_changed)
            parts.append("</table>")
        if c.figures:
            parts.append("<table><tr><th>figure (median)</th><th>OLD</th><th>NEW</th><th>change</th>"
                         "<th>allowed</th></tr>")
            parts.extend(
                f"<tr><td>{_e(f.name)} {_e(f.unit)}</td><td class=n>{_num(f.old_median, '{:g}')}</td>"
                f"<td class=n>{_num(f.new_median, '{:g}')}</td><td class='n {'bad' if f.regression else ''}'>"
                f"{_signed(f.delta)}</td><td class=n>{_num(f.threshold, '+{:g}')}</td></tr>"
                for f in c.figures
            )
            parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

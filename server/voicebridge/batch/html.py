"""report.html: one self-contained page (inline CSS, plots as inline PNG data URIs, each call's timeline figure as
an SVG data URI, no scripts, no external assets) from report.json's data. Links to each call's transcript and
recordings are relative to the page.

Plots use matplotlib's object API (`Figure` on the Agg canvas), never pyplot: no global figure state, safe to
call from any thread or many times in one process.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from voicebridge.lab.timeline_figure import data_uri
from voicebridge.results import BatchReport, BatchTiming, CallRow, Percentiles, RunTiming, succeeded

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.5em}.ok{color:#17803d}.bad{color:#b42318}
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border-bottom:1px solid #eee;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots img{max-width:520px;width:100%;border:1px solid #eee}
img.timeline{display:block;max-width:100%;height:auto;margin:.4em 0}
details{margin:.2em 0}summary{cursor:pointer}code,pre{font-family:ui-monospace,Menlo,monospace;font-size:12px}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;border-radius:4px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "–"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.0))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plots(report: BatchReport) -> list[tuple[str, str]]:
    """(title, data URI) for each plot the data supports."""
    out: list[tuple[str, str]] = []
    reasons = report.end_reasons
    if reasons:
        fig, ax = _figure()
        names = list(reasons)
        colors = ["#17803d" if succeeded(n) else "#b42318" for n in names]
        ax.barh(names, [reasons[n] for n in names], color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("calls")
        out.append(("End reasons", _png(fig)))
    calls = report.calls
    durations = [c.duration_s for c in calls]
    if durations:
        fig, ax = _figure()
        ax.hist(durations, bins=min(30, max(5, len(durations) // 2)), color="#3b6ea8")
        ax.set_xlabel("call duration (s)")
        ax.set_ylabel("calls")
        out.append(("Call duration", _png(fig)))
    by_speaker: dict[str, list[float]] = {}
    for c in calls:
        for r in c.turn_latency:
            by_speaker.setdefault(r.responder, []).append(r.latency_s)
    if any(by_speaker.values()):
        fig, ax = _figure()
        ax.hist(list(by_speaker.values()), bins=20, label=list(by_speaker), stacked=True)
        ax.set_xlabel("turn latency (s): other agent stopped -> this one started")
        ax.set_ylabel("turns")
        ax.legend()
        out.append(("Per-turn latency", _png(fig)))
    tool_ms: dict[str, list[float]] = {}
    for c in calls:
        for t in c.tool_calls:
            tool_ms.setdefault(f"{t.leg}.{t.name}", []).append(t.duration_ms)
    if any(v > 0 for ms in tool_ms.values() for v in ms):  # a plot of zeros (hangup only) says nothing
        fig, ax = _figure()
        names = sorted(tool_ms)
        ax.boxplot([tool_ms[n] for n in names], vert=False)
        ax.set_yticks(range(1, len(names) + 1), names)
        ax.set_xlabel("tool execution (ms)")
        out.append(("Tool latency", _png(fig)))
    return out


def _stats_row(name: str, p: Percentiles, unit: str = "s") -> str:
    cells = "".join(f"<td class=n>{_num(v)}</td>" for v in (p.p50, p.p90, p.p99, p.max, p.mean))
    return f"<tr><td>{_e(name)}</td><td class=n>{p.count}</td>{cells}<td>{_e(unit)}</td></tr>"


def render(report: BatchReport, figures: dict[str, str] | None = None) -> str:
    """The page; `figures`: call id -> its timeline SVG (lab/timeline_figure.py), shown in each call's row."""
    rate = report.success_rate
    failed = report.failed
    parts: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>voicebridge batch {_e(report.batch_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>Batch {_e(report.batch_id)}</h1>",
        f"<p class=sub>{_e(report.scenario)}: {_e(report.title)} &middot; backend "
        f"{_e(report.backend)} ({_e(report.base_url)}) &middot; concurrency "
        f"{_e(report.concurrency)} &middot; {_num(report.wall_s, '{:.1f}')} s wall"
        + (" &middot; <b class=bad>interrupted</b>" if report.interrupted else "")
        + "</p>",
        "<div class=cards>",
        f"<div class=card><b class={'ok' if failed == 0 else 'bad'}>{rate * 100:.1f}%</b>success</div>",
        f"<div class=card><b>{report.total}</b>calls</div>",
        f"<div class=card><b class={'ok' if failed == 0 else 'bad'}>{failed}</b>failed</div>",
        f"<div class=card><b>{report.tool_calls.total}</b>tool calls ({report.tool_calls.errors} errors)</div>",
        f"<div class=card><b>{_num(report.turn_latency_s.p50, '{:.2f}')} s</b>turn latency p50</div>",
        f"<div class=card><b>{report.refusals}</b>refused at creation ({report.retried} calls retried, "
        f"{report.gave_up} gave up)</div>",
        f"<div class=card><b>{report.peak_live}</b>live at once at most (concurrency {report.concurrency})</div>",
        "</div>",
    ]
    figs = plots(report)
    if figs:
        parts.append("<div class=plots>")
        parts.extend(f"<figure><img alt='{_e(t)}' src='{uri}'><figcaption>{_e(t)}</figcaption></figure>"
                     for t, uri in figs)
        parts.append("</div>")
    if report.workers:
        parts.append("<h2>Workers</h2><table><tr><th>worker</th><th>calls</th></tr>")
        parts.extend(f"<tr><td><code>{_e(k)}</code></td><td class=n>{v}</td></tr>" for k, v in report.workers.items())
        parts.append("</table>")
    parts.append("<h2>End reasons</h2><table><tr><th>end_reason</th><th>calls</th></tr>")
    parts.extend(f"<tr><td>{_e(k)}</td><td class=n>{v}</td></tr>" for k, v in report.end_reasons.items())
    parts.append("</table>")
    if report.errors:
        parts.append("<h2>Errors</h2><table><tr><th>call</th><th>end_reason</th><th>error</th></tr>")
        parts.extend(
            f"<tr><td>{_e(r.call_id)}</td><td>{_e(r.end_reason)}</td><td>{_e(r.error)}</td></tr>"
            for r in report.errors
        )
        parts.append("</table>")
    parts.append("<h2>Timings</h2><table><tr><th></th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>max</th>"
                 "<th>mean</th><th>unit</th></tr>")
    parts.append(_stats_row("call duration", report.duration_s))
    parts.append(_stats_row("set-up (connecting -> live)", report.setup_s))
    tl = report.turn_latency_s
    parts.append(_stats_row(f"turn latency, all ({tl.source})", tl))
    for who, p in tl.by_responder.items():
        parts.append(_stats_row(f"turn latency, {who} answering", p))
    if tl.bridge_share_ms.count:
        parts.append(_stats_row("bridge's share of a turn (relay, tools, gating)", tl.bridge_share_ms, "ms"))
    parts.append("</table>")
    if report.timing is not None and report.timing.calls:
        parts.append(_timing_html(report.timing))
    tools = report.tool_calls.by_tool
    if tools:
        parts.append("<h2>Tool calls</h2><table><tr><th>tool</th><th>calls</th><th>errors</th><th>p50 ms</th>"
                     "<th>p99 ms</th><th>error messages</th></tr>")
        for name, row in tools.items():
            d = row.duration_ms
            msgs = "<br>".join(_e(m) for m in row.error_messages)
            parts.append(
                f"<tr><td><code>{_e(name)}</code></td><td class=n>{row.count}</td>"
                f"<td class=n>{row.errors}</td><td class=n>{_num(d.p50, '{:.2f}')}</td>"
                f"<td class=n>{_num(d.p99, '{:.2f}')}</td><td>{msgs}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Calls</h2>")
    parts.extend(_call_html(c, (figures or {}).get(c.call_id)) for c in report.calls)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _timing_html(t: BatchTiming) -> str:
    gaps = t.turn_gap_ms
    rows = [
        "<h2>Timing and talk-over</h2>",
        f"<p>{t.calls} calls with a speech timeline &middot; {t.interruptions} interruptions in "
        f"{t.calls_with_interruptions} calls &middot; turn gap p50 {_num(gaps.p50, '{:.0f}')} ms, p95 "
        f"{_num(gaps.p95, '{:.0f}')} ms (every turn of every call; definitions in docs/lab.md)</p>",
        "<table><tr><th></th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>mean</th>"
        "<th>unit</th></tr>",
        _stats_row("overlap per call", t.overlap_s),
        _stats_row("overlap ratio per call", t.overlap_ratio, ""),
        _stats_row("time to yield per interruption", t.time_to_yield_ms, "ms"),
        _stats_row("longest silence per call", t.max_silence_s),
        "</table>",
    ]
    return "\n".join(rows)


def _timing_line(t: RunTiming | None) -> str:
    if t is None:
        return ""
    ratio = "" if t.overlap_ratio is None else f" ({t.overlap_ratio * 100:.1f}%)"
    yield_ = "" if t.time_to_yield_ms is None else f", time to yield {t.time_to_yield_ms:.0f} ms"
    return (
        f"<p class=timing>overlap {t.overlap_s:.2f} s{ratio} &middot; {t.interruptions} interruptions{yield_} "
        f"&middot; turn gap p50 {_num(t.turn_gap_ms.p50, '{:.0f}')} ms, p95 {_num(t.turn_gap_ms.p95, '{:.0f}')} ms "
        f"&middot; longest silence {t.max_silence_s:.2f} s</p>"
    )


def _call_html(c: CallRow, figure: str | None = None) -> str:
    mark = "<span class=ok>ok</span>" if c.ok else "<span class=bad>FAILED</span>"
    links = " ".join(f"<a href='{_e(href)}'>{_e(name)}</a>" for name, href in c.links.items())
    turns = "\n".join(
        f"[{_num(t.start, '{:6.2f}')}-{_num(t.end, '{:6.2f}')}] {t.speaker}: {t.text}" for t in c.turns
    )
    tools = "".join(
        f"<li><code>{_e(t.leg)}.{_e(t.name)}</code> "
        f"{'ok' if t.ok else '<span class=bad>error</span> ' + _e(t.error)} "
        f"({_num(t.duration_ms, '{:.1f}')} ms)</li>"
        for t in c.tool_calls
    )
    error = f"<p class=bad>{_e(c.error)}</p>" if c.error else ""
    where = (
        f" &middot; worker <code>{_e(c.worker)}</code>" + (
            f" (attempt {c.attempt}, after <code>{_e(c.lost_worker)}</code> was lost)" if c.attempt > 1 else ""
        )
        if c.worker else ""
    )
    audio = _player(c.links)
    return (
        f"<details><summary>{mark} <code>{_e(c.call_id)}</code> {_e(c.end_reason)} "
        f"&middot; {_num(c.duration_s, '{:.1f}')} s &middot; {len(c.turns)} turns "
        f"&middot; {len(c.tool_calls)} tool calls{where}</summary>{error}"
        f"<p>{links}</p>{_timing_line(c.timing)}"
        + (f"<img class=timeline alt='timeline of {_e(c.call_id)}' src='{data_uri(figure)}'>" if figure else "")
        + f"{audio}<pre>{_e(turns) or '(no turns)'}</pre>"
        + (f"<ul>{tools}</ul>" if tools else "")
        + "</details>"
    )


def _player(links: dict[str, str]) -> str:
    """An audio player for the call's recording (the stereo WAV, else each party's WebM); loads on play."""
    wav = [href for name, href in links.items() if name.endswith(".wav")]
    chosen = wav[:1] or [href for name, href in links.items() if name.endswith(".webm")]
    return "".join(f"<audio controls preload=none src='{_e(href)}'></audio>" for href in chosen)

"""A call's timeline as a self-contained SVG: who talked when, where both did, who cut in, the tool calls and the
network blackouts, on the call's clock.

Pure string building from the typed CallSummary (no plotting library, no script, no external reference, no
<style> element: presentation attributes only, so the figure embeds as it is in an HTML report, in an <img>, or
inline next to other SVGs without their rules clashing). Every mark carries a class and `data-*` attributes with its
times in seconds, and a <title> (a tooltip where the SVG is inline), so tests and tools can read it back.

Layout, top to bottom: the caller's lane and the CS agent's lane (speech stretches from `timing.speech`), overlaps
drawn across both lanes, each interruption as a vertical mark at the moment `by` came in with a bar in the
interrupted lane up to when it yielded, the tool row (a dot where each call's result was recorded, its execution
drawn as a bar before it), then the time axis and a legend. A blackout window of a direction (the sending party's
packets dropped) is hatched over that party's lane.
"""

from __future__ import annotations

import base64
import math
from html import escape

from voicebridge.results import CallSummary

WIDTH = 900
LABEL_W = 64  # the lanes' names, left of the plot
RIGHT_PAD = 16
LANE_H = 22
LANES = {"caller": 18, "cs": 48}  # lane top, px
TOOL_Y = 86  # the tool row's centre
AXIS_Y = 104
HEIGHT = 140
COLORS = {"caller": "#2f6fb3", "cs": "#2e9a5b"}
OVERLAP = "#d9453b"
INTERRUPT = "#a4161a"
TOOL_OK, TOOL_FAILED = "#6b4fbb", "#d9453b"
BLACKOUT = "#555555"
# Which lane a direction's blackout hides: the party whose packets it drops.
SENDER = {"caller_to_cs": "caller", "cs_to_caller": "cs"}
_NICE = (1, 2, 5)


def _num(x: float) -> str:
    """An SVG coordinate: 2 decimals, no trailing zeros."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _tick_step(span_s: float, most: int = 12) -> float:
    """The smallest of 1, 2, 5 x 10^k seconds giving at most `most` intervals over the span."""
    exp = math.floor(math.log10(max(span_s, 1e-3) / most))
    while True:
        for m in _NICE:
            step = m * 10.0**exp
            if span_s / step <= most:
                return step
        exp += 1


def span_s(summary: CallSummary) -> float:
    """The time the figure covers: the call, or whatever of it lies beyond its recorded duration."""
    ends = [summary.duration_s, 1.0]
    if summary.timing is not None:
        ends += [s.end for spans in summary.timing.speech.values() for s in spans]
    ends += [c.t for c in summary.tool_calls]
    ends += [w["end"] for w in _blackouts(summary).values()]
    return max(ends)


def _blackouts(summary: CallSummary) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for direction, stats in (summary.impairment or {}).items():
        window = stats.get("blackout")
        if window is not None:
            out[direction] = {"start": window["start"], "end": window["end"]}
    return out


class _Scale:
    def __init__(self, total_s: float, width: int) -> None:
        self.total_s = total_s
        self.plot_w = width - LABEL_W - RIGHT_PAD

    def x(self, t: float) -> float:
        return LABEL_W + min(max(t, 0.0), self.total_s) / self.total_s * self.plot_w


def _rect(cls: str, x0: float, x1: float, y: float, h: float, fill: str, title: str, **data: float | str) -> str:
    attrs = "".join(f' data-{k}="{escape(str(v))}"' for k, v in data.items())
    return (
        f'<rect class="{cls}" x="{_num(x0)}" y="{_num(y)}" width="{_num(max(x1 - x0, 0.5))}" height="{_num(h)}" '
        f'fill="{fill}"{attrs}><title>{escape(title)}</title></rect>'
    )


def render_timeline(summary: CallSummary, width: int = WIDTH) -> str:
    """The SVG document (a string) of one call's timeline."""
    total = span_s(summary)
    sc = _Scale(total, width)
    timing = summary.timing
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="vb-timeline" width="{width}" height="{HEIGHT}" '
        f'viewBox="0 0 {width} {HEIGHT}" role="img" font-family="sans-serif" font-size="11" '
        f'data-span-s="{_num(total)}" data-plot-x="{LABEL_W}" data-plot-width="{_num(sc.plot_w)}">',
        f"<title>{escape(f'Timeline of call {summary.call_id} ({summary.scenario}), {total:.1f} s')}</title>",
        '<defs><pattern id="vb-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#555555" fill-opacity="0.45"/></pattern>'
        "</defs>",
    ]
    # Lanes: their background and name.
    for party, top in LANES.items():
        name = "caller" if party == "caller" else "CS agent"
        parts.append(
            f'<rect class="lane {party}" x="{LABEL_W}" y="{top}" width="{_num(sc.plot_w)}" height="{LANE_H}" '
            f'fill="#f3f4f6"/>'
        )
        parts.append(f'<text x="{LABEL_W - 6}" y="{top + 15}" text-anchor="end" fill="#333333">{name}</text>')
    parts.append(f'<text x="{LABEL_W - 6}" y="{TOOL_Y + 4}" text-anchor="end" fill="#333333">tools</text>')
    # Blackouts, under the speech: the lane still shows what the sender said; the hatch says nobody heard it.
    for direction, w in _blackouts(summary).items():
        sender = SENDER.get(direction)
        if sender is None:
            continue
        parts.append(_rect(
            f"blackout {direction}", sc.x(w["start"]), sc.x(w["end"]), LANES[sender] - 3, LANE_H + 6,
            "url(#vb-hatch)", f"blackout {direction.replace('_', ' ')}: {w['start']:.2f}-{w['end']:.2f} s",
            start=w["start"], end=w["end"],
        ))
    if timing is not None:
        for party, spans in timing.speech.items():
            if party not in LANES:
                continue
            for s in spans:
                parts.append(_rect(
                    f"speech {party}", sc.x(s.start), sc.x(s.end), LANES[party] + 3, LANE_H - 6, COLORS[party],
                    f"{party} speaks {s.start:.2f}-{s.end:.2f} s", start=s.start, end=s.end,
                ))
        top, bottom = LANES["caller"], LANES["cs"] + LANE_H
        for o in timing.overlaps:
            parts.append(_rect(
                "overlap", sc.x(o.start), sc.x(o.end), top, bottom - top, OVERLAP,
                f"overlap {o.start:.2f}-{o.end:.2f} s ({o.duration_s:.2f} s)" + (f", {o.by} came in" if o.by else ""),
                start=o.start, end=o.end,
            ).replace("<rect ", '<rect fill-opacity="0.3" ', 1))
        for c in timing.interruptions:
            x = sc.x(c.at)
            title = f"{c.by} cut in on {c.of} at {c.at:.2f} s; {c.of} yielded {c.time_to_yield_ms:.0f} ms later"
            parts.append(
                f'<g class="interruption" data-by="{escape(c.by)}" data-of="{escape(c.of)}" data-at="{c.at}" '
                f'data-yielded-at="{c.yielded_at}" data-time-to-yield-ms="{c.time_to_yield_ms}">'
                f"<title>{escape(title)}</title>"
                f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{top - 6}" y2="{bottom + 2}" stroke="{INTERRUPT}" '
                f'stroke-width="2"/>'
                f'<path d="M{_num(x - 5)} {top - 10} L{_num(x + 5)} {top - 10} L{_num(x)} {top - 3} Z" '
                f'fill="{INTERRUPT}"/>'
            )
            if c.of in LANES:
                y = LANES[c.of] + LANE_H - 2
                parts.append(
                    f'<line class="yield" x1="{_num(x)}" x2="{_num(sc.x(c.yielded_at))}" y1="{y}" y2="{y}" '
                    f'stroke="{INTERRUPT}" stroke-width="3"/>'
                )
            parts.append("</g>")
    for call in summary.tool_calls:
        x = sc.x(call.t)
        fill = TOOL_OK if call.ok else TOOL_FAILED
        began = call.t - call.duration_ms / 1000.0
        status = "ok" if call.ok else f"failed: {call.error or ''}"
        title = f"{call.leg}.{call.name} at {call.t:.2f} s ({call.duration_ms:.0f} ms, {status})"
        parts.append(
            f'<g class="tool {"ok" if call.ok else "failed"}" data-name="{escape(call.name)}" '
            f'data-leg="{escape(call.leg)}" data-t="{call.t}"><title>{escape(title)}</title>'
            f'<rect x="{_num(sc.x(began))}" y="{TOOL_Y - 2}" width="{_num(max(x - sc.x(began), 0.5))}" height="4" '
            f'fill="{fill}" fill-opacity="0.5"/>'
            f'<circle cx="{_num(x)}" cy="{TOOL_Y}" r="4" fill="{fill}"/>'
            f'<text x="{_num(x + 6)}" y="{TOOL_Y + 4}" font-size="10" fill="{fill}">{escape(call.name)}</text></g>'
        )
    # The time axis.
    step = _tick_step(total)
    parts.append(
        f'<line class="axis" x1="{LABEL_W}" x2="{_num(LABEL_W + sc.plot_w)}" y1="{AXIS_Y}" y2="{AXIS_Y}" '
        f'stroke="#888888"/>'
    )
    n = 0
    while n * step <= total + 1e-9:
        tick = n * step
        at = _num(sc.x(tick))
        parts.append(
            f'<line class="tick" x1="{at}" x2="{at}" y1="{AXIS_Y}" y2="{AXIS_Y + 4}" stroke="#888888"/>'
            f'<text x="{at}" y="{AXIS_Y + 15}" text-anchor="middle" fill="#555555" font-size="10">{tick:g} s</text>'
        )
        n += 1
    parts.append(_legend(summary, width))
    if timing is None:
        parts.append(
            f'<text x="{LABEL_W + 8}" y="{LANES["cs"]}" fill="#777777">no speech timeline for this call (its relay '
            f"has no packet hooks)</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _legend(summary: CallSummary, width: int) -> str:
    y = HEIGHT - 8
    items = [("caller", COLORS["caller"]), ("CS agent", COLORS["cs"]), ("overlap", OVERLAP),
             ("interruption", INTERRUPT), ("tool call", TOOL_OK)]
    if _blackouts(summary):
        items.append(("blackout", BLACKOUT))
    out, x = ['<g class="legend">'], LABEL_W
    for name, color in items:
        out.append(f'<rect x="{x}" y="{y - 8}" width="10" height="8" fill="{color}"/>'
                   f'<text x="{x + 14}" y="{y}" fill="#333333" font-size="10">{name}</text>')
        x += 22 + 6 * len(name)
    if summary.timing is not None:
        t = summary.timing
        ttl = "" if t.time_to_yield_ms is None else f", time to yield {t.time_to_yield_ms:.0f} ms"
        out.append(
            f'<text x="{width - RIGHT_PAD}" y="{y}" text-anchor="end" fill="#555555" font-size="10">'
            f"overlap {t.overlap_s:.2f} s, {len(t.interruptions)} interruptions{ttl}</text>"
        )
    out.append("</g>")
    return "".join(out)


def data_uri(svg: str) -> str:
    """The figure as a data: URI, for an <img> in a self-contained page (no id of it can clash with the page's)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")

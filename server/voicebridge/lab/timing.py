"""A call's timing and talk-over analysis: pure functions over its speech timeline.

The timeline is, per party ("caller", "cs"), the stretches of speech the bridge saw on the relay's packets
(bridge/turns.py records them with the same speech/silence decision it uses for turns), plus the turn records.
Definitions (docs/lab.md has them for readers of summary.json):

* overlap: both parties talking, of positive length (intervals that only touch do not overlap); `by` is the party
  whose stretch started later, None when both started at the same instant.
* interruption: `by` starts while `of` is talking (strictly after `of` started), `of` stops within `yield_window_s`
  of that start, and `by` is still talking when `of` stops. A short "mm-hm" inside the other's speech, or two
  parties starting together, is an overlap but no interruption. time_to_yield_ms = `of`'s stop - `by`'s start.
* silence: nobody talking, between the first and the last speech of the call (the set-up before anybody spoke
  and the hang-up after are not silences); listed from `silence_threshold_s`.
* overlap_ratio: overlap time / time during which at least one party talks (LiveKit's name).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence

from voicebridge.results import (
    CallTiming,
    GapPercentiles,
    Interruption,
    Overlap,
    Silence,
    SpeechInterval,
    TurnRecord,
    TurnTiming,
)

PARTIES = ("caller", "cs")
YIELD_WINDOW_S = 2.0  # cut in on and stopped later than this: the other talked over, it did not yield
SILENCE_THRESHOLD_S = 2.0  # a gap this long is listed as a silence (an awkward pause on a phone line)

Span = tuple[float, float]


def merge(spans: Iterable[Span]) -> list[Span]:
    """The union of `spans`, sorted; spans that overlap or touch become one; empty ones are dropped."""
    out: list[Span] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def intersect(xs: Sequence[Span], ys: Sequence[Span]) -> list[Span]:
    """The stretches of positive length in both of two merged lists."""
    out: list[Span] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if b > a:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def _total(spans: Iterable[Span]) -> float:
    return sum(b - a for a, b in spans)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (the batch report's rule) of a non-empty list."""
    ranked = sorted(values)
    return ranked[max(1, math.ceil(p / 100 * len(ranked))) - 1]


def overlaps(speech: Mapping[str, Sequence[Span]]) -> list[Overlap]:
    caller, cs = merge(speech.get("caller", ())), merge(speech.get("cs", ()))
    found = []
    for a, b in intersect(caller, cs):
        # The stretch of each party that holds this overlap: whose began later came in on the other.
        c0 = next(s for s, e in caller if s <= a < e)
        s0 = next(s for s, e in cs if s <= a < e)
        by = None if c0 == s0 else ("caller" if c0 > s0 else "cs")
        found.append(Overlap(start=_r(a), end=_r(b), duration_s=_r(b - a), by=by))
    return found


def interruptions(speech: Mapping[str, Sequence[Span]], yield_window_s: float = YIELD_WINDOW_S) -> list[Interruption]:
    merged = {p: merge(speech.get(p, ())) for p in PARTIES}
    found = []
    for by, of in (("caller", "cs"), ("cs", "caller")):
        for start, end in merged[by]:
            for o_start, o_end in merged[of]:
                if o_start < start < o_end and o_end - start <= yield_window_s and end > o_end:
                    found.append(
                        Interruption(
                            by=by, of=of, at=_r(start), yielded_at=_r(o_end),
                            time_to_yield_ms=round((o_end - start) * 1000.0, 1),
                        )
                    )
    return sorted(found, key=lambda i: i.at)


def silences(speech: Mapping[str, Sequence[Span]]) -> list[Silence]:
    """Every gap in anybody's speech between the first and the last speech, in order."""
    anyone = merge(s for p in PARTIES for s in speech.get(p, ()))
    return [
        Silence(start=_r(prev[1]), end=_r(nxt[0]), duration_s=_r(nxt[0] - prev[1]))
        for prev, nxt in itertools.pairwise(anyone)
    ]


def analyze(
    speech: Mapping[str, Sequence[Span]],
    turns: Sequence[TurnRecord] = (),
    *,
    yield_window_s: float = YIELD_WINDOW_S,
    silence_threshold_s: float = SILENCE_THRESHOLD_S,
) -> CallTiming:
    """The whole analysis of one call's timeline."""
    # Rounded first, as they are written: the figures of a summary.json are exactly those of its own `speech`.
    merged = {p: merge((_r(a), _r(b)) for a, b in speech.get(p, ())) for p in PARTIES}
    speech_s = _total(merge(s for p in PARTIES for s in merged[p]))
    over = overlaps(merged)
    overlap_s = _total((o.start, o.end) for o in over)
    cuts = interruptions(merged, yield_window_s)
    gaps = silences(merged)
    turn_rows = [TurnTiming(from_=t.from_, to=t.to, at=t.reply_start, gap_ms=t.total_ms) for t in turns]
    gap_values = [t.gap_ms for t in turn_rows]
    return CallTiming(
        speech={p: [SpeechInterval(start=_r(a), end=_r(b)) for a, b in merged[p]] for p in PARTIES},
        speech_s=_r(speech_s),
        overlaps=over,
        overlap_s=_r(overlap_s),
        overlap_ratio=round(overlap_s / speech_s, 4) if speech_s > 0 else None,
        interruptions=cuts,
        time_to_yield_ms=round(statistics.median(c.time_to_yield_ms for c in cuts), 1) if cuts else None,
        yield_window_s=yield_window_s,
        silences=[g for g in gaps if g.duration_s >= silence_threshold_s],
        silence_threshold_s=silence_threshold_s,
        max_silence_s=max((g.duration_s for g in gaps), default=0.0),
        turns=turn_rows,
        turn_gap_ms=(
            GapPercentiles(p50=percentile(gap_values, 50), p95=percentile(gap_values, 95)) if gap_values else None
        ),
    )


def _r(x: float) -> float:
    return round(x, 4)


def format_timing(timing: CallTiming) -> list[str]:
    """Lines for `voicebridge call`'s summary output: the headline figures, then each interruption and long
    silence."""
    ratio = "-" if timing.overlap_ratio is None else f"{timing.overlap_ratio:.1%}"
    gaps = (
        f"turn gap p50 {timing.turn_gap_ms.p50:.0f} ms, p95 {timing.turn_gap_ms.p95:.0f} ms"
        if timing.turn_gap_ms is not None else "no turns"
    )
    yield_ = "" if timing.time_to_yield_ms is None else f" (time to yield {timing.time_to_yield_ms:.0f} ms)"
    lines = [
        f"timing: speech {timing.speech_s:.2f} s, overlap {timing.overlap_s:.2f} s ({ratio}) in "
        f"{len(timing.overlaps)} overlaps, {len(timing.interruptions)} interruptions{yield_}, longest silence "
        f"{timing.max_silence_s:.2f} s, {gaps}"
    ]
    lines += [
        f"  interruption at {c.at:6.2f}: {c.by} cut in on {c.of}, who stopped {c.time_to_yield_ms:.0f} ms later"
        for c in timing.interruptions
    ]
    lines += [f"  silence {s.start:6.2f}-{s.end:6.2f}: {s.duration_s:.2f} s" for s in timing.silences]
    return lines

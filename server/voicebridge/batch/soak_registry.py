"""The soak's registry phases: calls through the server's own registry (signaling/calls.py, in an app made by
`create_app` and served on loopback) with its ended calls kept listed, and what each ended call costs in RSS.

- retained: N calls one after another, each ended call left in the registry (listed, details served). After
  each call has ended and been retired, RSS is measured as everywhere in the soak (after a full garbage
  collection and malloc_trim).
- kept whole: K more calls whose Call objects the soak holds after they end, as the registry did before it
  retired ended calls (peer connections, codecs, transcript, backlog): the reference for what an ended call
  would cost kept whole, measured in the same run.

The slope of each RSS trace, in MiB per 100 calls, is the median of its growth per call across every window
of a tenth of the points, over the second half of the phase (so lazy imports and first-time allocations are
behind it). The baseline is the soak's sequential phase: the same calls, which nothing keeps once ended.

The bound, judged from MIN_SLOPE_CALLS retained and MIN_WHOLE_CALLS kept-whole calls on:

    retained slope - baseline slope  <=  RETAINED_FRACTION x kept-whole slope

It is relative: an ended call may keep at most 5 % of what keeping it whole costs on this machine, this run
(2.4 MiB per call when measured: a bound of ~120 KiB, for ~6 KiB measured). It is noise-proof: besides a
leak, RSS moves in one-off steps (an arena grown, a lazy import, a pool filled: up to 8 MB seen) and jitters
by a page or two. A leak raises every window's growth; a step only the tenth of the windows that contain it,
which the median ignores (up to four steps in a phase), and a window of ten calls or more averages the jitter
and the arenas' chunky growth. No timing enters into it: RSS per call, whatever the speed of the machine.

Always judged, whatever N (no RSS, nothing that depends on the machine): the retained calls are listed by
GET /api/calls (the newest 200, the registry's bound) and their details are served from their folders (detail
with turns, SDP, debug, stats, the events backlog and `?since=`); no Call object and no RTCPeerConnection
outlives its call; the kept-whole calls do hold theirs (so the reference measures what it says).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from voicebridge.config import Settings
from voicebridge.observability.resources import malloc_trim, peer_connections, rss_kb
from voicebridge.results import CallSummary
from voicebridge.scenarios.model import Scenario

from .runner import END_GRACE_S

MIN_SLOPE_CALLS = 50  # fewer retained calls: too few points for a slope; reported, not judged
MIN_WHOLE_CALLS = 5
RETAINED_FRACTION = 0.05
READ_TIMEOUT_S = 30.0


@dataclasses.dataclass
class RegistryFigures:
    """RSS per call of each phase, MiB per 100 calls (None: not measured)."""

    baseline: float | None = None  # the sequential phase: calls nothing keeps
    retained: float | None = None  # the server's registry, ended calls listed
    kept_whole: float | None = None  # ended calls kept whole (the registry before)
    judged: bool = False
    bound: float | None = None  # on retained - baseline

    @property
    def excess(self) -> float | None:
        if self.retained is None or self.baseline is None:
            return None
        return round(self.retained - self.baseline, 3)


@dataclasses.dataclass(frozen=True, slots=True)
class CallNote:
    """What the soak keeps of each call (what it reports): a line, not the call's summary (~20 KiB as Python
    objects), so that RSS measures the calls and not the soak's notes about them."""

    call_id: str
    end_reason: str | None
    error: str | None
    succeeded: bool

    @classmethod
    def of(cls, summary: CallSummary) -> CallNote:
        return cls(summary.call_id, summary.end_reason, summary.error, summary.succeeded)


def rss_mb() -> float:
    """RSS as the soak measures it: memory in use, after the cyclic GC and malloc_trim."""
    gc.collect()
    malloc_trim()
    return round(rss_kb() / 1024.0, 2)


def median_slope(values: list[float]) -> float | None:
    """The median, over every window of a tenth of the points (at least 1 step), of the growth per step across
    it; None for fewer than two points."""
    n = len(values)
    if n < 2:
        return None
    lag = max(1, (n - 1) // 10)
    return statistics.median((values[i + lag] - values[i]) / lag for i in range(n - lag))


def per_100_calls(trace_mb: list[float], second_half: bool = True) -> float | None:
    """The median slope of an RSS trace (one point per call), in MiB per 100 calls."""
    points = trace_mb[len(trace_mb) // 2 :] if second_half else trace_mb
    slope = median_slope(points)
    return None if slope is None else round(slope * 100.0, 3)


def judge(figures: RegistryFigures, retained_calls: int, whole_calls: int) -> str | None:
    """The bound on RSS per retained ended call; a problem (text) or None. Sets `judged` and `bound`."""
    if retained_calls < MIN_SLOPE_CALLS or whole_calls < MIN_WHOLE_CALLS:
        return None
    if figures.kept_whole is None or figures.excess is None:
        return None
    figures.judged = True
    figures.bound = round(RETAINED_FRACTION * figures.kept_whole, 3)
    if figures.excess > figures.bound:
        return (
            f"RSS grows {figures.excess} MiB per 100 ended calls retained (over the baseline), more than "
            f"{RETAINED_FRACTION:.0%} of keeping them whole ({figures.kept_whole} MiB per 100 calls): "
            "the registry keeps too much of an ended call"
        )
    return None


def count_calls() -> int:
    from voicebridge.bridge.call import Call

    return sum(1 for o in gc.get_objects() if isinstance(o, Call))


@dataclasses.dataclass
class RegistryRun:
    notes: list[CallNote] = dataclasses.field(default_factory=list)
    retained_trace_mb: list[float] = dataclasses.field(default_factory=list)
    whole_trace_mb: list[float] = dataclasses.field(default_factory=list)
    listed: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    app: Any = None  # the server's app, kept so its registry (and every ended call in it) lives to the end


async def registry_phases(
    scenario: Scenario,
    settings: Settings,
    folder: Path,
    retained: int,
    kept_whole: int,
    progress: Callable[[str, int, int, CallSummary], None] | None = None,
) -> RegistryRun:
    """Run the retained and kept-whole phases (see the module's docstring); the server stops listening at the
    end but its registry, and so the retained calls, stay in `RegistryRun.app`."""
    from voicebridge.signaling.app import create_app
    from voicebridge.signaling.calls import CallManager
    from voicebridge.signaling.http import MANAGER

    run = RegistryRun()
    app = run.app = await create_app(dataclasses.replace(settings, artifacts_dir=folder))
    manager: CallManager = app[MANAGER]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    calls_before, pcs_before = count_calls(), peer_connections()
    kept: list[Any] = []
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        limit = scenario.max_duration_s + settings.hangup_drain_timeout_s + END_GRACE_S

        async def one(keep: bool) -> CallSummary:
            rec = manager.start(scenario)  # in a task of its own: the call's id goes into its log context only
            call = rec.call
            try:
                await call.wait_ended(limit)
            except TimeoutError:
                manager.hangup(rec, "shutdown", "soak")
                await call.wait_ended(END_GRACE_S)
            summary = call.summary()
            await manager.wait_retired()
            if keep:
                kept.append(call)
            return summary

        phases = (("retained", retained, run.retained_trace_mb), ("kept whole", kept_whole, run.whole_trace_mb))
        for name, n, trace in phases:
            if n:
                trace.append(rss_mb())  # the phase's first point: before its first call
            for i in range(n):
                summary = await asyncio.ensure_future(one(keep=name == "kept whole"))
                if progress is not None:
                    progress(name, i + 1, n, summary)
                run.notes.append(CallNote.of(summary))
                del summary
                trace.append(rss_mb())
            if name == "retained" and n:
                run.problems += _still_held(manager, calls_before, pcs_before)
                ids = [note.call_id for note in run.notes]
                run.listed, problems = await check_served(base_url, ids, manager.max_ended)
                run.problems += problems
        if kept_whole:
            held = peer_connections() - pcs_before
            if held < 2 * kept_whole:
                run.problems.append(
                    f"the {kept_whole} kept-whole calls hold {held} peer connections, not 2 each: the reference "
                    "does not measure whole calls"
                )
    finally:
        kept.clear()
        await runner.cleanup()  # stops listening; the registry (app) stays, with its ended calls
    return run


def _still_held(manager: Any, calls_before: int, pcs_before: int) -> list[str]:
    """What the retained ended calls still hold that they should not (deterministic: objects, not RSS)."""
    from voicebridge.signaling.ended import EndedCall

    problems = []
    whole = [r.call.id for r in manager.records() if r.ended and not isinstance(r.call, EndedCall)]
    if whole:
        problems.append(f"{len(whole)} ended call(s) in the registry still hold their Call object")
    if (calls := count_calls()) > calls_before:
        problems.append(f"Call objects alive after the retained calls ended: {calls} (before them: {calls_before})")
    if (pcs := peer_connections()) > pcs_before:
        problems.append(f"peer connections alive after the retained calls ended: {pcs} (before them: {pcs_before})")
    return problems


async def check_served(base_url: str, ids: list[str], max_listed: int) -> tuple[int, list[str]]:
    """(how many of `ids` GET /api/calls lists, problems) after reading the first and last call's details
    back over HTTP as the console does: detail, sdp, debug, stats, the events backlog and `?since=`. The newest
    `max_listed` must be listed; the first is read by id even when it no longer is (from its folder)."""
    problems: list[str] = []
    timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_S)
    async with aiohttp.ClientSession(base_url, timeout=timeout) as http:

        async def get(path: str) -> Any:
            async with http.get(path) as resp:
                if resp.status != 200:
                    problems.append(f"GET {path}: {resp.status} {(await resp.text())[:200]}")
                    return {}
                return await resp.json()

        listed = {c.get("id") for c in (await get("/api/calls")).get("calls") or []}
        missing = [i for i in ids[-max_listed:] if i not in listed] if max_listed else []
        if missing:
            problems.append(f"{len(missing)} of {len(ids)} ended calls not listed by GET /api/calls ({missing[0]}...)")
        for cid in dict.fromkeys((ids[0], ids[-1])):
            detail = await get(f"/api/calls/{cid}")
            if detail and (detail.get("state") != "ended" or not detail.get("turns") or "legs" not in detail):
                problems.append(f"GET /api/calls/{cid}: not the ended call's summary: {json.dumps(detail)[:200]}")
            sdp = (await get(f"/api/calls/{cid}/sdp")).get("legs") or []
            if len(sdp) != 2 or not all(str(g.get("offer")).startswith("v=0") and g.get("explained") for g in sdp):
                problems.append(f"GET /api/calls/{cid}/sdp: not both legs' SDP explained")
            pcs = (await get(f"/api/calls/{cid}/debug")).get("peer_connections") or []
            if len(pcs) < 2 or not all(pc.get("closed") and pc.get("timeline") for pc in pcs):
                problems.append(f"GET /api/calls/{cid}/debug: not every peer connection's closed record")
            stats = (await get(f"/api/calls/{cid}/stats")).get("stats") or {}
            if not {"caller", "cs"} <= set(stats) or not all(stats[r] for r in ("caller", "cs")):
                problems.append(f"GET /api/calls/{cid}/stats: not both legs' last stats")
            problems += await _check_replay(http, cid)
    return sum(1 for i in ids if i in listed), problems


async def _check_replay(http: aiohttp.ClientSession, cid: str) -> list[str]:
    async def read(since: int) -> list[dict[str, Any]]:
        out = []
        async with http.ws_connect(f"/api/calls/{cid}/events?since={since}") as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    out.append(json.loads(msg.data))
        return out

    where = f"the events of {cid}"
    whole = await read(0)
    seqs = [m["seq"] for m in whole[1:]]
    if not whole or whole[0].get("kind") != "hello" or len(whole) < 3 or whole[-1].get("kind") != "ended":
        return [f"{where}: not hello, the backlog, then ended ({len(whole)} messages)"]
    if seqs != list(range(1, len(seqs) + 1)):
        return [f"{where}: the backlog's seq are not 1..{len(seqs)}"]
    tail = await read(seqs[-2])
    if [m["seq"] for m in tail[1:]] != [seqs[-1]]:
        return [f"{where}: ?since={seqs[-2]} did not resume with only the last message"]
    return []

"""Debug endpoints for one call's peer connections (the records of voicebridge.diagnostics.pc_debug.PcDebug).

GET /api/calls/{id}/debug   everything as one JSON: per peer connection its SDP (raw, ICE passwords masked,
                            and explained), state timeline and a fresh stats snapshot (the last one once
                            closed), plus the call's per-turn latency. `?download=1` sends it as a file
                            (Content-Disposition: attachment) with the stats history as well.
GET /api/calls/{id}/stats   just the stats, fresh now (the console polls it every second).

A call without a `debug` attribute (a test double) simply has no peer connections to show. Once a call has
ended and the registry has retired it (ended.py), both are read from its debug.json: what the peer
connections were when they closed.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from typing import Any

from aiohttp import web

from voicebridge.diagnostics.pc_debug import PcDebug, report_all
from voicebridge.media.loopback import is_local_url
from voicebridge.results import CallSummary

from .ended import EndedCall
from .http import SETTINGS, find_record, json_response


def _debug_of(call: Any) -> PcDebug | None:
    debug = getattr(call, "debug", None)
    return debug if isinstance(debug, PcDebug) else None


def turn_latency(summary: CallSummary) -> dict[str, Any]:
    """The gaps between one agent's turn ending and the other agent's next turn starting (what a listener
    perceives as response time), as JSON."""
    said = sorted(summary.turns, key=lambda t: t.start)
    rows = [
        {
            "responder": cur.speaker,
            "after": prev.speaker,
            "at_s": round(cur.start, 3),
            "latency_s": round(max(0.0, cur.start - prev.end), 3),
            "text": cur.text[:80],
        }
        for prev, cur in itertools.pairwise(said)
        if cur.speaker != prev.speaker
    ]
    return {"source": "turn_gaps", "rows": rows}


async def call_debug(request: web.Request) -> web.Response:
    rec = find_record(request)
    download = request.query.get("download", "") not in ("", "0", "false")
    loopback = is_local_url(request.app[SETTINGS].base_url)
    call = rec.call
    if isinstance(call, EndedCall):
        saved, summary = await asyncio.to_thread(lambda: (call.saved_debug(), call.summary()))
        started_at = saved.get("started_at")
        pcs = report_all(saved, expect_loopback=loopback, history=download)
    else:
        debug = _debug_of(call)
        if debug is not None:
            await debug.poll()
        summary = call.summary()
        started_at = debug.started_at if debug else None
        pcs = debug.report(expect_loopback=loopback, history=download) if debug else []
    body = {
        "call_id": call.id,
        "state": call.state,
        "end_reason": call.end_reason,
        "generated_at": time.time(),
        "call_started_at": summary.started_at,
        "debug_started_at": started_at,
        "peer_connections": pcs,
        "turn_latency": turn_latency(summary),
    }
    headers = {}
    if download:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", rec.call.id)
        headers["Content-Disposition"] = f'attachment; filename="{safe}-debug.json"'
    return json_response(request, body, headers=headers)


async def call_stats(request: web.Request) -> web.Response:
    rec = find_record(request)
    stats: dict[str, Any] = {}
    states: dict[str, Any] = {}
    if isinstance(rec.call, EndedCall):  # the last snapshot of each peer connection, taken as it closed
        saved = await asyncio.to_thread(rec.call.saved_debug)
        for pc in saved.get("peer_connections") or []:
            if isinstance(pc, dict):
                stats[str(pc.get("name"))], states[str(pc.get("name"))] = pc.get("stats"), pc.get("states")
    elif (debug := _debug_of(rec.call)) is not None:
        stats = await debug.poll()
        states = {name: r.states() for name, r in debug.records.items()}
    return json_response(
        request, {"call_id": rec.call.id, "state": rec.call.state, "stats": stats, "states": states}
    )


def add_debug_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls/{call_id}/debug", call_debug)
    app.router.add_get("/api/calls/{call_id}/stats", call_stats)

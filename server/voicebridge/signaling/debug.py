"""Debug endpoints for one call's peer connections (the records of voicebridge.diagnostics.pc_debug.PcDebug).

GET /api/calls/{id}/debug   everything as one JSON: per peer connection its SDP (raw, ICE passwords masked,
                            and explained), state timeline and a fresh stats snapshot (the last one once
                            closed), plus the call's per-turn latency. `?download=1` sends it as a file
                            (Content-Disposition: attachment) with the stats history as well.
GET /api/calls/{id}/stats   just the stats, fresh now (the console polls it every second).

A call without a `debug` attribute (a test double) simply has no peer connections to show.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from aiohttp import web

from voicebridge.diagnostics.pc_debug import PcDebug
from voicebridge.media.loopback import is_local_url

from .http import SETTINGS, find_record, json_response


def _debug_of(call: Any) -> PcDebug | None:
    debug = getattr(call, "debug", None)
    return debug if isinstance(debug, PcDebug) else None


def turn_latency(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's own `turn_latency` when the bridge provides one; else the gaps between one agent's turn
    ending and the other agent's next turn starting (what a listener perceives as response time)."""
    own = summary.get("turn_latency")
    if isinstance(own, list) and own:
        return {"source": "summary.turn_latency", "rows": own}
    said = sorted(
        (t for t in summary.get("turns") or [] if t.get("kind", "said") == "said" and t.get("start") is not None),
        key=lambda t: float(t["start"]),
    )
    rows = []
    for prev, cur in itertools.pairwise(said):
        if cur.get("speaker") == prev.get("speaker") or prev.get("end") is None:
            continue
        rows.append(
            {
                "responder": cur.get("speaker"),
                "after": prev.get("speaker"),
                "at_s": round(float(cur["start"]), 3),
                "latency_s": round(max(0.0, float(cur["start"]) - float(prev["end"])), 3),
                "text": str(cur.get("text") or "")[:80],
            }
        )
    return {"source": "turn_gaps", "rows": rows}


async def call_debug(request: web.Request) -> web.Response:
    rec = find_record(request)
    download = request.query.get("download", "") not in ("", "0", "false")
    debug = _debug_of(rec.call)
    if debug is not None:
        await debug.poll()
    summary = rec.call.summary()
    body = {
        "call_id": rec.call.id,
        "state": rec.call.state,
        "end_reason": rec.call.end_reason,
        "generated_at": time.time(),
        "call_started_at": summary.get("started_at"),
        "debug_started_at": debug.started_at if debug else None,
        "peer_connections": (
            debug.report(expect_loopback=is_local_url(request.app[SETTINGS].base_url), history=download)
            if debug
            else []
        ),
        "turn_latency": turn_latency(summary),
    }
    headers = {}
    if download:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", rec.call.id)
        headers["Content-Disposition"] = f'attachment; filename="{safe}-debug.json"'
    return json_response(request, body, headers=headers)


async def call_stats(request: web.Request) -> web.Response:
    rec = find_record(request)
    debug = _debug_of(rec.call)
    stats = await debug.poll() if debug is not None else {}
    states = {name: r.states() for name, r in debug.records.items()} if debug is not None else {}
    return json_response(
        request, {"call_id": rec.call.id, "state": rec.call.state, "stats": stats, "states": states}
    )


def add_debug_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls/{call_id}/debug", call_debug)
    app.router.add_get("/api/calls/{call_id}/stats", call_stats)

"""Debug recorder for a call's peer connections: SDP, the ICE/DTLS/connection state timeline, RTP stats.

One `PcDebug` per call; every peer connection of the call registers with it, agent legs and browsers alike:

    record = call.debug.attach(pc, "listener 1", kind="browser")   # right after RTCPeerConnection(...)

Attach BEFORE setLocalDescription/setRemoteDescription so the timeline sees ICE gathering from the start
(attaching later still works: the current states are noted at once). Nothing has to be detached: when the
peer connection closes, a last stats snapshot is taken just before (so the numbers stay after the call
ends) and the record keeps its SDP, timeline and that snapshot.

What is recorded, and from where (all aiortc's own events, nothing polled but the stats):
- local and remote SDP, captured on every "signalingstatechange" (ICE passwords masked);
- a timeline of `{"t", "layer", "state"}` for layer in signaling, ice_gathering, ice_connection,
  connection (the pc's events) and dtls (each RTCDtlsTransport's "statechange");
- stats from `pc.getStats()`, taken on demand (`await poll()`), normalised to rows with packets, bytes,
  loss, jitter, round-trip time and bitrates computed from the previous snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection

from .sdp_explain import SdpError, explain

log = logging.getLogger(__name__)

_ICE_PWD = re.compile(r"^(a=ice-pwd:)\S+", re.MULTILINE)
OPUS_CLOCK = 48000  # jitter comes in RTP timestamp units; every audio stream here is Opus at 48 kHz
MIN_POLL_S = 0.25  # polls closer together than this share one snapshot (many consoles may poll at once)
HISTORY = 120  # snapshots kept per peer connection (rows only): two minutes at one poll a second
MAX_TIMELINE = 500
MAX_RECORDS = 64  # per call; the oldest closed ones go first (browsers may join and leave many times)


def mask_sdp(sdp: str) -> str:
    """The SDP with every a=ice-pwd value replaced by ***: it authenticates ICE checks, so never show it."""
    return _ICE_PWD.sub(r"\1***", sdp)


def _plain(stat: Any) -> dict[str, Any]:
    data = dataclasses.asdict(stat) if dataclasses.is_dataclass(stat) and not isinstance(stat, type) else vars(stat)
    return {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in data.items()}


def stats_rows(raw: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per direction of each stats entry, with the same columns whatever its type:
    `key, type, kind, ssrc, packets, bytes, lost, fraction_lost, jitter_ms, rtt_ms` (None when the entry
    type does not carry it). A transport entry gives two rows (sent, received)."""
    rows: list[dict[str, Any]] = []

    def row(key: str, typ: str, s: dict[str, Any], **values: Any) -> None:
        base: dict[str, Any] = {
            "key": key, "type": typ, "kind": s.get("kind"), "ssrc": s.get("ssrc"), "packets": None,
            "bytes": None, "lost": None, "fraction_lost": None, "jitter_ms": None, "rtt_ms": None,
        }
        base.update(values)
        rows.append(base)

    def jitter_ms(s: dict[str, Any]) -> float | None:
        j = s.get("jitter")
        return round(j * 1000 / OPUS_CLOCK, 2) if isinstance(j, int | float) else None

    for sid, s in sorted(raw.items(), key=lambda kv: (str(kv[1].get("type")), kv[0])):
        typ = str(s.get("type"))
        if typ == "outbound-rtp":
            row(sid, typ, s, packets=s.get("packetsSent"), bytes=s.get("bytesSent"))
        elif typ == "inbound-rtp":
            row(sid, typ, s, packets=s.get("packetsReceived"), lost=s.get("packetsLost"), jitter_ms=jitter_ms(s))
        elif typ == "remote-inbound-rtp":
            rtt = s.get("roundTripTime")
            row(
                sid, typ, s, packets=s.get("packetsReceived"), lost=s.get("packetsLost"),
                fraction_lost=s.get("fractionLost"), jitter_ms=jitter_ms(s),
                rtt_ms=round(rtt * 1000, 2) if isinstance(rtt, int | float) else None,
            )
        elif typ == "remote-outbound-rtp":
            row(sid, typ, s, packets=s.get("packetsSent"), bytes=s.get("bytesSent"))
        elif typ == "transport":
            row(f"{sid}:sent", "transport-sent", s, packets=s.get("packetsSent"), bytes=s.get("bytesSent"))
            row(
                f"{sid}:received", "transport-received", s, packets=s.get("packetsReceived"),
                bytes=s.get("bytesReceived"),
            )
    return rows


def add_rates(rows: list[dict[str, Any]], prev: dict[str, tuple[float, Any, Any]], now: float) -> None:
    """Set `kbps` and `pps` on each row from its previous (time, bytes, packets) in `prev`, then update `prev`.
    The first snapshot of a row has no rate (None): a rate needs two points."""
    for r in rows:
        r["kbps"] = r["pps"] = None
        before = prev.get(r["key"])
        if before is not None and now > before[0]:
            dt = now - before[0]
            if isinstance(r["bytes"], int) and isinstance(before[1], int) and r["bytes"] >= before[1]:
                r["kbps"] = round((r["bytes"] - before[1]) * 8 / dt / 1000, 2)
            if isinstance(r["packets"], int) and isinstance(before[2], int) and r["packets"] >= before[2]:
                r["pps"] = round((r["packets"] - before[2]) / dt, 1)
        prev[r["key"]] = (now, r["bytes"], r["packets"])


class PcRecord:
    """Everything recorded about one peer connection. Made by `PcDebug.attach`."""

    def __init__(self, pc: RTCPeerConnection, name: str, kind: str, clock: Callable[[], float]) -> None:
        self.pc = pc
        self.name = name
        self.kind = kind
        self._clock = clock
        self.attached_at = clock()
        self.timeline: deque[dict[str, Any]] = deque(maxlen=MAX_TIMELINE)
        self.local: dict[str, str] | None = None
        self.remote: dict[str, str] | None = None
        self.last_stats: dict[str, Any] | None = None
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.stats_error: str | None = None
        self.closed = False
        self.closed_event = asyncio.Event()  # set with `closed` (PcDebug.wait_closed)
        self._prev: dict[str, tuple[float, Any, Any]] = {}
        self._dtls: dict[int, Any] = {}
        self._states: dict[str, str] = {}
        self._polling: asyncio.Future[dict[str, Any] | None] | None = None
        pc.on("signalingstatechange", self._on_signaling)
        pc.on("icegatheringstatechange", lambda: self._note("ice_gathering", pc.iceGatheringState))
        pc.on("iceconnectionstatechange", self._on_ice)
        pc.on("connectionstatechange", self._on_connection)
        for layer, state in (
            ("signaling", pc.signalingState), ("ice_gathering", pc.iceGatheringState),
            ("ice_connection", pc.iceConnectionState), ("connection", pc.connectionState),
        ):
            self._note(layer, state)
        self._capture_sdp()
        self._watch_dtls()
        self._wrap_close()

    # -- events ---------------------------------------------------------------------------------------------
    def _note(self, layer: str, state: str, detail: str | None = None) -> None:
        if self._states.get(layer if detail is None else f"{layer}:{detail}") == state:
            return  # aiortc re-emits unchanged states after some operations; a timeline lists changes
        self._states[layer if detail is None else f"{layer}:{detail}"] = state
        entry: dict[str, Any] = {"t": round(self._clock(), 4), "layer": layer, "state": state}
        if detail is not None:
            entry["transport"] = detail
        self.timeline.append(entry)
        # aiortc changes the signaling state BEFORE it stores the description (and gathers candidates), so
        # the SDP is looked at again on every later event too, and on report().
        self._capture_sdp()

    def _on_signaling(self) -> None:
        self._note("signaling", self.pc.signalingState)
        self._watch_dtls()  # setRemoteDescription is where BUNDLE swaps the data channel's transport

    def _on_ice(self) -> None:
        self._note("ice_connection", self.pc.iceConnectionState)
        self._watch_dtls()

    def _on_connection(self) -> None:
        self._note("connection", self.pc.connectionState)
        if self.pc.connectionState == "closed":
            self._mark_closed()

    def _mark_closed(self) -> None:
        self.closed = True
        self.closed_event.set()

    def _capture_sdp(self) -> None:
        # After close aiortc still answers these, but the last real ones are what a debugger wants.
        if self.pc.signalingState == "closed":
            return
        for attr in ("localDescription", "remoteDescription"):
            with contextlib.suppress(Exception):
                desc = getattr(self.pc, attr)
                if desc is not None and desc.sdp:
                    value = {"type": desc.type, "sdp": mask_sdp(desc.sdp)}
                    if attr == "localDescription":
                        self.local = value
                    else:
                        self.remote = value

    def _transports(self) -> dict[int, tuple[Any, list[str]]]:
        """The DTLS transports in use, each with the mids it carries."""
        found: dict[int, tuple[Any, list[str]]] = {}

        def add(transport: Any, mid: str | None) -> None:
            if transport is not None:
                found.setdefault(id(transport), (transport, []))[1].append(str(mid))

        with contextlib.suppress(Exception):
            for tr in self.pc.getTransceivers():
                add(tr.receiver.transport, tr.mid)
            if self.pc.sctp is not None:
                add(self.pc.sctp.transport, self.pc.sctp.mid)
        return found

    def _watch_dtls(self) -> None:
        # Only once negotiated: before that the data channel has a transport of its own that BUNDLE then
        # discards, and listing its "closed" would only confuse.
        if self.pc.signalingState != "stable" or self.pc.remoteDescription is None:
            return
        for key, (transport, mids) in self._transports().items():
            if key in self._dtls:
                continue
            label = "mid " + ",".join(mids)
            self._dtls[key] = transport
            transport.on("statechange", lambda t=transport, lb=label: self._note("dtls", t.state, lb))
            self._note("dtls", transport.state, label)

    def _wrap_close(self) -> None:
        # The stats die with the transports: take the last snapshot just before aiortc tears them down.
        # An instance attribute shadows RTCPeerConnection.close for this pc only.
        original: Callable[[], Awaitable[None]] = self.pc.close

        async def close() -> None:
            if not self.closed and self.pc.connectionState not in ("closed", "new"):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.poll(force=True), 2.0)
            await original()
            self._mark_closed()

        setattr(self.pc, "close", close)  # noqa: B010 (mypy: cannot assign to a method)

    # -- stats ----------------------------------------------------------------------------------------------
    async def poll(self, *, force: bool = False) -> dict[str, Any] | None:
        """A stats snapshot now (or the one taken less than MIN_POLL_S ago); None once closed with none."""
        if self.closed or self.pc.connectionState == "closed":
            return self.last_stats
        if not force and self.last_stats is not None and self._clock() - self.last_stats["t"] < MIN_POLL_S:
            return self.last_stats
        if self._polling is not None and not self._polling.done():
            return await asyncio.shield(self._polling)
        self._polling = asyncio.ensure_future(self._take())
        return await asyncio.shield(self._polling)

    async def _take(self) -> dict[str, Any] | None:
        try:
            report = await self.pc.getStats()
        except Exception as e:  # a transport closing under us: keep the last good snapshot
            self.stats_error = f"{type(e).__name__}: {e}"
            return self.last_stats
        raw = {key: _plain(value) for key, value in report.items()}
        now = self._clock()
        rows = stats_rows(raw)
        add_rates(rows, self._prev, now)
        snapshot = {
            "t": round(now, 4),
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "rows": rows,
            "raw": raw,
        }
        self.last_stats = snapshot
        self.history.append({"t": snapshot["t"], "rows": rows})
        return snapshot

    # -- views ----------------------------------------------------------------------------------------------
    def states(self) -> dict[str, Any]:
        return {
            "signaling": self._states.get("signaling"),
            "ice_gathering": self._states.get("ice_gathering"),
            "ice_connection": self._states.get("ice_connection"),
            "connection": self._states.get("connection"),
            "dtls": {k.split(":", 1)[1]: v for k, v in self._states.items() if k.startswith("dtls:")},
        }

    def export(self) -> dict[str, Any]:
        """Everything recorded, as plain JSON data (what debug.json keeps of an ended call); `report_of` turns
        it into the API's view, so a live record and a saved one are shown the same way."""
        self._capture_sdp()
        return {
            "name": self.name,
            "kind": self.kind,
            "attached_at": round(self.attached_at, 4),
            "closed": self.closed,
            "states": self.states(),
            "timeline": list(self.timeline),
            "local": self.local,
            "remote": self.remote,
            "stats": self.last_stats,
            "stats_error": self.stats_error,
            "stats_history": list(self.history),
        }

    def report(self, *, expect_loopback: bool = False, history: bool = False) -> dict[str, Any]:
        return report_of(self.export(), expect_loopback=expect_loopback, history=history)


def report_of(saved: dict[str, Any], *, expect_loopback: bool = False, history: bool = False) -> dict[str, Any]:
    """The API's view of one exported peer connection record: its SDP explained, the stats history only when
    asked for (the download)."""
    explained: dict[str, Any] | None = None
    error: str | None = None
    local, remote = saved.get("local"), saved.get("remote")
    if isinstance(local, dict) and isinstance(local.get("sdp"), str):
        try:
            other = remote.get("sdp") if isinstance(remote, dict) else None
            other = other if isinstance(other, str) else None
            explained = explain(local["sdp"], other, expect_loopback=expect_loopback)
        except SdpError as e:
            error = str(e)
    out: dict[str, Any] = {
        "name": saved.get("name"),
        "kind": saved.get("kind"),
        "attached_at": saved.get("attached_at"),
        "closed": saved.get("closed"),
        "states": saved.get("states"),
        "timeline": saved.get("timeline") or [],
        "local": local,
        "remote": remote,
        "explained": explained,
        "explain_error": error,
        "stats": saved.get("stats"),
        "stats_error": saved.get("stats_error"),
    }
    if history:
        out["stats_history"] = saved.get("stats_history") or []
    return out


class PcDebug:
    """The debug records of one call's peer connections, in the order they were attached.

    Times (`t`) are seconds since this object was made (a Call makes it at creation, so they line up with
    the call's event times closely enough to read side by side)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.started_at = time.time()
        self.records: dict[str, PcRecord] = {}

    def now(self) -> float:
        return time.monotonic() - self._t0

    def attach(self, pc: RTCPeerConnection, name: str, *, kind: str = "browser") -> PcRecord:
        """Record this peer connection under `name` (made unique with " #2", " #3"... if taken).
        `kind` is free text shown in the console; the bridge uses "agent" for its legs."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a peer connection needs a non-empty name, got {name!r}")
        unique, n = name, 1
        while unique in self.records:
            n += 1
            unique = f"{name} #{n}"
        self._evict()
        record = PcRecord(pc, unique, kind, self.now)
        self.records[unique] = record
        return record

    def _evict(self) -> None:
        closed = [k for k, r in self.records.items() if r.closed]
        while len(self.records) >= MAX_RECORDS and closed:
            del self.records[closed.pop(0)]

    async def poll(self) -> dict[str, dict[str, Any] | None]:
        """A fresh stats snapshot of every open peer connection (the last one of closed ones)."""
        names = list(self.records)
        snaps = await asyncio.gather(*(self.records[n].poll() for n in names), return_exceptions=True)
        out: dict[str, dict[str, Any] | None] = {}
        for n, s in zip(names, snaps, strict=True):
            if isinstance(s, BaseException):
                log.warning("stats of %s: %r", n, s)
                out[n] = self.records[n].last_stats
            else:
                out[n] = s
        return out

    def report(self, *, expect_loopback: bool = False, history: bool = False) -> list[dict[str, Any]]:
        """Every peer connection's record; `expect_loopback` applies to the bridge's own ("agent") ones."""
        return report_all(self.export(), expect_loopback=expect_loopback, history=history)

    def export(self) -> dict[str, Any]:
        """Every record as plain JSON data, for the call's debug.json."""
        return {"started_at": self.started_at, "peer_connections": [r.export() for r in self.records.values()]}

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until every recorded peer connection has closed, so a saved record shows
        their last states; False when some had not."""
        waits = [r.closed_event.wait() for r in self.records.values() if not r.closed]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            return False
        return True


def report_all(
    exported: dict[str, Any], *, expect_loopback: bool = False, history: bool = False
) -> list[dict[str, Any]]:
    """`PcDebug.report` of an export (live or read back from debug.json)."""
    return [
        report_of(pc, expect_loopback=expect_loopback and pc.get("kind") == "agent", history=history)
        for pc in exported.get("peer_connections") or []
        if isinstance(pc, dict)
    ]

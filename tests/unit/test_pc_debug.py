"""PcDebug on real aiortc peers on loopback: SDP capture (masked), the state timeline, stats, close.

Plus the pure parts: stats rows from getStats entries and bitrates from successive snapshots.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from voicebridge.diagnostics.pc_debug import PcDebug, add_rates, mask_sdp, stats_rows

pytestmark = pytest.mark.unit


def connected(pc: RTCPeerConnection) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def check() -> None:
        if pc.connectionState == "connected" and not fut.done():
            fut.set_result(None)

    pc.on("connectionstatechange", check)
    return fut


@pytest.fixture
async def pair() -> AsyncIterator[tuple[PcDebug, RTCPeerConnection, RTCPeerConnection]]:
    debug = PcDebug()
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    debug.attach(offerer, "bridge", kind="agent")
    debug.attach(answerer, "browser")
    offerer.addTransceiver("audio", direction="sendrecv")
    offerer.createDataChannel("oai-events")
    try:
        yield debug, offerer, answerer
    finally:
        await offerer.close()
        await answerer.close()


async def negotiate(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    ready = asyncio.gather(connected(offerer), connected(answerer))
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    await asyncio.wait_for(ready, 10)


def layer(record: Any, name: str) -> list[str]:
    return [e["state"] for e in record.timeline if e["layer"] == name]


async def test_records_sdp_masked_and_explained(pair: Any) -> None:
    debug, offerer, answerer = pair
    await negotiate(offerer, answerer)
    rec = debug.records["bridge"]
    assert rec.local["type"] == "offer" and rec.remote["type"] == "answer"
    real_pwd = re.search(r"a=ice-pwd:(\S+)", offerer.localDescription.sdp)
    assert real_pwd and real_pwd.group(1) not in rec.local["sdp"]
    assert "a=ice-pwd:***" in rec.local["sdp"] and "a=ice-pwd:***" in rec.remote["sdp"]
    report = rec.report(expect_loopback=True)
    ex = report["explained"]
    assert [m["kind"] for m in ex["media"]] == ["audio", "application"]
    assert any(c["name"] == "opus" for c in ex["media"][0]["codecs"])
    assert ex["counterpart"]["role"] == "answer"
    assert ex["warnings"] == [] and report["explain_error"] is None
    assert real_pwd.group(1) not in str(report)


async def test_timeline_follows_ice_dtls_and_connection(pair: Any) -> None:
    debug, offerer, answerer = pair
    await negotiate(offerer, answerer)
    rec = debug.records["bridge"]
    assert layer(rec, "signaling") == ["stable", "have-local-offer", "stable"]
    assert layer(rec, "ice_gathering") == ["new", "gathering", "complete"]
    assert layer(rec, "connection") == ["new", "connecting", "connected"]
    assert layer(rec, "dtls")[-1] == "connected"
    # BUNDLE: one DTLS transport carries both sections (the data channel's own one is never listed).
    assert rec.states()["dtls"] == {"mid 0,1": "connected"}
    times = [e["t"] for e in rec.timeline]
    assert times == sorted(times)
    order = [(e["layer"], e["state"]) for e in rec.timeline]
    assert order.index(("ice_gathering", "complete")) < order.index(("connection", "connected"))
    assert order.index(("ice_connection", "checking")) < order.index(("dtls", "connecting"))
    # The answerer's view, from the other side of the same connection.
    other = debug.records["browser"]
    assert layer(other, "signaling") == ["stable", "have-remote-offer", "stable"]
    assert other.local["type"] == "answer"


async def test_stats_poll_and_last_snapshot_survives_close(pair: Any) -> None:
    debug, offerer, answerer = pair
    await negotiate(offerer, answerer)
    snaps = await debug.poll()
    assert set(snaps) == {"bridge", "browser"}
    rows = {r["type"]: r for r in snaps["bridge"]["rows"]}
    assert rows["transport-sent"]["bytes"] > 0 and rows["transport-received"]["bytes"] > 0  # DTLS + SCTP
    assert rows["transport-sent"]["kbps"] is None  # a rate needs two snapshots
    assert await debug.records["bridge"].poll() is snaps["bridge"]  # polled again at once: the same one
    await offerer.close()
    rec = debug.records["bridge"]
    assert rec.closed and layer(rec, "connection")[-1] == "closed"
    assert rec.last_stats is not None and rec.last_stats["t"] >= snaps["bridge"]["t"]
    assert (await debug.poll())["bridge"] is rec.last_stats  # closed: the last snapshot stays
    assert rec.report()["local"]["sdp"].startswith("v=0")  # and so does the SDP


async def test_attach_names_are_unique_and_required() -> None:
    debug = PcDebug()
    pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(3)]
    try:
        names = [debug.attach(pc, "listener").name for pc in pcs]
        assert names == ["listener", "listener #2", "listener #3"]
        with pytest.raises(ValueError, match="non-empty name"):
            debug.attach(pcs[0], " ")
        assert [r["name"] for r in debug.report()] == names
    finally:
        for pc in pcs:
            await pc.close()


def test_mask_sdp_masks_every_ice_pwd() -> None:
    sdp = "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:secret1\r\nm=audio 9 x 111\r\na=ice-pwd:secret2\r\n"
    masked = mask_sdp(sdp)
    assert "secret" not in masked and masked.count("a=ice-pwd:***") == 2 and "a=ice-ufrag:abcd" in masked


def test_stats_rows_and_rates() -> None:
    raw: dict[str, dict[str, Any]] = {
        "out": {"type": "outbound-rtp", "kind": "audio", "ssrc": 1, "packetsSent": 100, "bytesSent": 10_000},
        "in": {"type": "inbound-rtp", "kind": "audio", "ssrc": 2, "packetsReceived": 90, "packetsLost": 3,
               "jitter": 480},
        "rin": {"type": "remote-inbound-rtp", "kind": "audio", "ssrc": 1, "packetsReceived": 99,
                "packetsLost": 1, "jitter": 96, "roundTripTime": 0.0125, "fractionLost": 0.01},
        "tr": {"type": "transport", "packetsSent": 120, "packetsReceived": 110, "bytesSent": 12_000,
               "bytesReceived": 11_000},
    }
    rows = {r["key"]: r for r in stats_rows(raw)}
    assert rows["in"]["jitter_ms"] == 10.0 and rows["in"]["lost"] == 3  # 480 ticks at 48 kHz
    assert rows["rin"]["rtt_ms"] == 12.5 and rows["rin"]["fraction_lost"] == 0.01
    assert rows["tr:sent"]["bytes"] == 12_000 and rows["tr:received"]["packets"] == 110
    prev: dict[str, tuple[float, Any, Any]] = {}
    first = list(rows.values())
    add_rates(first, prev, 10.0)
    assert all(r["kbps"] is None and r["pps"] is None for r in first)
    raw["out"].update(packetsSent=150, bytesSent=16_000)  # 6000 bytes and 50 packets in 2 s
    second = stats_rows(raw)
    add_rates(second, prev, 12.0)
    out = next(r for r in second if r["key"] == "out")
    assert out["kbps"] == 24.0 and out["pps"] == 25.0
    assert next(r for r in second if r["key"] == "in")["kbps"] is None  # inbound-rtp has no byte count
    raw["out"].update(packetsSent=10, bytesSent=100)  # a counter that went back (new SSRC): no rate
    third = stats_rows(raw)
    add_rates(third, prev, 13.0)
    assert next(r for r in third if r["key"] == "out")["kbps"] is None

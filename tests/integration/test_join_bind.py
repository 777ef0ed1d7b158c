"""OutboundAudio.bind: the answerer side of the pass-through (the browser offers, the server answers)."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from voicebridge.media.passthrough import InboundTap, OutboundAudio, RtpAudio

pytestmark = pytest.mark.integration


async def test_bound_transceiver_sends_pass_through_and_forces_its_direction() -> None:
    browser = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        sendrecv = OutboundAudio()  # the browser asks to send and receive
        sendrecv.add_to(browser, "sendrecv")
        await browser.setLocalDescription(await browser.createOffer())
        await server.setRemoteDescription(RTCSessionDescription(browser.localDescription.sdp, "offer"))
        out = OutboundAudio()
        (transceiver,) = server.getTransceivers()
        out.bind(transceiver, "sendonly")  # ...but the server only sends (a listener)
        with pytest.raises(RuntimeError, match="already bound"):
            out.bind(transceiver)
        with pytest.raises(ValueError, match="direction"):
            OutboundAudio().bind(transceiver, "recvonly")
        await server.setLocalDescription(await server.createAnswer())
        assert "a=sendonly" in server.localDescription.sdp
        assert sendrecv.receiver is not None
        tap = InboundTap(sendrecv.receiver)  # the browser side hears what the server sends
        got: asyncio.Future[RtpAudio] = asyncio.get_running_loop().create_future()
        tap.subscribe(lambda p: got.done() or got.set_result(p))
        await browser.setRemoteDescription(RTCSessionDescription(server.localDescription.sdp, "answer"))
        connected = asyncio.Event()
        server.on("connectionstatechange", lambda: server.connectionState == "connected" and connected.set())
        await asyncio.wait_for(connected.wait(), 10)
        payload = b"\xfc" + b"opus" * 10  # CELT 20 ms TOC byte
        seq = 0

        async def pump() -> None:
            nonlocal seq
            while not got.done():  # until the first one arrives (the transport may need a moment)
                out.send(RtpAudio(payload, seq * 960, seq, False, 0.0), "test")
                seq += 1
                await asyncio.sleep(0.02)  # a packet per 20 ms frame, as a real source would send

        pumping = asyncio.ensure_future(pump())
        pkt = await asyncio.wait_for(got, 10)
        pumping.cancel()
        assert pkt.payload == payload  # byte-identical, never decoded or encoded
        assert out.packets_sent >= 1
    finally:
        await browser.close()
        await server.close()

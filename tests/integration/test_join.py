"""Browsers joining a live call, played by aiortc peers (offerers, like a browser): listen, take over, hand back.

The server is the real signaling app with the real Call against the embedded emulator; the "browser" makes the
offer, POSTs it with its join token and plays what it receives through aiortc's normal decoder, counting loud
frames per track. The human's microphone speaks the caller persona's first scripted line with espeak (the same
Voice the emulator uses), so the CS emulator's grammar recognizer can hear it exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from tests.integration.conftest import _VOICE
from voicebridge.bridge.call import Call
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.emulator.server import Emulator
from voicebridge.emulator.track import SpeechTrack
from voicebridge.realtime.transports import PcmRelay, leg_factory
from voicebridge.scenarios.model import Scenario, load_scenario, normalize_phrase
from voicebridge.signaling.app import create_app
from voicebridge.signaling.http import MANAGER
from voicebridge.signaling.join import PARTICIPANTS
from voicebridge.signaling.tokens import TokenSigner

pytestmark = pytest.mark.integration
CALL_S = 60.0
# How long the legs may take to connect, and a join to wait for the call to go live: a bound for a hang only, far
# beyond a set-up on a loaded machine (the default, 10 s, is the product's, not the tests').
SETUP_S = 60.0
SECRET = "integration-test-secret-0123456789"
LATE_ORDER = load_scenario("late_order")
HUMAN_LINE = LATE_ORDER.caller.script[0].say or ""
Client = TestClient[Any, Any]


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> AsyncIterator[Client]:
    monkeypatch.setenv("VOICEBRIDGE_TOKEN_SECRET", SECRET)  # so a test can make tokens (e.g. expired ones)
    settings = dataclasses.replace(
        Settings(), base_url=emulator.base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path, session_timeout_s=SETUP_S
    )
    async with TestClient(TestServer(await create_app(settings))) as c:
        yield c


class Browser:
    """An offerer shaped like web/join.js: listen = two recvonly audio m-lines; take over = one sendrecv (mic)."""

    def __init__(self, role: str, mic: bool | None = None) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic: SpeechTrack | None = None
        if mic if mic is not None else role == "takeover":
            self.mic = SpeechTrack(_VOICE.silence_packet)
            self.pc.addTransceiver(self.mic, direction="sendrecv")
            if role == "listen":
                self.pc.addTransceiver("audio", direction="recvonly")
        else:
            for _ in range(2):
                self.pc.addTransceiver("audio", direction="recvonly")
        self.loud: dict[str, int] = {}
        self.frames: dict[str, int] = {}
        self._waiters: list[tuple[str, int, asyncio.Future[None]]] = []
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self.participant_id = ""
        self.answer = ""

    def _on_track(self, track: Any) -> None:
        mids = [t.mid for t in self.pc.getTransceivers() if t.receiver.track is track]
        party = ("caller", "cs")[int(mids[0] or 0)] if len(self.pc.getTransceivers()) > 1 else "cs"

        async def read() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.frames[party] = self.frames.get(party, 0) + 1
                if np.abs(frame.to_ndarray()).max() > 300:
                    self.loud[party] = self.loud.get(party, 0) + 1
                    for p, n, fut in self._waiters:
                        if p == party and self.loud[party] >= n and not fut.done():
                            fut.set_result(None)

        self._readers.append(asyncio.ensure_future(read()))

    async def wait_loud(self, party: str, frames: int = 25, within: float = CALL_S) -> None:
        if self.loud.get(party, 0) >= frames:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((party, frames, fut))
        await asyncio.wait_for(fut, within)

    async def join(self, client: Client, call_id: str, token: str, query: str = "") -> int:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        resp = await client.post(
            f"/api/calls/{call_id}/join{query}",
            data=self.pc.localDescription.sdp,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"},
        )
        if resp.status != 201:
            self.error = await resp.json()
            return resp.status
        assert resp.content_type == "application/sdp"
        self.participant_id = resp.headers["X-Participant-Id"]
        self.answer = await resp.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer, type="answer"))
        return resp.status

    async def say(self, text: str) -> None:
        assert self.mic is not None
        utterance = await _VOICE.speak(text, LATE_ORDER.caller.espeak_voice, LATE_ORDER.caller.espeak_speed)
        self.mic.play(utterance.packets, "human")

    async def close(self) -> None:
        await self.pc.close()
        for r in self._readers:
            r.cancel()


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[..., Browser]]:
    made: list[Browser] = []

    def make(role: str, mic: bool | None = None) -> Browser:
        b = Browser(role, mic)
        made.append(b)
        return b

    yield make
    for b in made:
        await b.close()


class Watch:
    """The call's own event stream (in process), with futures for what a test waits on."""

    def __init__(self, call: Any) -> None:
        self.records: list[dict[str, Any]] = []
        self._waiters: list[tuple[Callable[[dict[str, Any]], bool], asyncio.Future[dict[str, Any]]]] = []
        call.on("event", self._on)

    def _on(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        for pred, fut in self._waiters:
            if not fut.done() and pred(rec):
                fut.set_result(rec)

    async def wait(self, pred: Callable[[dict[str, Any]], bool], within: float = CALL_S) -> dict[str, Any]:
        for rec in self.records:
            if pred(rec):
                return rec
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, within)
        except TimeoutError:
            seen = [(r["leg"], r["event"].get("type")) for r in self.records[-15:]]
            raise AssertionError(f"waited {within} s in vain; last events: {seen}") from None

    def notes(self, kind: str) -> list[dict[str, Any]]:
        return [r["event"] for r in self.records if r["leg"] == "bridge" and r["event"]["type"] == kind]


def note(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["leg"] == "bridge" and r["event"]["type"] == kind


def cs_event(kind: str, test: Callable[[dict[str, Any]], bool] = lambda e: True) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r["leg"] == "cs" and r["direction"] == "in" and r["event"]["type"] == kind and test(r["event"])


async def start_call(client: Client) -> tuple[str, Any, Watch]:
    resp = await client.post("/api/calls", json={"scenario": "late_order"})
    assert resp.status == 201, await resp.text()
    call_id = (await resp.json())["id"]
    call = client.app[MANAGER].get(call_id).call  # type: ignore[union-attr]
    return call_id, call, Watch(call)


async def token(client: Client, call_id: str, role: str, **extra: Any) -> str:
    resp = await client.post(f"/api/calls/{call_id}/tokens", json={"role": role, **extra})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert (body["role"], body["call_id"]) == (role, call_id) and body["expires_at"] > time.time()
    return str(body["token"])


def directions(sdp: str) -> list[str]:
    return [line[2:] for line in sdp.splitlines() if line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive")]


# -- listen ---------------------------------------------------------------------------------------------------
async def test_listeners_hear_both_parties_and_never_disturb_the_call(
    client: Client, browsers: Callable[..., Browser]
) -> None:
    call_id, call, watch = await start_call(client)
    first, second = browsers("listen"), browsers("listen")
    assert await first.join(client, call_id, await token(client, call_id, "listen")) == 201
    assert directions(first.answer) == ["sendonly", "sendonly"]  # the server only ever sends to a listener
    assert await second.join(client, call_id, await token(client, call_id, "listen")) == 201
    await first.wait_loud("cs")  # the CS agent's greeting
    await first.wait_loud("caller")  # the caller agent's answer
    await second.wait_loud("cs")
    await second.close()  # one leaves mid-call
    await watch.wait(note("participant.left"))
    ended = await watch_end(call)
    assert ended["end_reason"] == "caller_hangup"
    assert [t["name"] for t in ended["tool_calls"] if t["leg"] == "cs"] == ["lookup_order", "issue_refund"]
    joined = watch.notes("participant.joined")
    assert [j["role"] for j in joined] == ["listen", "listen"]
    left = {n["participant_id"]: n["reason"] for n in watch.notes("participant.left")}
    assert left[second.participant_id].startswith("browser connection")
    assert left[first.participant_id] == "call ended"  # closed by the server with the call
    assert first.pc.connectionState == "closed" or await wait_state(first.pc, "closed")
    assert ended["relay"]["listeners"]["count"] == 0


async def watch_end(call: Any) -> dict[str, Any]:
    """The call's summary once it has ended, as JSON (what GET /api/calls/{id} shows)."""
    await call.wait_ended(CALL_S)
    summary: dict[str, Any] = call.summary().model_dump(mode="json")
    return summary


async def wait_state(pc: RTCPeerConnection, state: str) -> bool:
    done = asyncio.get_running_loop().create_future()

    def changed() -> None:
        if pc.connectionState == state and not done.done():
            done.set_result(True)

    pc.on("connectionstatechange", changed)
    changed()
    return bool(await asyncio.wait_for(done, 10))


# -- take over ------------------------------------------------------------------------------------------------
async def spy_on_cs_rtp(emulator: Emulator, call: Any, watch: Watch) -> list[tuple[int, int]]:
    """(sequence, timestamp) of every RTP packet the CS emulator receives from the bridge, from now on.

    Read from the emulator's own InboundTap: after a stream's first packet the tap takes packets off the ICE
    socket (the short receive path), so the receiver's _handle_rtp_packet no longer sees them."""
    await watch.wait(lambda r: True)  # legs are connected once events flow
    session = emulator.sessions[call.legs["cs"].call_id]
    assert session.tap is not None
    seen: list[tuple[int, int]] = []
    session.tap.subscribe(lambda packet: seen.append((packet.sequence, packet.timestamp)))
    return seen


async def test_human_takes_over_is_heard_and_answered_then_hands_back(
    client: Client, emulator: Emulator, browsers: Callable[..., Browser]
) -> None:
    call_id, call, watch = await start_call(client)
    rtp = await spy_on_cs_rtp(emulator, call, watch)
    human = browsers("takeover")
    takeover = await token(client, call_id, "takeover")
    assert await human.join(client, call_id, takeover) == 201
    assert directions(human.answer) == ["sendrecv"]
    await watch.wait(note("takeover.started"))
    assert call.relay.on_hold
    await human.wait_loud("cs")  # the human hears the CS agent's greeting
    await watch.wait(cs_event("output_audio_buffer.stopped"))
    await human.say(HUMAN_LINE)
    heard = await watch.wait(cs_event("conversation.item.input_audio_transcription.completed"))
    assert heard["event"]["transcript"] == normalize_phrase(HUMAN_LINE)  # exactly the human's line
    refund = await watch.wait(cs_event("response.output_audio_transcript.done", lambda e: "refund" in e["transcript"]))
    tools = [t.name for t in call.tool_calls if t.leg == "cs"]
    assert tools == ["lookup_order", "issue_refund"]  # the CS agent's tools work while a human is the caller
    # Nothing of this reached the caller agent: it was on hold, and it has not spoken since.
    caller_said = [
        r
        for r in watch.records
        if r["leg"] == "caller"
        and r["event"]["type"] == "conversation.item.added"
        and r["event"]["item"].get("role") == "user"
        and r["t"] > refund["t"]
    ]
    assert caller_said == []
    resp = await client.post(f"/api/calls/{call_id}/handback", headers={"Authorization": f"Bearer {takeover}"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    # Handed back while the CS agent is still saying its line: the caller agent gets the floor when it stops.
    assert body["briefing"] == "after the CS agent's current line" and body["told_caller_agent"] == ""
    assert not call.relay.on_hold
    ended = await watch_end(call)
    assert (ended["end_reason"], ended["ended_by"]) == ("caller_hangup", "caller")
    handback = watch.notes("takeover.handback")
    assert handback[0]["reason"] == "handback" and refund["event"]["transcript"] in handback[0]["missed_lines"]
    briefed = watch.notes("takeover.briefed")
    assert len(briefed) == 1 and refund["event"]["transcript"] in briefed[0]["missed_lines"]
    # The caller agent was told with a user message, then asked to respond; its goodbye ended the call.
    sent = [r["event"] for r in watch.records if r["leg"] == "caller" and r["direction"] == "out"]
    kinds = [e["type"] for e in sent]
    i = kinds.index("conversation.item.create", 1)  # [0] is the context seeded at start
    assert kinds[i - 2 : i + 2] == [
        "session.update",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "response.create",
    ]
    # On hold its turn detection was off; the briefing turned it back on as it was.
    updates = [e["session"]["audio"]["input"]["turn_detection"] for e in sent if e["type"] == "session.update"]
    assert updates[0] is None and updates[-1]["type"] == "server_vad"
    assert (
        "on hold" in sent[i]["item"]["content"][0]["text"]
        and refund["event"]["transcript"] in sent[i]["item"]["content"][0]["text"]
    )
    assert "goodbye" in " ".join(t["text"].lower() for t in ended["turns"] if t["speaker"] == "caller")
    # The CS leg saw one continuous RTP stream across both switches (agent -> human -> agent).
    assert call.relay.cs_out.switches >= 2
    seqs = [s for s, _ in rtp]
    gaps = [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)]
    assert len(seqs) > 500 and set(gaps) == {1}, f"sequence gaps: {sorted(set(gaps))}"
    steps = [(b[1] - a[1]) & 0xFFFFFFFF for a, b in itertools.pairwise(rtp)]
    assert all(s % 960 == 0 and 0 < s < 48000 for s in steps), f"timestamp steps: {sorted(set(steps))[-5:]}"
    # The events are in events.jsonl as well.
    text = (Path(ended["out_dir"]) / "events.jsonl").read_text()
    assert "takeover.started" in text and "takeover.handback" in text


async def test_a_humans_own_path_is_impaired_both_ways(client: Client, browsers: Callable[..., Browser]) -> None:
    """Take-over with `impair`: the human's microphone loses 20 % before the relay sees it, its downlink 10 %;
    its receiver counts exactly the downlink's loss, and the summary records both stages."""
    call_id, call, watch = await start_call(client)
    hooked: list[int] = []
    human = browsers("takeover")
    spec = {"impair": "bridge>browser: loss=10%; browser>bridge: loss=20%", "impair_seed": "4"}
    assert await human.join(client, call_id, await token(client, call_id, "takeover"), "?" + urlencode(spec)) == 201
    await watch.wait(note("takeover.started"))
    call.relay.on_packet(lambda party, _pkt: hooked.append(1) if party == "human" else None)
    p = client.app[PARTICIPANTS][call_id].members[human.participant_id]
    assert p.uplink is not None and set(p.sinks) == {"cs"}
    receiver = human.pc.getReceivers()[0]
    inbound: Any = None
    for _ in range(600):  # a bound for a hang only: wait until 300 packets of the CS agent have arrived
        inbound = next((s for s in (await receiver.getStats()).values() if s.type == "inbound-rtp"), None)
        if inbound is not None and inbound.packetsReceived >= 300 and len(hooked) >= 100:
            break
        await asyncio.sleep(0.1)
    assert inbound.packetsLost == p.sinks["cs"].visible_loss(inbound.packetsReceived) > 0
    up = p.uplink.stage.stats()
    # The relay (its packet hooks: recording, timing) sees only what survived the uplink, from the switch on.
    assert up["dropped"] == up["lost_random"] > 0 and up["packets_in"] == up["forwarded"] + up["dropped"]
    assert up["forwarded"] - len(hooked) >= 0
    await client.post(f"/api/calls/{call_id}/hangup")
    ended = await watch_end(call)
    [browser] = ended["browser_impairment"]
    assert (browser["participant_id"], browser["role"]) == (human.participant_id, "takeover")
    assert (browser["uplink"]["spec"], browser["uplink"]["seed"]) == ("loss=20%", 6)
    assert {k: (v["spec"], v["seed"]) for k, v in browser["downlink"].items()} == {"cs": ("loss=10%", 5)}
    assert browser["uplink"]["packets_in"] >= up["packets_in"] and ended["impairment"] is None
    assert watch.notes("participant.joined")[0]["impair"] == {"downlink": "loss=10%", "uplink": "loss=20%", "seed": 4}


async def test_human_hangs_up(client: Client, browsers: Callable[..., Browser]) -> None:
    call_id, call, watch = await start_call(client)
    human = browsers("takeover")
    takeover = await token(client, call_id, "takeover")
    assert await human.join(client, call_id, takeover) == 201
    await watch.wait(note("takeover.started"))
    listen = await token(client, call_id, "listen")
    resp = await client.post(f"/api/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {listen}"})
    assert resp.status == 403 and (await resp.json())["error"]["type"] == "wrong_role"
    resp = await client.post(f"/api/calls/{call_id}/hangup", headers={"Authorization": f"Bearer {takeover}"})
    assert resp.status == 202, await resp.text()
    ended = await watch_end(call)
    assert (ended["end_reason"], ended["ended_by"]) == ("human_hangup", "human")
    assert await wait_state(human.pc, "closed")


async def test_a_vanished_browser_gives_the_call_back_to_the_caller_agent(
    client: Client, browsers: Callable[..., Browser]
) -> None:
    call_id, call, watch = await start_call(client)
    human = browsers("takeover")
    assert await human.join(client, call_id, await token(client, call_id, "takeover")) == 201
    await watch.wait(note("takeover.started"))
    assert call.relay.on_hold
    await human.pc.close()  # the tab is gone
    back = await watch.wait(note("takeover.handback"), within=15)
    assert back["event"]["reason"].startswith("browser connection")
    assert not call.relay.on_hold and call.state == "live"
    # The caller agent got the call back and was briefed (then asked to respond).
    await watch.wait(
        lambda r: (
            r["leg"] == "caller"
            and r["direction"] == "out"
            and r["event"]["type"] == "conversation.item.create"
            and "on hold" in str(r["event"])
        )
    )
    # The seat is free again: another human can take over.
    again = browsers("takeover")
    assert await again.join(client, call_id, await token(client, call_id, "takeover")) == 201
    await watch.wait(lambda r: len(watch.notes("takeover.started")) == 2)
    assert call.relay.on_hold
    resp = await client.post(f"/api/calls/{call_id}/hangup")
    assert resp.status == 202
    assert (await watch_end(call))["end_reason"] == "operator_hangup"


async def test_a_browser_whose_media_stops_is_handed_back(client: Client, browsers: Callable[..., Browser]) -> None:
    call_id, call, watch = await start_call(client)
    human = browsers("takeover")
    assert await human.join(client, call_id, await token(client, call_id, "takeover")) == 201
    await watch.wait(note("takeover.started"))
    human.pc.getSenders()[0].replaceTrack(None)  # frozen tab: the connection stays up, no more RTP
    back = await watch.wait(note("takeover.handback"), within=20)
    assert back["event"]["reason"].startswith("no audio from the browser")
    assert not call.relay.on_hold
    await client.post(f"/api/calls/{call_id}/hangup")
    await watch_end(call)


# -- a relay that cannot ----------------------------------------------------------------------------------------
@pytest.fixture
async def ws_client(tmp_path: Path, emulator: Emulator) -> AsyncIterator[Client]:
    """The signaling app whose calls use the WebSocket transport on both legs (relayed PCM to PCM)."""
    settings = dataclasses.replace(
        Settings(), base_url=emulator.base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path, session_timeout_s=SETUP_S
    )

    def make(scenario: Scenario) -> Call:
        return Call(scenario, settings, leg_factory=leg_factory("ws", "ws"))

    async with TestClient(TestServer(await create_app(settings, call_factory=make))) as c:
        yield c


async def test_a_call_without_opus_refuses_listeners_and_take_over_saying_why(
    ws_client: Client, browsers: Callable[..., Browser]
) -> None:
    call_id, call, watch = await start_call(ws_client)
    for role in ("listen", "takeover"):
        b = browsers(role)
        assert await b.join(ws_client, call_id, await token(ws_client, call_id, role)) == 409, role
        error = b.error["error"]
        assert error["type"] == "unsupported_by_relay", role
        assert f"call {call_id} cannot" in error["message"] and "at least one WebRTC leg" in error["message"], role
    assert isinstance(call.relay, PcmRelay) and call.state == "live"  # refused joins leave the call as it was
    resp = await ws_client.get(f"/api/calls/{call_id}/participants")
    assert (await resp.json())["participants"] == []
    await ws_client.post(f"/api/calls/{call_id}/hangup")
    ended = await watch_end(call)
    assert ended["end_reason"] == "operator_hangup" and ended["relay"]["kind"] == "pcm"
    assert watch.notes("participant.joined") == []


# -- access -----------------------------------------------------------------------------------------------------
async def test_listen_token_cannot_take_over_or_send_audio(client: Client, browsers: Callable[..., Browser]) -> None:
    call_id, call, watch = await start_call(client)
    listen = await token(client, call_id, "listen")
    sneaky = browsers("listen", mic=True)  # offers sendrecv with a microphone
    assert await sneaky.join(client, call_id, listen, "?role=takeover") == 403
    assert sneaky.error["error"]["type"] == "wrong_role"
    for path in ("handback", "hangup"):
        resp = await client.post(f"/api/calls/{call_id}/{path}", headers={"Authorization": f"Bearer {listen}"})
        assert resp.status == 403, path
    # Joining as what it is: the server's answer is send-only, so the browser's microphone has nowhere to go.
    sneaky2 = browsers("listen", mic=True)
    assert await sneaky2.join(client, call_id, listen) == 201
    assert directions(sneaky2.answer) == ["sendonly", "sendonly"]
    await sneaky2.say(HUMAN_LINE)
    await sneaky2.wait_loud("cs")
    assert not call.relay.on_hold and call.relay.stats()["human"] is None
    assert watch.notes("takeover.started") == []
    await client.post(f"/api/calls/{call_id}/hangup")
    await watch_end(call)
    assert watch.notes("takeover.started") == []


async def test_bad_tokens_are_refused_with_reasons(client: Client, browsers: Callable[..., Browser]) -> None:
    call_id, call, _ = await start_call(client)
    other_id, other, _ = await start_call(client)
    past = TokenSigner(SECRET.encode(), clock=lambda: time.time() - 3600)
    expired, _ = past.issue(call_id, "listen", 60)
    cases = {
        "expired": (expired, 401, "token_expired"),
        "garbled": ("abc.def", 401, "invalid_token"),
        "missing": ("", 401, "missing_token"),
        "other call": (await token(client, other_id, "listen"), 403, "wrong_call"),
    }
    for name, (tok, status, kind) in cases.items():
        b = browsers("listen")
        assert await b.join(client, call_id, tok) == status, name
        assert b.error["error"]["type"] == kind, name
    bad = [
        ({"role": "admin"}, 400),
        ({"role": "listen", "ttl_s": "long"}, 400),
        ({"role": "listen", "ttl_s": 10**9}, 400),
        ({"role": "listen", "extra": 1}, 400),
    ]
    for body, status in bad:
        resp = await client.post(f"/api/calls/{call_id}/tokens", json=body)
        assert resp.status == status and "error" in await resp.json(), body
    assert (await client.post("/api/calls/call_nope/tokens", json={"role": "listen"})).status == 404
    # A join's own impairment, refused with the field named (before any peer connection is made).
    tok = await token(client, call_id, "listen")
    impairs = {
        "loss=150%": "'loss'",
        "browser>bridge: loss=5%": "a listener sends no audio",
        "uplink: loss=5%": "bridge>browser: SPEC and/or browser>bridge: SPEC",
    }
    for spec, says in impairs.items():
        b = browsers("listen")
        assert await b.join(client, call_id, tok, "?" + urlencode({"impair": spec})) == 400, spec
        assert says in b.error["error"]["message"] and "impair" in b.error["error"]["message"], spec
    b = browsers("listen")
    assert await b.join(client, call_id, tok, "?impair=wifi&impair_seed=x") == 400
    assert "`impair_seed` must be an integer" in b.error["error"]["message"]
    # None of the refused joins left a participant behind (the call may still be connecting: ask the API, not
    # the relay, which exists only once both legs are up).
    listed = await (await client.get(f"/api/calls/{call_id}/participants")).json()
    assert listed["participants"] == []
    # An offer that is not an offer, and one without audio.
    resp = await client.post(
        f"/api/calls/{call_id}/join",
        data="hello",
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/sdp"},
    )
    assert resp.status == 400 and "offer" in (await resp.json())["error"]["message"]
    # The JSON form of a join: {"type": "offer", "sdp"} in, {"type": "answer", "sdp", "participant_id"} out.
    b = browsers("listen")
    await b.pc.setLocalDescription(await b.pc.createOffer())
    resp = await client.post(
        f"/api/calls/{call_id}/join",
        json={"type": "offer", "sdp": b.pc.localDescription.sdp},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert resp.status == 201, await resp.text()
    answer = await resp.json()
    assert answer["type"] == "answer" and answer["role"] == "listen" and answer["participant_id"].startswith("p_")
    listed = await (await client.get(f"/api/calls/{call_id}/participants")).json()
    assert [p["id"] for p in listed["participants"]] == [answer["participant_id"]]
    resp = await client.post(
        f"/api/calls/{call_id}/leave",
        json={"participant_id": answer["participant_id"]},
        headers={"Authorization": f"Bearer {tok}"},
    )
    assert resp.status == 200
    listed = await (await client.get(f"/api/calls/{call_id}/participants")).json()
    assert listed["participants"][0]["state"] == "left"
    for c in (call, other):
        await c.hangup()

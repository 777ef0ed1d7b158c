"""A call that ends while it is still connecting ends every Realtime session that was created or is being created.

Each end (the operator's hang-up through the REST API, shutdown, the other leg failing, the session time-out) at
each moment of a leg's set-up:

| moment          | how the test holds the leg there                                                         |
|-----------------|------------------------------------------------------------------------------------------|
| before_create   | the end comes from the leg's `peer_connection` event, before its offer is even made       |
| request_held    | the offer has reached the server, which creates the session only after the end           |
| answer_held     | the server has created the session and answers late                                      |
| answered        | the answer is in, `session.created` never comes (its connectivity checks cannot succeed) |

The Realtime server is the real emulator behind a gate (realtime_gate.py) that holds each step until the test
releases it. After each end the check is on the SERVER's side: every session the emulator created was closed by
its hang-up endpoint and none is left open; and the call says why it ended, without a made-up transport error.
(A leg failing before the other leg has sent anything cannot be held there from outside; that end calls the set-up
off through the same path as a hang-up at that moment.)

Only what a test means to time out gets a short time-out: every other leg, and every session the emulator makes,
has far longer than a loaded machine needs (LONG_S), so a slow set-up cannot turn one end into another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.integration.conftest import _VOICE
from tests.integration.realtime_gate import Gate, TcpGate
from voicebridge.bridge.call import Call
from voicebridge.config import EMULATOR_KEY, Settings
from voicebridge.emulator.limits import Limits
from voicebridge.emulator.server import Emulator
from voicebridge.realtime.leg import Leg
from voicebridge.realtime.webrtc import WebRtcLeg
from voicebridge.realtime.websocket import WebSocketLeg
from voicebridge.scenarios.model import load_scenario
from voicebridge.signaling.app import create_app
from voicebridge.signaling.http import MANAGER

pytestmark = pytest.mark.integration
SCENARIO = load_scenario("late_order")
HOLDS = {"request_held": "hold_request", "answer_held": "hold_answer", "answered": "unreachable"}
LONG_S = 120.0  # a time-out that nothing here waits for: far beyond any set-up on a loaded machine
SHORT_S = 3.0  # the time-out a test means to run out


class Console:
    """The console server over the gate, with a hook on every leg it makes."""

    def __init__(self, client: TestClient[Any, Any], calls: list[Call], legs: list[Leg]) -> None:
        self.client, self.calls, self.legs = client, calls, legs

    async def start_call(self) -> tuple[str, Call]:
        r = await self.client.post("/api/calls", json={"scenario": "late_order"})
        assert r.status == 201, await r.text()
        return (await r.json())["id"], self.calls[-1]

    async def view(self, call_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/calls/{call_id}")
        data: dict[str, Any] = await r.json()
        return data


LegHook = Callable[[Leg], None]


@contextlib.asynccontextmanager
async def console(
    base_url: str,
    tmp_path: Path,
    *,
    timeout_s: float = LONG_S,
    leg_timeouts: dict[str, float] | None = None,
    on_leg: LegHook | None = None,
    ws: bool = False,
) -> AsyncIterator[Console]:
    """`timeout_s` is the call's session time-out; `leg_timeouts` gives a leg (by role) one of its own."""
    settings = Settings(base_url=base_url, api_key=EMULATOR_KEY, artifacts_dir=tmp_path, session_timeout_s=timeout_s)
    calls: list[Call] = []
    legs: list[Leg] = []

    def make_leg(role: str, s: Settings) -> Leg:
        if leg_timeouts and role in leg_timeouts:
            s = dataclasses.replace(s, session_timeout_s=leg_timeouts[role])
        leg: Leg = WebSocketLeg(role, s) if ws else WebRtcLeg(role, s)
        legs.append(leg)
        if on_leg is not None:
            on_leg(leg)
        return leg

    def make_call(scenario: Any) -> Call:
        call = Call(scenario, settings, leg_factory=make_leg)
        calls.append(call)
        return call

    app = await create_app(settings, call_factory=make_call)
    async with TestClient(TestServer(app)) as client:
        yield Console(client, calls, legs)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """Sessions whose peer never connects are ended here by the bridge's hang-up, never by the emulator's own
    connect time-out running out first on a slow machine."""
    emu = Emulator(voice=_VOICE, limits=Limits(connect_timeout_s=LONG_S))
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()


@pytest.fixture
async def gate(emulator: Emulator) -> AsyncIterator[Gate]:
    g = Gate(emulator, SCENARIO)
    await g.start()
    try:
        yield g
    finally:
        await g.stop()


def reaches(emitter: Any, event: str, value: Any = None) -> asyncio.Future[Any]:
    """A future for the first `event` (with this value, if given) from a call or a leg."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def seen(*args: Any) -> None:
        if not fut.done() and (value is None or (args and args[0] == value)):
            fut.set_result(args[0] if args else None)

    emitter.on(event, seen)
    return fut


async def both(gate: Gate, step: str) -> None:
    """Until both legs' creates have reached this step at the gate ("arrived" or "created")."""
    for role in ("caller", "cs"):
        await asyncio.wait_for(gate.arrived[role].wait(), 20)
        await asyncio.wait_for(getattr(gate.by_role(role), step).wait(), 20)


def assert_hung_up_by_the_endpoint(gate: Gate, emulator: Emulator, expected: int) -> None:
    sessions = gate.created_sessions()
    assert len(sessions) == expected, [c.rule for c in gate.creates]
    for s in sessions:
        assert s.closed.is_set(), f"session {s.id} is still open on the server"
        assert s.close_reason == "hangup endpoint", (s.id, s.close_reason)
    assert not emulator.sessions, f"sessions left open on the server: {list(emulator.sessions)}"


# -- hang-up and shutdown ------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["hangup", "shutdown"])
async def test_an_end_before_any_create_is_sent_sends_none(
    gate: Gate, emulator: Emulator, tmp_path: Path, end: str
) -> None:
    calls: list[Call] = []

    def on_leg(leg: Leg) -> None:
        # The first leg's peer connection exists, no offer has been made: end now (synchronously).
        leg.on("peer_connection", lambda _pc: calls[-1].end(*reason))

    reason = ("operator_hangup", "operator") if end == "hangup" else ("shutdown", "server")
    async with console(gate.base_url, tmp_path, on_leg=on_leg) as c:
        calls = c.calls
        call_id, call = await c.start_call()
        await call.wait_ended(30)
        view = await c.view(call_id)
        assert (view["end_reason"], view["error"]) == (reason[0], None)
    assert gate.creates == []
    assert_hung_up_by_the_endpoint(gate, emulator, 0)


@pytest.mark.parametrize("moment", list(HOLDS))
@pytest.mark.parametrize("end", ["hangup", "shutdown"])
async def test_an_end_while_connecting_hangs_up_every_session(
    gate: Gate, emulator: Emulator, tmp_path: Path, end: str, moment: str
) -> None:
    gate.rules = {"caller": HOLDS[moment], "cs": HOLDS[moment]}
    created: list[str] = []
    both_answered = asyncio.Event()

    def on_leg(leg: Leg) -> None:
        def answered(call_id: str) -> None:
            created.append(call_id)
            if len(created) == 2:
                both_answered.set()

        leg.on("call_created", answered)

    async with console(gate.base_url, tmp_path, on_leg=on_leg) as c:
        call_id, call = await c.start_call()
        await both(gate, "created" if moment != "request_held" else "arrived")
        if moment == "answered":
            await asyncio.wait_for(both_answered.wait(), 20)
        ending = reaches(call, "state", "ending")
        shutdown = None
        if end == "hangup":
            r = await c.client.post(f"/api/calls/{call_id}/hangup")
            assert r.status == 202, await r.text()
        else:
            shutdown = asyncio.ensure_future(c.client.app[MANAGER].shutdown(30))
        await asyncio.wait_for(ending, 20)
        gate.release_all()  # the server answers now, after the end: what it created must still be hung up
        await call.wait_ended(30)
        if shutdown is not None:
            await shutdown
        view = await c.view(call_id)
        expected = "operator_hangup" if end == "hangup" else "shutdown"
        assert (view["state"], view["end_reason"], view["error"]) == ("ended", expected, None)
        assert {leg.state for leg in c.legs} == {"closed"}
    assert_hung_up_by_the_endpoint(gate, emulator, 2)
    assert sorted(cid for cid, status in gate.hangups if status == 200) == sorted(
        s.id for s in gate.created_sessions()
    )


# -- the other leg fails ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", list(HOLDS))
async def test_a_failing_leg_hangs_up_the_other_legs_session(
    gate: Gate, emulator: Emulator, tmp_path: Path, moment: str
) -> None:
    """The CS leg's create gets a 500 while the caller leg is at `moment`."""
    gate.rules = {"caller": HOLDS[moment], "cs": "fail"}
    async with console(gate.base_url, tmp_path) as c:
        call_id, call = await c.start_call()
        await asyncio.wait_for(gate.arrived["cs"].wait(), 20)
        await asyncio.wait_for(gate.arrived["caller"].wait(), 20)
        caller = next(leg for leg in c.legs if leg.role == "caller")
        if moment == "answered":
            await asyncio.wait_for(gate.by_role("caller").created.wait(), 20)
            if caller.call_id is None:
                await asyncio.wait_for(reaches(caller, "call_created"), 20)
        elif moment == "answer_held":
            await asyncio.wait_for(gate.by_role("caller").created.wait(), 20)
        called_off = reaches(caller, "state", "closing")
        gate.by_role("cs").release.set()  # the CS leg fails now
        await asyncio.wait_for(called_off, 20)
        gate.by_role("caller").release.set()
        await call.wait_ended(30)
        view = await c.view(call_id)
        assert view["end_reason"] == "error"
        assert "HTTP 500" in view["error"] and "ReadError" not in view["error"], view["error"]
    assert_hung_up_by_the_endpoint(gate, emulator, 1)


# -- the session time-out -------------------------------------------------------------------------------------


async def test_no_session_created_in_time_hangs_up_both_sessions(
    gate: Gate, emulator: Emulator, tmp_path: Path
) -> None:
    gate.rules = {"caller": "unreachable", "cs": "unreachable"}
    async with console(gate.base_url, tmp_path, timeout_s=SHORT_S) as c:  # both legs: neither can ever connect
        call_id, call = await c.start_call()
        await call.wait_ended(30)
        view = await c.view(call_id)
        assert view["end_reason"] == "error"
        assert f"no session.created within {SHORT_S:g} s" in view["error"], view["error"]
    assert_hung_up_by_the_endpoint(gate, emulator, 2)


async def test_a_create_that_times_out_is_reported_and_the_other_session_hung_up(tmp_path: Path) -> None:
    """The caller's create outlives its time-out: the client cannot learn the id of what the server made, so the
    server ends that session itself when its peer never connects (the emulator's connect time-out); the CS
    session is hung up and the error says what happened.

    Only the caller's create and the caller's session have a short time-out (SHORT_S): the CS leg and its session
    have LONG_S, so the CS is never what runs out first. The emulator's connect time-out is read when a session is
    created: the CS's request is held at the gate until the caller's session exists, then the limit is raised."""
    emulator = Emulator(voice=_VOICE, limits=Limits(connect_timeout_s=SHORT_S))
    await emulator.start()
    gate = Gate(emulator, SCENARIO)
    await gate.start()
    try:
        gate.rules = {"caller": "hold_answer", "cs": "hold_request"}
        leg_timeouts = {"caller": SHORT_S, "cs": LONG_S}
        async with console(gate.base_url, tmp_path, leg_timeouts=leg_timeouts) as c:
            call_id, call = await c.start_call()
            await asyncio.wait_for(gate.arrived["caller"].wait(), 30)
            await asyncio.wait_for(gate.by_role("caller").created.wait(), 30)  # with the short connect time-out
            emulator.limits = dataclasses.replace(emulator.limits, connect_timeout_s=LONG_S)
            await asyncio.wait_for(gate.arrived["cs"].wait(), 30)
            gate.by_role("cs").release.set()  # the CS session is made now, with the long one
            await call.wait_ended(60)
            view = await c.view(call_id)
            assert view["end_reason"] == "error"
            assert "did not answer in time" in view["error"], view["error"]
        cs, caller = gate.by_role("cs").session, gate.by_role("caller").session
        assert cs is not None and cs.close_reason == "hangup endpoint"
        assert caller is not None
        await asyncio.wait_for(caller.closed.wait(), 30)
        assert caller.close_reason == f"not connected within {SHORT_S:g} s"
        assert not emulator.sessions
    finally:
        await gate.stop()
        await emulator.stop()


# -- the WebSocket transport ----------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["hangup", "shutdown"])
async def test_an_end_during_the_websocket_handshake_closes_the_server_sessions(
    emulator: Emulator, tmp_path: Path, end: str
) -> None:
    """Both legs over the WebSocket transport; the server has accepted both handshakes but its answers are held.
    Closing the socket is this transport's hang-up: every session the server made must end."""
    port = int(emulator.base_url.split(":")[2].split("/")[0])
    tcp = TcpGate(port)
    gate_port = await tcp.start()
    try:
        async with console(f"http://127.0.0.1:{gate_port}/v1", tmp_path, ws=True) as c:
            call_id, call = await c.start_call()
            await asyncio.wait_for(tcp.server_spoke(2), 20)  # both sessions exist on the server
            sessions = list(emulator.sessions.values())
            assert len(sessions) == 2
            if end == "hangup":
                r = await c.client.post(f"/api/calls/{call_id}/hangup")
                assert r.status == 202
            else:
                await c.client.app[MANAGER].shutdown(30)
            await call.wait_ended(30)
            tcp.release.set()  # what the server said comes through now, to a client that has gone
            for s in sessions:
                await asyncio.wait_for(s.closed.wait(), 20)
                assert s.close_reason == "websocket closed"
            view = await c.view(call_id)
            assert view["error"] is None and view["end_reason"] in ("operator_hangup", "shutdown")
            assert {leg.state for leg in c.legs} == {"closed"}
    finally:
        await tcp.stop()

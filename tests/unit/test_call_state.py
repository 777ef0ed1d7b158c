"""The call's state machine, function calling, context sync and hang-up, driven through in-memory legs.

The legs here speak the protocol's events but carry no audio (the WebRTC path is covered by
tests/integration/test_call*.py against the emulator); this is where every branch gets exercised quickly.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from voicebridge.bridge.artifacts import read_events
from voicebridge.bridge.call import Call
from voicebridge.config import Settings
from voicebridge.realtime.leg import Leg
from voicebridge.results import CallSummary, ToolCallRecord
from voicebridge.scenarios.model import Scenario, parse_scenario
from voicebridge.tools import ToolRegistry

pytestmark = pytest.mark.unit


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


class FakeLeg(Leg):
    """Acknowledges context items like the API; everything else is driven by the test through `server()`."""

    def __init__(self, role: str, settings: Settings, order: list[str] | None = None) -> None:
        super().__init__(role)
        self.order = order if order is not None else []  # shared by a call's legs: "<role> <what>", in order
        self.sent: list[dict[str, Any]] = []
        self.hung_up = False
        self.sent_signal = asyncio.Event()

    async def connect(self, session: dict[str, Any]) -> None:
        self.session = session
        self.call_id = _id("rtc")
        self.state = "open"

    def _transmit(self, text: str) -> None:
        event = json.loads(text)
        self.sent.append(event)
        self.sent_signal.set()
        item = event.get("item", {})
        if event["type"] == "conversation.item.create" and item.get("type") == "message":
            asyncio.get_running_loop().call_soon(
                self.server,
                {
                    "type": "conversation.item.added",
                    "previous_item_id": None,
                    "item": {**item, "object": "realtime.item", "status": "completed"},
                },
            )

    def server(self, event: dict[str, Any]) -> None:
        self.order.append(f"{self.role} {event['type']}")
        self._received({"event_id": _id("event"), **event})

    async def hangup(self) -> None:
        self.order.append(f"{self.role} hangup")
        self.hung_up = True
        if self.state != "failed":
            self.state = "closed"
        self.closed.set()

    async def stats(self) -> dict[str, Any]:
        return {"role": self.role, "sent": len(self.sent)}

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]

    def fail(self, reason: str) -> None:
        self._fail(reason)

    async def wait_sent(self, pred: Any, limit_s: float = 5.0) -> dict[str, Any]:
        async def loop() -> dict[str, Any]:
            while True:
                for e in self.sent:
                    if pred(e):
                        return e
                self.sent_signal.clear()
                await self.sent_signal.wait()

        return await asyncio.wait_for(loop(), limit_s)


async def loop_turns(n: int = 50) -> None:
    """Let whatever is ready run for n turns of the event loop: a fixed amount of progress on any machine (a
    wall-clock sleep gives a slow machine fewer turns). Used before asserting that something did NOT happen."""
    for _ in range(n):
        await asyncio.sleep(0)


def scenario(**over: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "unit",
        "first_speaker": "cs",
        "max_duration_s": 60,
        "idle_timeout_s": 30,
        "caller": {
            "instructions": "You call.",
            "context": [{"role": "system", "text": "Wait for the greeting."}],
        },
        "cs": {
            "instructions": "You help.",
            "context": [{"role": "system", "text": "Date: today."}, {"role": "user", "text": "Caller ID: 1"}],
        },
    }
    data.update(over)
    return parse_scenario(data)


# --- server event builders (the API's shapes) ---------------------------------------------------------------
def created(rid: str) -> dict[str, Any]:
    return {
        "type": "response.created",
        "response": {"id": rid, "object": "realtime.response", "status": "in_progress", "output": []},
    }


def done(rid: str, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "response.done",
        "response": {"id": rid, "object": "realtime.response", "status": "completed", "output": output or []},
    }


def fcall(rid: str, name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.done",
        "response_id": rid,
        "item_id": _id("item"),
        "output_index": 0,
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(args),
    }


class Harness:
    def __init__(
        self, tmp_path: Path, sc: Scenario | None = None, tools: ToolRegistry | None = None, **settings: Any
    ) -> None:
        self.legs: dict[str, FakeLeg] = {}
        self.order: list[str] = []
        # These legs never answer a response.create, so a hang-up while one is pending waits out the whole drain
        # limit; no test relies on that wait (the one about draining sets its own limits), so it is short.
        self.settings = Settings(
            **{
                "base_url": "http://127.0.0.1:9/v1",
                "hangup_drain_timeout_s": 0.1,
                "session_timeout_s": 10.0,
                **settings,
            }
        )
        self.tools = tools or ToolRegistry()
        self.call = Call(
            sc or scenario(),
            self.settings,
            tmp_path / "call",
            tools=self.tools,
            leg_factory=self.make,
            relay=False,
        )

    def make(self, role: str, settings: Settings) -> Leg:
        leg = FakeLeg(role, settings, self.order)
        self.legs[role] = leg
        return leg

    @property
    def cs(self) -> FakeLeg:
        return self.legs["cs"]

    @property
    def caller(self) -> FakeLeg:
        return self.legs["caller"]


def make_tools(log: list[str]) -> ToolRegistry:
    reg = ToolRegistry(timeout_s=30)  # a safety net: no test here waits for a tool to time out
    refund_started = asyncio.Event()

    @reg.register
    async def lookup_order(order_id: str) -> dict[str, Any]:
        """Look an order up."""
        log.append(f"lookup_order {order_id}")
        # The calls of one response run concurrently: this one (the first) returns only once the second has
        # started. Run one after the other, it would never return (and the test fails on its timeout).
        await refund_started.wait()
        return {"order_id": order_id, "status": "delayed"}

    @reg.register
    async def issue_refund(order_id: str, reason: str) -> dict[str, Any]:
        """Refund an order."""
        refund_started.set()
        log.append(f"issue_refund {order_id}")
        return {"order_id": order_id, "amount": 42}

    @reg.register
    def explode() -> None:
        """Always fails."""
        raise RuntimeError("database is on fire")

    return reg


async def test_context_is_acknowledged_before_live_then_first_speaker_is_asked(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    states: list[str] = []
    h.call.on("state", states.append)
    await h.call.start()
    assert h.call.state == "live" and states == ["connecting", "live"]
    assert h.caller.session["tools"] == [
        {
            "type": "function",
            "name": "hangup",
            "description": h.caller.session["tools"][0]["description"],
            "parameters": {"type": "object", "properties": {}, "required": []},
        }
    ]
    assert h.cs.types() == ["conversation.item.create", "conversation.item.create", "response.create"]
    assert h.caller.types() == ["conversation.item.create"]
    assert [e["item"]["role"] for e in h.cs.sent[:2]] == ["system", "user"]
    assert h.cs.session["audio"]["input"]["transcription"]["model"]
    await h.call.hangup()
    assert h.call.end_reason == "operator_hangup" and h.call.ended_by == "operator"
    assert h.cs.hung_up and h.caller.hung_up


async def test_parallel_tool_calls_then_one_response_create_after_the_active_response(tmp_path: Path) -> None:
    log: list[str] = []
    h = Harness(tmp_path, tools=make_tools(log))
    results: list[ToolCallRecord] = []
    h.call.on("tool_call", results.append)
    await h.call.start()
    h.cs.server(created("resp_1"))
    h.cs.server(fcall("resp_1", "lookup_order", {"order_id": "4217"}, "call_a"))
    h.cs.server(fcall("resp_1", "issue_refund", {"order_id": "4217", "reason": "late"}, "call_b"))
    h.cs.server(done("resp_1"))
    # Server VAD starts another response before the tools finish: our response.create must wait for it.
    h.cs.server(created("resp_2"))
    await h.cs.wait_sent(lambda e: e.get("item", {}).get("call_id") == "call_a")
    await h.cs.wait_sent(lambda e: e.get("item", {}).get("call_id") == "call_b")
    await loop_turns()
    first_speaker = 1
    assert h.cs.types().count("response.create") == first_speaker  # still held back: resp_2 is active
    h.cs.server(done("resp_2"))
    await h.cs.wait_sent(
        lambda e: e["type"] == "response.create" and h.cs.types().count("response.create") == 2
    )
    outputs = {
        e["item"]["call_id"]: json.loads(e["item"]["output"])
        for e in h.cs.sent
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    }
    assert outputs == {
        "call_a": {"order_id": "4217", "status": "delayed"},
        "call_b": {"order_id": "4217", "amount": 42},
    }
    assert sorted(log) == ["issue_refund 4217", "lookup_order 4217"]
    assert {r.name: r.ok for r in results} == {"lookup_order": True, "issue_refund": True}
    await h.call.hangup()
    assert_no_response_create_while_active(read_events(tmp_path / "call"))


async def test_tool_errors_are_outputs_and_the_call_goes_on(tmp_path: Path) -> None:
    h = Harness(tmp_path, tools=make_tools([]))
    await h.call.start()
    h.cs.server(created("r1"))
    h.cs.server(fcall("r1", "explode", {}, "c1"))
    h.cs.server(fcall("r1", "lookup_order", {"order": 1}, "c2"))
    h.cs.server(fcall("r1", "no_such_tool", {}, "c3"))
    h.cs.server(done("r1"))
    for cid, kind in (("c1", "tool_error"), ("c2", "invalid_arguments"), ("c3", "unknown_tool")):
        e = await h.cs.wait_sent(lambda e, cid=cid: e.get("item", {}).get("call_id") == cid)
        assert json.loads(e["item"]["output"])["error"]["type"] == kind
    await h.cs.wait_sent(
        lambda e: e["type"] == "response.create" and h.cs.types().count("response.create") == 2
    )
    assert h.call.state == "live"
    await h.call.hangup()


async def test_caller_may_only_hang_up(tmp_path: Path) -> None:
    log: list[str] = []
    h = Harness(tmp_path, tools=make_tools(log))
    await h.call.start()
    h.caller.server(created("r1"))
    h.caller.server(fcall("r1", "lookup_order", {"order_id": "4217"}, "bad_1"))
    h.caller.server(done("r1"))
    e = await h.caller.wait_sent(lambda e: e.get("item", {}).get("call_id") == "bad_1")
    err = json.loads(e["item"]["output"])["error"]
    assert err["type"] == "refused" and "hangup" in err["message"]
    assert log == []  # never executed, although the CS registry has a tool of that name
    await h.caller.wait_sent(lambda e: e["type"] == "response.create")
    assert h.call.state == "live"
    assert next(c for c in h.call.tool_calls if c.leg == "caller").ok is False
    await h.call.hangup()


async def test_caller_hangup_waits_for_playout_and_the_other_side_hearing_it(tmp_path: Path) -> None:
    # Timeouts far beyond the test: only the events may end the waits, however slow the machine is.
    h = Harness(tmp_path, hangup_drain_timeout_s=60.0, hangup_hear_timeout_s=60.0)
    ending = asyncio.Event()
    h.call.on("state", lambda s: s == "ending" and ending.set())
    await h.call.start()
    h.caller.server(created("r1"))
    h.caller.server({"type": "output_audio_buffer.started", "response_id": "r1"})
    h.caller.server(fcall("r1", "hangup", {}, "hang_1"))
    h.caller.server(done("r1"))
    ack = await h.caller.wait_sent(lambda e: e.get("item", {}).get("call_id") == "hang_1")
    assert json.loads(ack["item"]["output"]) == {"ok": True}
    await asyncio.wait_for(ending.wait(), 5)
    await loop_turns()
    assert h.call.state == "ending" and not h.caller.hung_up  # the goodbye is still playing
    h.caller.server({"type": "output_audio_buffer.stopped", "response_id": "r1"})
    await loop_turns()
    assert not h.caller.hung_up  # ... and the CS side has not transcribed it yet
    h.cs.server(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i1",
            "content_index": 0,
            "transcript": "goodbye",
        }
    )
    await h.call.wait_ended(5)
    assert h.call.end_reason == "caller_hangup" and h.call.ended_by == "caller"
    # In the order things happened: played out, then heard by the CS side, then (only then) the legs hung up.
    order = h.order
    stopped = order.index("caller output_audio_buffer.stopped")
    heard = order.index("cs conversation.item.input_audio_transcription.completed")
    assert stopped < heard < order.index("caller hangup") and heard < order.index("cs hangup")
    assert h.caller.types().count("response.create") == 0  # a hang-up ack asks for no response
    summary = json.loads((tmp_path / "call" / "summary.json").read_text())
    assert summary["end_reason"] == "caller_hangup"
    assert summary["heard"]["cs"][0]["text"] == "goodbye"


async def test_leg_failure_ends_the_call_and_hangs_up_the_other_leg(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    ended: list[CallSummary] = []
    h.call.on("ended", ended.append)
    await h.call.start()
    h.cs.fail("the oai-events data channel closed")
    await h.call.wait_ended(5)
    assert h.call.end_reason == "leg_failed" and h.call.ended_by == "cs"
    assert h.caller.hung_up and "data channel" in (h.call.error or "")
    folder = tmp_path / "call"
    events = read_events(folder)
    assert events and all({"t", "leg", "direction", "event"} <= set(e) for e in events)
    assert json.loads((folder / "summary.json").read_text())["end_reason"] == "leg_failed"
    assert (folder / "transcript.json").exists() and (folder / "transcript.txt").exists()
    assert ended and ended[0].legs[0].role == "caller"


async def test_max_duration_and_idle_timers(tmp_path: Path) -> None:
    h = Harness(tmp_path / "a", scenario(max_duration_s=0.2, idle_timeout_s=30))
    await h.call.start()
    await h.call.wait_ended(5)
    assert h.call.end_reason == "max_duration"
    h2 = Harness(tmp_path / "b", scenario(max_duration_s=30, idle_timeout_s=0.2))
    await h2.call.start()
    await h2.call.wait_ended(5)
    assert h2.call.end_reason == "idle_timeout"


async def test_results_after_the_call_ended_are_not_sent(tmp_path: Path) -> None:
    reg = ToolRegistry(timeout_s=5)
    release = asyncio.Event()

    @reg.register
    async def slow() -> str:
        """Waits."""
        await release.wait()
        return "late"

    h = Harness(tmp_path, tools=reg)
    await h.call.start()
    # The tool finishes exactly when the call has stopped sending results (FunctionCalls.close), not after a
    # guessed delay: a spy on close() says when.
    functions = h.call.functions["cs"]
    stopped_sending = asyncio.Event()
    real_close = functions.close

    async def close(limit_s: float = 2.0) -> None:
        closing = asyncio.ensure_future(real_close(limit_s))
        await asyncio.sleep(0)  # close() marks itself closed before its first wait
        assert functions.closed
        stopped_sending.set()
        await closing

    functions.close = close  # type: ignore[method-assign]
    h.cs.server(created("r1"))
    h.cs.server(fcall("r1", "slow", {}, "c_slow"))
    h.cs.server(done("r1"))
    end = asyncio.ensure_future(h.call.hangup())
    await asyncio.wait_for(stopped_sending.wait(), 5)
    assert not end.done()  # the call waits (bounded) for the tool it still runs
    release.set()
    await asyncio.wait_for(end, 5)
    assert not any(e.get("item", {}).get("call_id") == "c_slow" for e in h.cs.sent)
    assert [c.sent for c in h.call.tool_calls] == [False]


async def test_events_jsonl_never_has_response_create_during_an_active_response(tmp_path: Path) -> None:
    h = Harness(tmp_path, tools=make_tools([]))
    await h.call.start()
    for i in range(3):
        h.cs.server(created(f"r{i}"))
        h.cs.server(fcall(f"r{i}", "issue_refund", {"order_id": "1", "reason": "x"}, f"c{i}"))
        h.cs.server(done(f"r{i}"))
        h.cs.server(created(f"vad{i}"))  # a VAD-triggered response starts before the tool's result is back
        await h.cs.wait_sent(lambda e, i=i: e.get("item", {}).get("call_id") == f"c{i}")
        assert h.cs.types().count("response.create") == 1 + i, "response.create sent while vad response active"
        h.cs.server(done(f"vad{i}"))
        await h.cs.wait_sent(lambda e, i=i: h.cs.types().count("response.create") >= 2 + i)
        h.cs.server(created(f"answer{i}"))  # the server answers the queued response.create
        h.cs.server(done(f"answer{i}"))
    await h.call.hangup()
    assert_no_response_create_while_active(read_events(tmp_path / "call"))


def assert_no_response_create_while_active(events: list[dict[str, Any]]) -> None:
    active: dict[str, bool] = {}
    for rec in events:
        leg, kind = rec["leg"], rec["event"]["type"]
        if rec["direction"] == "in" and kind == "response.created":
            active[leg] = True
        elif rec["direction"] == "in" and kind == "response.done":
            active[leg] = False
        elif rec["direction"] == "out" and kind == "response.create":
            assert not active.get(leg), (
                f"response.create on {leg} while a response was active at t={rec['t']}"
            )


async def test_a_leg_that_cannot_connect_ends_the_call_with_error(tmp_path: Path) -> None:
    from voicebridge.realtime.api import LegError

    class Refused(FakeLeg):
        async def connect(self, session: dict[str, Any]) -> None:
            raise LegError("creating the Realtime call: HTTP 400 from here: bad session")

    class Slow(FakeLeg):
        async def connect(self, session: dict[str, Any]) -> None:
            self.call_id = _id("rtc")
            await asyncio.Event().wait()  # would never finish: must be cancelled, not left behind

    legs: dict[str, FakeLeg] = {}

    def make(role: str, settings: Settings) -> Leg:
        legs[role] = (Refused if role == "cs" else Slow)(role, settings)
        return legs[role]

    call = Call(
        scenario(),
        Settings(base_url="http://x/v1"),
        tmp_path / "c",
        tools=ToolRegistry(),
        leg_factory=make,
        relay=False,
    )
    with pytest.raises(LegError, match="bad session"):
        await asyncio.wait_for(call.start(), 5)
    assert call.state == "ended" and call.end_reason == "error" and "bad session" in (call.error or "")
    assert legs["caller"].hung_up and legs["cs"].hung_up
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["end_reason"] == "error"

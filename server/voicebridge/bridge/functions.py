"""Function calling on one leg: answer each call, then ask for one response, never while another is active.

`ResponseGate` tracks a leg's active response (response.created -> response.done, plus a response.create we
sent and the server has not acknowledged yet) and holds back `response.create` until the leg is idle: the
API refuses a second one with `conversation_already_has_active_response`.

`FunctionCalls` collects a leg's function calls from its server events, runs each as soon as its arguments
are complete (calls of one response run concurrently), sends each `function_call_output`, and once the
response that made them is done and every output is sent, requests one response so the model can talk about
the results.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from voicebridge.tools import ToolResult

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], str]


class ResponseGate:
    def __init__(self, send: Send, label: str = "") -> None:
        self._send = send
        self.label = label
        self.active_response: str | None = None
        self._requested_event: str | None = None  # our response.create not yet answered by response.created
        self._pending = False
        self.closed = False
        self.sent = 0
        self.deferred = 0

    @property
    def busy(self) -> bool:
        return self.active_response is not None or self._requested_event is not None

    def request(self) -> None:
        """Send response.create now if the leg is idle, else as soon as the active response is done."""
        if self.closed:
            return
        if self.busy:
            self._pending = True
            self.deferred += 1
            return
        self._pending = False
        self._requested_event = self._send({"type": "response.create"})
        self.sent += 1

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.created":
            self.active_response = str(event.get("response", {}).get("id") or "?")
            self._requested_event = None
        elif kind == "response.done":
            self.active_response = None
            self._requested_event = None
            if self._pending:
                self.request()
        elif kind == "error":
            err = event.get("error") or {}
            if self._requested_event and err.get("event_id") == self._requested_event:
                self._requested_event = None
                if err.get("code") == "conversation_already_has_active_response":
                    # A server-side (VAD) response won the race; ask again when it is done.
                    self._pending = True
                    if not self.busy:
                        self.request()

    def close(self) -> None:
        self.closed = True
        self._pending = False


@dataclass(frozen=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: str
    response_id: str
    leg: str


@dataclass(frozen=True)
class Reply:
    """What to answer a function call with; `respond=False` sends the output without asking for a response."""

    result: ToolResult
    respond: bool = True


Execute = Callable[[FunctionCall], Awaitable[Reply]]


class FunctionCalls:
    def __init__(
        self,
        leg: str,
        send: Send,
        gate: ResponseGate,
        execute: Execute,
        on_result: Callable[[FunctionCall, Reply, bool], None],
    ) -> None:
        self.leg = leg
        self._send = send
        self._gate = gate
        self._execute = execute
        self._on_result = on_result
        self._seen: set[str] = set()
        self._by_response: dict[str, list[asyncio.Task[Reply]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.function_call_arguments.done":
            self._start(
                str(event.get("call_id", "")),
                str(event.get("name", "")),
                str(event.get("arguments", "")),
                str(event.get("response_id", "")),
            )
        elif kind == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                self._start(
                    str(item.get("call_id", "")),
                    str(item.get("name", "")),
                    str(item.get("arguments", "")),
                    str(event.get("response_id", "")),
                )
        elif kind == "response.done":
            response = event.get("response") or {}
            rid = str(response.get("id", ""))
            for item in response.get("output") or []:  # a fallback when the streaming events were missed
                if item.get("type") == "function_call":
                    self._start(
                        str(item.get("call_id", "")),
                        str(item.get("name", "")),
                        str(item.get("arguments", "")),
                        rid,
                    )
            tasks = self._by_response.pop(rid, [])
            if tasks:
                self._track(asyncio.ensure_future(self._respond_after(tasks)))

    def _start(self, call_id: str, name: str, arguments: str, response_id: str) -> None:
        if not call_id or call_id in self._seen:
            return
        self._seen.add(call_id)
        call = FunctionCall(call_id, name, arguments, response_id, self.leg)
        task = asyncio.ensure_future(self._run(call))
        self._track(task)
        self._by_response.setdefault(response_id, []).append(task)

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call: FunctionCall) -> Reply:
        reply = await self._execute(call)
        sent = False
        if self.closed:
            log.info(
                "%s: result of %s (%s) arrived after the call ended; not sent",
                self.leg,
                call.name,
                call.call_id,
            )
        else:
            self._send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "call_id": call.call_id,
                        "output": reply.result.output,
                    },
                }
            )
            sent = True
        self._on_result(call, reply, sent)
        return reply

    async def _respond_after(self, tasks: list[asyncio.Task[Reply]]) -> None:
        replies = await asyncio.gather(*tasks, return_exceptions=True)
        wants = any(isinstance(r, Reply) and r.respond for r in replies)
        if wants and not self.closed:
            self._gate.request()

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def close(self, limit_s: float = 2.0) -> None:
        """Stop sending; give running tools a bounded time to finish (results are logged), then cancel."""
        self.closed = True
        tasks = list(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=limit_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

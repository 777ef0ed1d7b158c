"""Tool registry: schemas from type hints and docstrings, validation, errors the model can talk about."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Literal

import jsonschema
import pytest

from voicebridge.bridge.tools import ToolDefinitionError, ToolRegistry, tool_from_function

pytestmark = pytest.mark.unit


def find_flights(
    origin: str,
    passengers: int,
    cabin: Literal["economy", "business"] = "economy",
    max_price: float | None = None,
    tags: list[str] | None = None,
    direct: bool = False,
) -> dict[str, str]:
    """Find flights from an airport.

    Args:
        origin: IATA code of the departure airport.
        passengers: How many people travel,
            children included.
        cabin: Cabin class.

    Returns:
        Something the model never sees.
    """
    return {"origin": origin}


def test_schema_from_type_hints_and_docstring() -> None:
    tool = tool_from_function(find_flights)
    assert tool.description == "Find flights from an airport."
    props = tool.parameters["properties"]
    assert props["origin"] == {"type": "string", "description": "IATA code of the departure airport."}
    assert props["passengers"]["type"] == "integer"
    assert props["passengers"]["description"] == "How many people travel, children included."
    assert props["cabin"]["enum"] == ["economy", "business"] and props["cabin"]["default"] == "economy"
    assert props["max_price"]["anyOf"] == [{"type": "number"}, {"type": "null"}]
    assert props["tags"]["anyOf"][0] == {"type": "array", "items": {"type": "string"}}
    assert props["direct"]["type"] == "boolean"
    assert tool.parameters["required"] == ["origin", "passengers"]
    assert tool.parameters["additionalProperties"] is False
    jsonschema.Draft202012Validator.check_schema(tool.parameters)
    decl = tool.declaration()
    assert decl["type"] == "function" and decl["name"] == "find_flights"


def test_untyped_or_unsupported_parameters_are_refused() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def weird(x: set[int]) -> None:
        return None

    with pytest.raises(ToolDefinitionError, match="'x' has no type hint"):
        tool_from_function(untyped)
    with pytest.raises(ToolDefinitionError, match="unsupported parameter type"):
        tool_from_function(weird)
    with pytest.raises(ToolDefinitionError, match="must match"):
        tool_from_function(find_flights, name="bad name!")


def test_duplicate_names_are_refused() -> None:
    reg = ToolRegistry()
    reg.register(find_flights)
    with pytest.raises(ToolDefinitionError, match="twice"):
        reg.register(find_flights)


async def test_sync_and_async_tools_run_and_results_are_json() -> None:
    reg = ToolRegistry()
    main_thread = threading.get_ident()
    seen: dict[str, int] = {}

    @reg.register
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        seen["thread"] = threading.get_ident()
        return a + b

    @reg.register
    async def echo(text: str) -> dict[str, str]:
        """Echo text back."""
        return {"text": text}

    r = await reg.run("add", '{"a": 2, "b": 40}', "call_1")
    assert r.ok and json.loads(r.output) == 42 and r.call_id == "call_1" and r.error is None
    assert seen["thread"] != main_thread  # blocking tools never block the event loop
    r = await reg.run("echo", '{"text": "hi"}')
    assert r.ok and json.loads(r.output) == {"text": "hi"}
    assert r.duration_ms >= 0


async def test_errors_become_json_outputs_the_model_can_read() -> None:
    # Tools that finish get a generous timeout: a sync tool runs in a thread, and a loaded machine must not turn
    # its error into a timeout. The registry-wide timeout is exercised by a tool that can never finish.
    reg = ToolRegistry(timeout_s=60)
    timed = ToolRegistry(timeout_s=0.2)

    @reg.register
    def boom(order_id: str) -> None:
        """Always fails."""
        raise LookupError(f"there is no order {order_id}")

    @timed.register
    async def slow() -> None:
        """Never finishes."""
        await asyncio.Event().wait()

    @reg.register
    def bad_value() -> object:
        """Returns something that is not JSON."""
        return object()

    cases = {
        (reg, "boom", '{"order_id": "1"}'): ("tool_error", "there is no order 1"),
        (timed, "slow", "{}"): ("timeout", "within 0.2 s"),
        (reg, "boom", '{"order_id": 5}'): ("invalid_arguments", "order_id"),
        (reg, "boom", "{}"): ("invalid_arguments", "'order_id' is a required property"),
        (reg, "boom", '{"order_id": "1", "extra": 1}'): ("invalid_arguments", "extra"),
        (reg, "boom", "{not json"): ("invalid_arguments", "not valid JSON"),
        (reg, "nope", "{}"): ("unknown_tool", "available: boom, bad_value"),
        (reg, "bad_value", ""): ("tool_error", "not JSON"),
    }
    for (registry, name, args), (kind, text) in cases.items():
        r = await registry.run(name, args)
        assert not r.ok, (name, args)
        err = json.loads(r.output)["error"]
        assert err["type"] == kind, (name, args, err)
        assert text in err["message"], (name, args, err)
        assert r.error and text in r.error


async def test_per_tool_timeout_overrides_the_registry() -> None:
    reg = ToolRegistry(timeout_s=30)

    async def nap() -> str:
        """Sleeps."""
        await asyncio.Event().wait()
        return "never"

    reg.register(nap, timeout_s=0.05)
    r = await asyncio.wait_for(reg.run("nap", "{}"), 5)
    assert not r.ok and json.loads(r.output)["error"]["type"] == "timeout"

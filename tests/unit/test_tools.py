"""Tool registry: schemas from type hints and docstrings, validation, errors the model can talk about."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any, Literal, TypedDict

import pytest

from voicebridge.scenarios.shop import build_tools
from voicebridge.tools import ToolDefinitionError, ToolRegistry, tool_from_function

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


def _keys(schema: Any) -> set[str]:
    """Every key used anywhere in a schema."""
    if isinstance(schema, dict):
        return set(schema).union(*(_keys(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_keys(v) for v in schema))
    return set()


UNSET: Any = object()


class Point(TypedDict):
    x: int


def test_schema_from_type_hints_and_docstring() -> None:
    tool = tool_from_function(find_flights)
    assert tool.description == "Find flights from an airport."
    # The exact schema the hand-written generator produced before pydantic built it.
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "origin": {"type": "string", "description": "IATA code of the departure airport."},
            "passengers": {"type": "integer", "description": "How many people travel, children included."},
            "cabin": {"type": "string", "enum": ["economy", "business"], "description": "Cabin class.",
                      "default": "economy"},
            "max_price": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None},
            "direct": {"type": "boolean", "default": False},
        },
        "required": ["origin", "passengers"],
        "additionalProperties": False,
    }  # fmt: skip
    decl = tool.declaration()
    assert decl["type"] == "function" and decl["name"] == "find_flights"


def test_demo_shop_declarations_are_unchanged(tmp_path: Path) -> None:
    """What the Realtime API gets for the demo tools, byte for byte what it got before pydantic: an OpenAI function
    tool's parameters (object, properties, required, additionalProperties false) and nothing else: no `title`,
    no `$defs`."""
    decls = build_tools(tmp_path).declarations()
    order_id = 'The order number the customer gives, digits only, for example "4217".'
    assert decls == [
        {
            "type": "function",
            "name": "lookup_order",
            "description": "Look up an order by its number: item, status, amount and dates.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": order_id}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
        {
            "type": "function",
            "name": "issue_refund",
            "description": "Refund an order in full. Only orders that are delayed or lost can be refunded, "
            "and only once.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "description": 'The order number, digits only, for example "4217".'},
                    "reason": {
                        "type": "string",
                        "description": 'Why the order is refunded, in a few words, for example "late delivery".',
                    },
                },
                "required": ["order_id", "reason"],
                "additionalProperties": False,
            },
        },
    ]
    for decl in decls:
        assert not _keys(decl["parameters"]) & {"title", "$defs", "$ref"}


def test_a_tool_without_parameters_declares_an_empty_object() -> None:
    def ping() -> str:
        """Ping."""
        return "pong"

    assert tool_from_function(ping).parameters == {
        "type": "object", "properties": {}, "required": [], "additionalProperties": False
    }  # fmt: skip


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

    def not_json_default(when: str | None = UNSET) -> None:
        return None

    with pytest.raises(ToolDefinitionError, match=r"not_json_default.when: the default <object .*> is not JSON"):
        tool_from_function(not_json_default)

    def nested(p: Point) -> None:  # would need `$defs` in the schema
        return None

    with pytest.raises(ToolDefinitionError, match="unsupported parameter type"):
        tool_from_function(nested)


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
        (reg, "boom", '{"order_id": 5}'): ("invalid_arguments", "order_id: expected a string, got 5 (an integer)"),
        (reg, "boom", "{}"): ("invalid_arguments", "order_id: required but missing"),
        (reg, "boom", '{"order_id": "1", "extra": 1}'): ("invalid_arguments", "extra: unknown field (known: order_id)"),
        (reg, "boom", "[1, 2]"): ("invalid_arguments", "bad arguments for boom: expected an object, got an array"),
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


async def test_arguments_are_validated_by_the_type_that_made_the_schema() -> None:
    """JSON types are strict (the schema says integer: "2" is refused, not converted); the error names every
    wrong argument, what its type is and what was sent."""
    reg = ToolRegistry()
    reg.register(find_flights)
    r = await reg.run("find_flights", '{"origin": "OSL", "passengers": "2", "direct": "yes", "tags": ["a", 3]}')
    assert not r.ok
    message = json.loads(r.output)["error"]["message"]
    assert message == (
        "bad arguments for find_flights: passengers: expected an integer, got '2' (a string); "
        "tags[1]: expected a string, got 3 (an integer); direct: expected true or false, got 'yes' (a string)"
    )
    r = await reg.run("find_flights", '{"origin": "OSL", "passengers": 2, "cabin": "first"}')
    assert "cabin: expected 'economy' or 'business', got 'first' (a string)" in json.loads(r.output)["error"]["message"]
    r = await reg.run("find_flights", '{"origin": "OSL", "passengers": 2, "max_price": 300}')
    assert r.ok and r.arguments == {"origin": "OSL", "passengers": 2, "max_price": 300}  # recorded as sent


async def test_parameter_names_a_model_class_would_reserve_and_json_arrays_as_tuples() -> None:
    reg = ToolRegistry()

    @reg.register
    def export(json: str, copy: bool = False, schema: tuple[int, ...] = (), _draft: float = 1.0) -> list[object]:
        """Names that BaseModel reserves or hides."""
        return [json, copy, list(schema), _draft]

    assert set(reg.declarations()[0]["parameters"]["properties"]) == {"json", "copy", "schema", "_draft"}
    r = await reg.run("export", '{"json": "csv", "schema": [1, 2], "_draft": 2}')
    assert r.ok and json.loads(r.output) == ["csv", False, [1, 2], 2.0]

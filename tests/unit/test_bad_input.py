"""Property-based bad input (hypothesis) for the parts that parse what others write: scenario files (dicts and
TOML text) raise ScenarioError and nothing else; tool arguments (whatever a model sends) give error outputs
and never raise. Each has a size limit, pinned here."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebridge.bridge.tools import MAX_ARGUMENT_CHARS, MAX_OUTPUT_CHARS, ToolRegistry
from voicebridge.scenarios.model import (
    BUILTIN_DIR,
    MAX_SCENARIO_BYTES,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)

pytestmark = pytest.mark.unit
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
VALID: dict[str, Any] = tomllib.loads((BUILTIN_DIR / "late_order.toml").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
toml_values = st.recursive(  # what TOML can hold (no None)
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
KEYS = ["name", "title", "first_speaker", "caller", "cs", "tools", "max_duration_s", "idle_timeout_s",
        "instructions", "voice", "script", "context", "hear", "say", "on", "call", "hangup", "after_tool"]  # fmt: skip


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(VALID)


def _parse_ok_or_scenario_error(data: Any) -> None:
    try:
        scenario = parse_scenario(data)
    except ScenarioError as e:
        assert str(e)  # says what is wrong
    else:
        assert isinstance(scenario, Scenario)


@FAST
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=8))
def test_random_dicts_are_scenario_errors(data: dict[str, Any]) -> None:
    _parse_ok_or_scenario_error(data)


@FAST
@given(where=st.sampled_from(PATHS), value=json_values, delete=st.booleans())
def test_a_valid_scenario_with_one_thing_broken(where: tuple[Any, ...], value: Any, delete: bool) -> None:
    data = copy.deepcopy(VALID)
    parent = data
    for step in where[:-1]:
        parent = parent[step]
    if delete:
        del parent[where[-1]]
    else:
        parent[where[-1]] = value
    _parse_ok_or_scenario_error(data)


@FAST
@given(text=st.text(max_size=400) | st.dictionaries(st.sampled_from(KEYS), toml_values).map(json.dumps))
def test_random_files_are_scenario_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "random.toml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        load_scenario(path)
    except ScenarioError as e:
        assert str(path) in str(e)


def test_scenario_files_have_a_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text('name = "big"\n' + "# padding\n" * (MAX_SCENARIO_BYTES // 10 + 1))
    with pytest.raises(ScenarioError, match="limit"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match="not valid TOML"):
        (tmp_path / "bin.toml").write_bytes(bytes(range(256)))
        load_scenario(tmp_path / "bin.toml")


def _registry() -> ToolRegistry:
    reg = ToolRegistry(timeout_s=60)  # not what is tested here: a loaded machine must not turn a result into a timeout

    @reg.register
    def lookup_order(order_id: str, verbose: bool = False) -> dict[str, Any]:
        """Look an order up."""
        return {"order_id": order_id, "verbose": verbose}

    @reg.register
    def refund(amount: float, items: list[str]) -> str:
        """Refund some items."""
        return f"refunded {amount} for {len(items)} items"

    @reg.register
    def chatty(size: int) -> str:
        """Returns as much text as asked."""
        return "x" * size

    return reg


arguments = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.dictionaries(st.sampled_from(["order_id", "verbose", "amount", "items", "size", "x"]), json_values).map(
        json.dumps
    ),
)


@FAST
@given(name=st.sampled_from(["lookup_order", "refund", "chatty", "nope", ""]), args=arguments)
async def test_random_tool_arguments_give_error_outputs_never_raise(name: str, args: str) -> None:
    reg = _registry()
    if name == "chatty":
        args = args if '"size"' not in args else '{"size": 3}'  # a huge size is its own test below
    result = await reg.run(name, args, "call_x")
    output = json.loads(result.output)  # always JSON for the model
    if not result.ok:
        assert output["error"]["type"] in ("unknown_tool", "invalid_arguments", "tool_error", "timeout")
        assert output["error"]["message"] and result.error


async def test_tool_arguments_and_outputs_have_size_limits() -> None:
    reg = _registry()
    huge = json.dumps({"order_id": "x" * MAX_ARGUMENT_CHARS})
    r = await reg.run("lookup_order", huge)
    assert not r.ok and json.loads(r.output)["error"]["type"] == "invalid_arguments" and "limit" in r.output
    deep = "[" * 50_000 + "]" * 50_000  # under the size limit, but deeper than any parser should go
    r = await reg.run("lookup_order", deep[: MAX_ARGUMENT_CHARS - 1])
    assert not r.ok and json.loads(r.output)["error"]["type"] == "invalid_arguments"
    r = await reg.run("chatty", json.dumps({"size": MAX_OUTPUT_CHARS + 1}))
    assert not r.ok and json.loads(r.output)["error"]["type"] == "tool_error" and "limit" in r.output
    assert len(r.output) < 1000

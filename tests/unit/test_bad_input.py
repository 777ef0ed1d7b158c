"""Property-based bad input (hypothesis) for the parts that parse what others write: scenario files (dicts and
TOML text) raise ScenarioError and nothing else; tool arguments (whatever a model sends) give error outputs
and never raise; what both servers read from the network (JSON of any depth or number size, Host headers,
header bytes that are not UTF-8, `--allowed-host` values) is accepted within bounds or refused with a reason.
Each has a size limit, pinned here."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicebridge.edge.headers import undecodable_header
from voicebridge.edge.hosts import HostConfigError, allowed_host_name, host_name, host_policy
from voicebridge.edge.json_body import MAX_DEPTH, MAX_INT_DIGITS, JsonBodyError, parse_json
from voicebridge.edge.json_body import depth as json_depth
from voicebridge.scenarios.model import (
    BUILTIN_DIR,
    MAX_SCENARIO_BYTES,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from voicebridge.tools import MAX_ARGUMENT_CHARS, MAX_OUTPUT_CHARS, ToolRegistry

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


# ---- what both servers read from the network (edge/) -------------------------------------------------------

hostile_json = st.one_of(
    st.integers(1, 20_000).map(lambda n: "[" * n + "]" * n),  # deep
    st.integers(1, 20_000).map(lambda n: "[" * n),  # deep and never closed
    st.integers(1, 3_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 6_000).map(lambda n: "9" * n),  # huge integers
    st.integers(1, 6_000).map(lambda n: '{"ttl_s": -' + "9" * n + "}"),
    st.integers(300, 6_000).map(lambda n: f"[1e{n}, 2]"),  # a float that overflows to inf
    st.sampled_from(["NaN", "[Infinity]", '{"a": -Infinity}']),
    json_values.map(json.dumps),
    st.text(max_size=200),
)


@FAST
@given(text=hostile_json, as_bytes=st.booleans())
def test_network_json_is_bounded_json_or_says_why(text: str, as_bytes: bool) -> None:
    try:
        value = parse_json(text.encode("utf-8", "surrogatepass") if as_bytes else text)
    except JsonBodyError as e:
        assert str(e)
    else:
        assert json_depth(value) <= MAX_DEPTH
        json.dumps(value, allow_nan=False)  # only finite numbers: any JSON peer can read it back


def test_network_json_limits_name_what_is_wrong() -> None:
    assert json_depth(parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH)) == MAX_DEPTH
    for text, why in [
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "levels deep"),
        ("[" * 16_000, "levels deep"),
        ("9" * 5_000, "5000 digits"),
        ("1e999", "too large"),
        ("NaN", "not a JSON value"),
        (b"\xff{}", "not UTF-8"),
        ("{", "Expecting"),
    ]:
        with pytest.raises(JsonBodyError, match=why):
            parse_json(text)
    assert parse_json("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)


@FAST
@given(header=st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_host_headers_never_raise(header: str) -> None:
    name = host_name(header)
    assert name is None or (name.isascii() and name == name.lower())
    for policy in (host_policy("127.0.0.1"), host_policy("0.0.0.0"), host_policy("10.0.0.5", ["a.example"])):
        allowed = policy.allows(header)
        assert not allowed or name is not None
        if not allowed:
            assert "answers to" in policy.refusal(header, "--allowed-host")


@FAST
@given(value=st.text(max_size=40))
def test_allowed_host_values_are_names_or_refused(value: str) -> None:
    try:
        name = allowed_host_name(value)
    except HostConfigError as e:
        assert "--allowed-host" in str(e)
    else:
        assert host_policy("127.0.0.1", [value]).allows(f"[{name}]:8080" if ":" in name else f"{name}:8080")


@FAST
@given(headers=st.dictionaries(st.text(min_size=1, max_size=10), st.binary(max_size=30), max_size=4))
def test_headers_that_are_not_utf8_are_named(headers: dict[str, bytes]) -> None:
    decoded = {k: v.decode("utf-8", "surrogateescape") for k, v in headers.items()}
    why = undecodable_header(decoded)
    bad = [k for k, v in headers.items() if _not_utf8(v)]
    assert (why is None) == (not bad)
    if why is not None:
        assert "not valid UTF-8" in why
        why.encode("ascii")  # safe to put in any response


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False

"""Tool registry: typed Python functions (sync or async) exposed to the CS agent as Realtime function tools.

Each tool's parameters become a pydantic TypedDict built from the function's signature: its JSON schema is what the
model is told (descriptions from the docstring's Google style `Args:` section), and the same type validates the
arguments the model sends. Running a tool never raises: bad arguments, exceptions, timeouts and unknown names become
a JSON error the model can talk about, so one broken tool never ends a call.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints

from pydantic import ConfigDict, Field, JsonValue, TypeAdapter, ValidationError, with_config
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema, PydanticSerializationError, to_json
from typing_extensions import TypedDict

from .results import ToolCallRecord
from .validation import explain

log = logging.getLogger(__name__)
# Bounds on what crosses the model boundary: arguments a model sends, and an output that must fit in one
# data-channel message (the peers advertise 256 KiB) next to the rest of the event.
MAX_ARGUMENT_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 128 * 1024

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SUPPORTED = "use str, int, float, bool, Literal, list, dict or X | None"
# Arguments are JSON: a parameter gets exactly the JSON type its schema names (no "5" for 5, no "yes" for true).
_ARGUMENTS_CONFIG = ConfigDict(extra="forbid", strict=True)
# typing_extensions.TypedDict (pydantic needs it before Python 3.12) built from a runtime dict of fields, which
# mypy only accepts through an untyped name.
_typed_dict: Any = TypedDict


class ToolDefinitionError(TypeError):
    """A function cannot be turned into a tool (bad name, missing or unsupported type hint)."""


def _check_hint(hint: Any, where: str) -> None:
    """Refuse a parameter type a model cannot produce as JSON, or whose schema would need `$defs`."""
    if hint in (str, bool, int, float, list, tuple, dict):
        return
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is Literal:
        kinds = {type(a) for a in args}
        if not (kinds <= {str} or kinds <= {int}):
            raise ToolDefinitionError(f"{where}: Literal values must be all str or all int")
        return
    if origin in (list, tuple):
        for item in args:
            if item is not Ellipsis:
                _check_hint(item, where)
        return
    if origin is dict:
        if len(args) == 2 and args[1] is not Any:
            _check_hint(args[1], where)
        return
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and len(args) == 2:
            _check_hint(non_none[0], where)
            return
    raise ToolDefinitionError(f"{where}: unsupported parameter type {hint!r} ({_SUPPORTED})")


class _OpenAISchema(GenerateJsonSchema):
    """JSON schema as a function tool's `parameters`: no `title` on each property (pydantic's default), which the
    model would read as noise."""

    def field_title_should_be_set(self, schema: object) -> bool:
        return False

    def generate(self, schema: CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        out = super().generate(schema, mode)
        out.pop("title", None)  # the TypedDict's name
        out.setdefault("required", [])  # pydantic leaves it out when empty; some APIs require the key
        return out


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a Google-style docstring; other sections are dropped."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    desc: list[str] = []
    params: dict[str, str] = {}
    section = ""  # "" = the description, "args", or another section (Returns:, Raises:, ...) we skip
    current = ""
    for line in lines:
        stripped = line.strip()
        if re.match(r"^[A-Z][A-Za-z ]*:$", line):  # a section header, not indented
            section = "args" if stripped in ("Args:", "Arguments:", "Parameters:") else "other"
            continue
        if section == "":
            desc.append(line)
        elif section == "args":
            m = re.match(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif stripped and current:
                params[current] = f"{params[current]} {stripped}".strip()
    return "\n".join(desc).strip(), params


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    arguments_type: type  # the TypedDict of the parameters; `parameters` is its JSON schema
    validator: TypeAdapter[dict[str, Any]]  # validates what the model sends against `arguments_type`
    timeout_s: float | None = None

    def declaration(self) -> dict[str, Any]:
        """The session's `tools` entry for this function."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass
class ToolResult:
    """One executed (or refused) function call; `record()` is how summary.json keeps it."""

    call_id: str
    name: str
    arguments: JsonValue  # parsed JSON, or the text as sent when it was not JSON
    output: str
    ok: bool
    error: str | None = None
    duration_ms: float = 0.0
    started_at: float = field(default_factory=time.time)

    def record(self, leg: str, sent: bool, t: float) -> ToolCallRecord:
        """This result as the call records it: made on `leg`, output `sent` to it, at call time `t` (s)."""
        return ToolCallRecord(
            leg=leg,
            call_id=self.call_id,
            name=self.name,
            arguments=self.arguments,
            output=self.output,
            ok=self.ok,
            error=self.error,
            duration_ms=round(self.duration_ms, 2),
            sent=sent,
            t=round(t, 3),
        )


def tool_from_function(
    fn: Callable[..., Any], name: str | None = None, timeout_s: float | None = None
) -> Tool:
    tool_name = name or fn.__name__
    if not _NAME.match(tool_name):
        raise ToolDefinitionError(f"tool name {tool_name!r} must match {_NAME.pattern}")
    try:
        hints = get_type_hints(fn)
    except Exception as e:  # unresolvable forward references
        raise ToolDefinitionError(f"{tool_name}: cannot resolve type hints: {e}") from e
    description, docs = _parse_docstring(inspect.getdoc(fn) or "")
    # A TypedDict rather than a BaseModel: parameters may be called `json`, `copy`, `schema` or `_x` (names a
    # model reserves or hides), and what validates is a plain dict, ready for fn(**arguments).
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ToolDefinitionError(
                f"{tool_name}: *args, **kwargs and positional-only parameters cannot be described to a model"
            )
        if pname not in hints:
            raise ToolDefinitionError(f"{tool_name}: parameter {pname!r} has no type hint")
        _check_hint(hints[pname], f"{tool_name}.{pname}")
        doc = docs.get(pname)
        if param.default is param.empty:
            fields[pname] = Required[Annotated[hints[pname], Field(description=doc)]]
        else:
            try:
                to_json(param.default)  # the schema shows it to the model
            except PydanticSerializationError:
                raise ToolDefinitionError(f"{tool_name}.{pname}: the default {param.default!r} is not JSON") from None
            fields[pname] = NotRequired[Annotated[hints[pname], Field(param.default, description=doc)]]
    args_type = with_config(_ARGUMENTS_CONFIG)(_typed_dict(f"{tool_name}_arguments", fields))
    adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(args_type)
    parameters = adapter.json_schema(schema_generator=_OpenAISchema)
    return Tool(tool_name, description or tool_name, parameters, fn, args_type, adapter, timeout_s)


def _error(kind: str, message: str) -> str:
    return json.dumps({"error": {"type": kind, "message": message}})


class ToolRegistry:
    """A named set of tools and their executor. One registry per call (tools may hold per-call resources)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._tools: dict[str, Tool] = {}
        self._on_close: list[Callable[[], None]] = []

    def register(
        self, fn: Callable[..., Any] | None = None, *, name: str | None = None, timeout_s: float | None = None
    ) -> Any:
        """Add a function: `@registry.register` or `registry.register(fn, name=..., timeout_s=...)`."""

        def add(f: Callable[..., Any]) -> Callable[..., Any]:
            tool = tool_from_function(f, name, timeout_s)
            if tool.name in self._tools:
                raise ToolDefinitionError(f"tool {tool.name!r} is registered twice")
            self._tools[tool.name] = tool
            return f

        return add(fn) if fn is not None else add

    def on_close(self, fn: Callable[[], None]) -> None:
        self._on_close.append(fn)

    def close(self) -> None:
        for fn in self._on_close:
            try:
                fn()
            except Exception:
                log.exception("tool registry close hook failed")
        self._on_close.clear()

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def declarations(self) -> list[dict[str, Any]]:
        return [t.declaration() for t in self._tools.values()]

    async def run(self, name: str, arguments: str, call_id: str = "") -> ToolResult:
        """Validate and run one function call; never raises (except cancellation)."""
        start = time.perf_counter()

        def done(output: str, ok: bool, args: Any, error: str | None = None) -> ToolResult:
            return ToolResult(call_id, name, args, output, ok, error, (time.perf_counter() - start) * 1000)

        tool = self._tools.get(name)
        if tool is None:
            msg = f"unknown tool {name!r}; available: {', '.join(self._tools) or 'none'}"
            return done(_error("unknown_tool", msg), False, arguments, msg)
        if len(arguments) > MAX_ARGUMENT_CHARS:
            msg = f"arguments are {len(arguments)} characters, over the {MAX_ARGUMENT_CHARS}-character limit"
            return done(_error("invalid_arguments", msg), False, arguments[:200], msg)
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError) as e:
            msg = f"arguments are not valid JSON: {e if isinstance(e, json.JSONDecodeError) else 'nested too deep'}"
            return done(_error("invalid_arguments", msg), False, arguments[:200], msg)
        try:
            # The JSON text, not `args`: in JSON mode a strict tuple parameter accepts an array.
            kwargs = tool.validator.validate_json(arguments if arguments.strip() else "{}")
        except ValidationError as e:
            msg = f"bad arguments for {name}: {explain(e, tool.arguments_type)}"
            return done(_error("invalid_arguments", msg), False, args, msg)
        timeout = tool.timeout_s if tool.timeout_s is not None else self.timeout_s
        try:
            if inspect.iscoroutinefunction(tool.fn):
                value = await asyncio.wait_for(tool.fn(**kwargs), timeout)
            else:
                # Blocking tools (SQLite, files) run in a thread so the media and events keep flowing.
                value = await asyncio.wait_for(asyncio.to_thread(tool.fn, **kwargs), timeout)
        except TimeoutError:
            msg = f"{name} did not finish within {timeout:g} s"
            return done(_error("timeout", msg), False, args, msg)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("tool %s raised %s: %s", name, type(e).__name__, e)
            msg = f"{name} failed: {type(e).__name__}: {e}"
            return done(_error("tool_error", msg), False, args, msg)
        try:
            output = json.dumps(value)
        except (TypeError, ValueError) as e:
            msg = f"{name} returned a value that is not JSON: {e}"
            return done(_error("tool_error", msg), False, args, msg)
        if len(output) > MAX_OUTPUT_CHARS:
            msg = f"{name} returned {len(output)} characters of JSON, over the {MAX_OUTPUT_CHARS}-character limit"
            return done(_error("tool_error", msg), False, args, msg)
        return done(output, True, args)

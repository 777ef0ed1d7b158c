"""How the modules of server/voicebridge import each other: no cycles, no room reaching up, one import style.

Read from the source with `ast`, so an import inside a function counts as much as one at the top of a module
(a lazy import still ties the two modules together); only `if TYPE_CHECKING:` blocks are left out, as they never
run. The rooms and the order they may import in are the README's "How it is built": signaling -> bridge ->
realtime -> media, all of them on the foundations; the emulator shares only the protocol, so it imports none of
the bridge's rooms, and only the modules that start it import it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
SRC = Path(__file__).resolve().parents[2] / "server"
ROOT = "voicebridge"

# A room is a subpackage of voicebridge/ or one of its top-level modules. Each rank may import its own rank and
# the ranks below it, never one above.
RANKS: list[set[str]] = [
    # foundations
    {"config", "validation", "extras", "eventloop", "parent_death", "edge", "observability", "scenarios", "tools",
     "results"},
    {"media", "diagnostics", "lab"},  # lab: judges calls from their results and scenarios
    {"realtime"},
    {"bridge"},
    {"signaling"},
]
# Shares only the Realtime protocol with the bridge: it may use the foundations and loopback ICE (media/), no more.
EMULATOR = "emulator"
EMULATOR_MAY_IMPORT = RANKS[0] | {"media"}
# Where the embedded emulator is started, the only rooms that import it.
EMULATOR_STARTERS = {"backend", "cli"}
# The commands: they put the rooms to work in a process and may import any of them.
TOP = {"cli", "commands", "backend", "batch", "bench", "cluster"}


@dataclass(frozen=True)
class Module:
    name: str  # voicebridge.bridge.call
    path: Path
    is_package: bool  # an __init__.py

    @property
    def package(self) -> str:
        """The package whose folder holds this file: its siblings are that folder's modules."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def room(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else ""


@dataclass(frozen=True)
class Import:
    module: Module
    target: str  # the module it loads, resolved to a file of the package
    level: int  # 0 for `import x` / `from x import y`, 1 for `from .x import y`, 2 for `from ..x`, ...
    line: int

    def __str__(self) -> str:
        return f"{self.module.path.relative_to(SRC)}:{self.line}: imports {self.target}"


@cache
def modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = Module(".".join(parts), path, is_package)
    return found


def _resolve(name: str) -> str | None:
    """The module `name` loads: itself, or the nearest enclosing package for an attribute of one."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _statements(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _statements(child)


def _targets(module: Module, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (found := _resolve(alias.name)) is not None:
                yield found
        return
    if node.level:
        base = module.package.split(".")
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    for alias in node.names:
        # `from pkg import sub` loads the module pkg.sub when there is one; otherwise a name defined in pkg.
        sub = f"{source}.{alias.name}"
        found = sub if sub in modules() else _resolve(source)
        if found is not None:
            yield found


@cache
def imports() -> list[Import]:
    found: dict[Import, None] = {}  # one per statement and module imported, in the order of the source
    for module in modules().values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        for node in _statements(tree):
            level = node.level if isinstance(node, ast.ImportFrom) else 0
            for target in _targets(module, node):
                if target != module.name:
                    found[Import(module, target, level, node.lineno)] = None
    return list(found)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in imports():
        # A package's __init__ gathering its own modules is how a package shows its API, not a cycle.
        if imp.module.is_package and imp.target.startswith(imp.module.name + "."):
            continue
        graph[imp.module.name].add(imp.target)
    return graph


def test_the_checker_sees_every_kind_of_import() -> None:
    """The checks below pass vacuously if the parser misses imports: pin a few known ones of each kind."""
    seen = {(i.module.name, i.target, i.level) for i in imports()}
    assert ("voicebridge.bridge.call", "voicebridge.bridge.context", 1) in seen  # from .context import ...
    assert ("voicebridge.bridge.call", "voicebridge.config", 0) in seen  # from voicebridge.config import ...
    assert ("voicebridge.backend", "voicebridge.emulator.server", 0) in seen  # inside a function
    assert ("voicebridge.cli", "voicebridge.commands.call", 0) in seen  # inside a function
    assert len(modules()) > 80 and len(imports()) > 200


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (function-level imports count): " + " | ".join(" <-> ".join(c) for c in cycles)


def _rank(room: str) -> int | None:
    return next((i for i, rooms in enumerate(RANKS) if room in rooms), None)


def test_every_room_has_a_place() -> None:
    rooms = {m.room for m in modules().values() if m.room}
    placed = set().union(*RANKS) | TOP | {EMULATOR}
    assert rooms <= placed, f"rooms not placed in test_imports.RANKS/TOP: {sorted(rooms - placed)}"


def test_no_room_reaches_up() -> None:
    wrong = []
    for imp in imports():
        room, target = imp.module.room, modules()[imp.target].room
        if room == target or not target or room in TOP:
            continue
        if room == EMULATOR:
            if target not in EMULATOR_MAY_IMPORT:
                wrong.append(f"{imp} (the emulator shares only the protocol)")
            continue
        if target == EMULATOR:
            if room not in EMULATOR_STARTERS:
                wrong.append(f"{imp} (only {sorted(EMULATOR_STARTERS)} start the emulator)")
            continue
        mine, theirs = _rank(room), _rank(target)
        if mine is None or theirs is None or theirs > mine:
            wrong.append(f"{imp} ({room} is below {target})")
    assert not wrong, "imports reaching up:\n" + "\n".join(wrong)


def test_one_import_style() -> None:
    """A module imports the modules of its own folder relatively (`from .call import Call`) and everything else
    absolutely (`from voicebridge.config import Settings`): never `from ..x`, never `from .sub.x`. (ruff's TID252
    refuses `..`; this refuses the rest.)"""
    wrong = []
    for imp in imports():
        target = modules()[imp.target]
        sibling = not target.is_package and target.name.rpartition(".")[0] == imp.module.package
        if imp.level > 1 or (imp.level == 1 and not sibling):
            wrong.append(f"{imp}: relatively, from outside its folder (write from voicebridge...)")
        elif imp.level == 0 and sibling:
            wrong.append(f"{imp}: a module of its own folder, absolutely (write from .{target.name.split('.')[-1]})")
    assert not wrong, "\n".join(wrong)

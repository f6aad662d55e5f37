"""The emulator's import structure: dependencies point one way, and no folder imports in circles.

Read from the source (every import statement: module level, inside functions, and under
TYPE_CHECKING), so a circle that only a type annotation or a lazy import hides still counts.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

EMULATOR = Path(__file__).resolve().parent.parent / "emulator"

#: Layers, lowest first: a module may import its own layer and the ones below, never above.
#: CLI -> qmp/ -> commands/ -> jobs/ -> block/ (README); machine/ is the state root that commands/
#: and qmp/ act on, and it creates the block graph and the job list.
LAYERS = {
    "block": 1, "jobs": 2, "machine": 3, "transaction": 4, "commands": 4, "qmp": 5,
    "tools": 5, "cmdline": 6, "launcher": 6, "__main__": 7,
}
#: Leaf modules every layer may use; they import no other emulator module but each other.
SHARED = {"error", "qerror", "cutils", "versions", "__init__"}
#: Circles that remain, with why (none: drain.py and permissions.py describe the node they need
#: as a Protocol instead of importing node.py, which uses them).
KNOWN_CIRCLES: list[set[str]] = []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(EMULATOR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in EMULATOR.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_dependencies_point_one_way() -> None:
    wrong = []
    for module, targets in _imports().items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if there in SHARED:
                if here in SHARED and there == "__init__":
                    wrong.append(f"{module} -> {target}")
                continue
            if here in SHARED and here != "__init__":
                wrong.append(f"{module} -> {target} (a shared leaf module imports the emulator)")
            elif here not in SHARED and LAYERS[there] > LAYERS[here]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_nothing_in_the_emulator_imports_conformance() -> None:
    for path in EMULATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                assert not node.module.startswith("conformance"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("conformance") for a in node.names), path


def _circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_inside_a_folder() -> None:
    graph = _imports()
    same_folder = {
        module: {t for t in targets if t.rpartition(".")[0] == module.rpartition(".")[0]
                 and t != module.rpartition(".")[0]}
        for module, targets in graph.items()
    }
    circles = _circles(same_folder)
    assert [c for c in circles if c not in KNOWN_CIRCLES] == []


def test_the_circle_check_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]

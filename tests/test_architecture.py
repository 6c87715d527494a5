"""The package's structure (docs/architecture.md): no import cycle between modules, and the layers
import only downwards. Read from the source with ``ast``, so imports inside functions count too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "priorsam"

# package → packages it must never import (directly or inside a function)
FORBIDDEN = {
    "io": {"data", "models", "engine", "cli", "batch", "api", "bundle_support", "training", "evaluation"},
    "models": {"data", "engine", "cli", "batch", "api", "bundle_support", "training", "evaluation"},
    "data": {"engine", "models", "cli", "batch", "api", "bundle_support", "training", "evaluation"},
    "engine": {"cli", "batch", "api", "bundle_support", "training", "evaluation"},
    "training": {"cli", "batch", "api", "bundle_support"},
    "evaluation": {"cli", "batch", "bundle_support"},
    "api": {"cli", "bundle_support"},
    "batch": {"cli", "bundle_support"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module
                targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_graph_reader_sees_the_package():
    graph = import_graph()
    assert "priorsam.engine.segment" in graph["priorsam.api"]
    assert "priorsam.data.framed_volume" in graph["priorsam.engine.segment"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards(layer):
    graph = import_graph()
    bad = sorted((m, d) for m, deps in graph.items() if m.startswith(f"priorsam.{layer}")
                 for d in deps if d.split(".")[1:2] and d.split(".")[1] in FORBIDDEN[layer])
    assert not bad, f"{layer} imports upwards: {bad[:5]}"

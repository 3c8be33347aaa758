"""The package's import graph, read with ``ast`` from the source (imports inside functions included): no module imports
a higher layer, and no two modules import each other, directly or through others.

Run alone: ``.venv/bin/python -m pytest -q tests/test_import_graph.py``. Layers, low to high (a module may import its own
layer and the ones below):
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medsam_peft"
LAYERS = [
    {"errors", "version"},
    {"utils"},
    {"transforms"},
    {"models"},
    {"tuners"},
    {"data"},
    {"engines"},
    {"export", "graph_export", "hub", "label", "mlflow_model", "predict"},
    {"benchmark", "cli"},
]
__doc__ += "\n".join(f"    {i}: {', '.join(sorted(names))}" for i, names in enumerate(LAYERS)) + (
    "\n    the package's __init__ (the public facade) may import any layer; no module of the package imports it.\n")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from medsam_peft.x import y`` counts y when y is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
        graph.setdefault(name, set())
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1:
        return None  # the facade
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module}: its top-level part {parts[1]!r} has no layer; add it to LAYERS")


def test_no_module_imports_a_higher_layer_or_the_facade() -> None:
    problems = []
    for module, targets in import_graph().items():
        if _layer(module) is None:
            continue
        for target in targets:
            if _layer(target) is None:
                problems.append(f"{module} imports the package facade {target}")
            elif _layer(target) > _layer(module):
                problems.append(f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")
    assert not problems, "\n".join(sorted(problems))


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_known_edge() -> None:
    """The graph is read correctly (it would pass vacuously on an empty graph)."""
    graph = import_graph()
    assert "medsam_peft.models.build" in graph["medsam_peft.tuners.factory"]
    assert "medsam_peft.utils.atomic_io" in graph["medsam_peft.tuners.adapter_io"]
    assert len(graph) > 60
    # and the checks fire on what they look for
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert _layer("medsam_peft.models.build") < _layer("medsam_peft.tuners.base")

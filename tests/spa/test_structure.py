"""How spa/ hangs together: no import cycle (function-level imports included), and every module stays free of
the orchestration stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import spa

SPA = Path(spa.__file__).parent


def spa_imports() -> dict[str, set[str]]:
    """Module -> the spa modules it imports anywhere in its source (top level or inside a function)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SPA.glob("*.py")):
        module = "spa" if path.stem == "__init__" else f"spa.{path.stem}"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "spa":
                imported |= {f"spa.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spa."):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("spa.")}
        graph[module] = imported - {module}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        module, path = stack.pop()
        for imported in sorted(graph.get(module, ())):
            if imported == start:
                return [*path, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return None


def test_the_import_graph_is_read() -> None:
    graph = spa_imports()
    assert "spa.training" in graph["spa.experiment"] and "spa.training" in graph["spa.pretrain"]
    assert "spa.adapters" in graph["spa.counting"]


def test_no_import_cycle_in_spa() -> None:
    graph = spa_imports()
    cycles = [cycle for module in graph if (cycle := cycle_through(graph, module))]
    assert cycles == []


def test_cycle_detection_finds_a_function_level_cycle() -> None:
    assert cycle_through({"a": {"b"}, "b": {"a"}}, "a") == ["a", "b", "a"]


def test_new_modules_import_no_ray_mlflow_or_optuna() -> None:
    code = (
        "import sys, spa.training, spa.flags, spa.files, spa.validation, spa.digits, spa.splits\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

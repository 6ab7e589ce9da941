"""The package's shape, checked from its source: imports point downward only, with no cycle anywhere.

Every ``import`` and ``from ... import`` statement in ``src/backprop`` is read with ``ast``, function-local
ones included, and resolved to the backprop module it loads. The layers, lowest first::

    extras <- engine <- nn <- optim <- data <- training <- io <- distributed / onnx / sklearn / viz / playground
        <- backprop <- cli

A module may import from its own layer and those below; the package's ``__init__`` (``backprop``, the public
API that re-exports the layers) sits below the command line, which is its client, and ``__main__`` on top. Function-local imports are kept for optional or heavy third-party
dependencies: a backprop module is always imported at the top of the file that needs it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "backprop"

LAYERS = {"extras": -1, "engine": 0, "nn": 1, "optim": 2, "data": 3, "training": 4, "io": 5,
          "distributed": 6, "onnx": 6, "sklearn": 6, "viz": 6, "playground": 6, "cli": 8, "__main__": 9}
HUB = 7  # backprop/__init__.py


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _target(name: str) -> str | None:
    """The backprop module a dotted name loads (the longest prefix that is a module), else None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in MODULES:
            return ".".join(parts[:i])
    return None


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(backprop module imported, line, inside a function) for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    base = module if _is_package(module) else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((t, child.lineno, local) for a in child.names if (t := _target(a.name)))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    pkg = base.split(".")
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    origin = ".".join(pkg + ([child.module] if child.module else []))
                else:
                    origin = child.module or ""
                if not origin.startswith("backprop"):
                    continue
                for a in child.names:  # `from pkg import submodule` loads the submodule
                    t = _target(f"{origin}.{a.name}") if f"{origin}.{a.name}" in MODULES else _target(origin)
                    if t:
                        found.append((t, child.lineno, local))
            visit(child, inner)

    visit(tree, False)
    return [(t, line, local) for t, line, local in found if t != module]


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int:
    parts = module.split(".")
    return HUB if len(parts) == 1 else LAYERS[parts[1]]


def test_every_module_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in MODULES if "." in m} - set(LAYERS))
    assert not unknown, f"modules outside the layer map: {unknown}; give them a layer in LAYERS (and the README)"


def test_imports_point_downward_only():
    wrong = [f"{m}:{line} imports {t} (layer {_layer(t)} above {_layer(m)})"
             for m, edges in GRAPH.items() for t, line, _ in edges if _layer(t) > _layer(m)]
    assert not wrong, "imports that point upward:\n" + "\n".join(wrong)


def test_no_import_cycle():
    """Tarjan's strongly connected components over every import edge, function-local ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w, _, _ in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            connect(m)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_backprop_modules_are_imported_at_the_top():
    local = [f"{m}:{line} imports {t} inside a function" for m, edges in GRAPH.items() for t, line, is_local in edges
             if is_local]
    assert not local, "function-local imports of backprop modules (import them at the top):\n" + "\n".join(local)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The walk itself: a made-up pair of modules importing each other, one of them from a function."""
    assert _target("backprop.nn.functional") == "backprop.nn.functional"
    assert _target("backprop.nn.functional.relu") == "backprop.nn.functional"
    fake = {"backprop.engine.a": [("backprop.training.loop", 1, True)], "backprop.training.loop": [("backprop.engine.a", 1, False)]}
    monkeypatch.setattr(__import__(__name__), "GRAPH", fake, raising=False)
    with pytest.raises(AssertionError, match="cycle"):
        test_no_import_cycle()
    with pytest.raises(AssertionError, match="upward"):
        test_imports_point_downward_only()


def _grep_backward() -> list[str]:
    """Files under src/backprop whose code calls ``.backward(`` (docstrings, which show users how, aside)."""
    hits = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"
               for n in ast.walk(tree)):
            hits.add(path.relative_to(PACKAGE).as_posix())
    return sorted(hits)


def test_only_the_step_starts_a_backward_pass():
    """Outside the engine and the learner's tools (trace's hand-and-engine check, graph drawing), only the Step trains."""
    learner_tools = {"cli/trace.py", "viz/trace.py", "viz/trace_rnn.py", "viz/graph.py"}
    hits = [h for h in _grep_backward() if not h.startswith("engine/") and h not in learner_tools]
    assert hits == ["training/loop.py"], hits


def test_importing_backprop_has_no_side_effect_beyond_definitions():
    """Importing the package neither tunes malloc nor starts threads (checked in a fresh interpreter)."""
    code = ("import threading, backprop, backprop.engine.memory as m; "
            "print(m._tuned, threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "1"], out

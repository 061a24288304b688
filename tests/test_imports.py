"""No import cycle among the first-party packages.

The graph is read from the source with `ast`, not from `sys.modules`: every import
statement counts wherever it stands (module level, inside a function, under
TYPE_CHECKING), because an import moved into a function to dodge a cycle is still one.
`from x import y` depends on the module `x.y` when y is a submodule, otherwise on `x`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "training", "contract", "bench")


def first_party_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages present under root."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _from_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    # In a package's __init__ one dot is the package itself; in a module, its package.
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its longest prefix that is a first-party module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """First-party modules that `module` imports anywhere in its source."""
    path = modules[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(module, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.append(sub if sub in modules else base)
        for name in names:
            target = _known(name, modules)
            if target is not None and target != module:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = first_party_modules(root)
    return {m: imports_of(m, modules) for m in modules}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_first_party_packages_have_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    # Not vacuous: the graph holds the packages and the edges the code really has.
    assert {"app.main", "training.pipeline", "bench.student"} <= set(graph)
    assert "training.distill" in graph["training.pipeline"]
    assert import_cycles(graph) == []


def test_fisher_maths_imports_nothing_from_distillation() -> None:
    graph = import_graph(ROOT)
    distillation = {
        "training.distill",
        "training.distill_config",
        "training.fisher_analysis",
        "training.kd_targets",
        "training.losses",
        "training.prune",
        "training.prune_schedule",
        "training.sampling",
    }
    assert reachable(graph, "training.fisher") & distillation == set()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "training/__init__.py": "",
            "training/a.py": "from training.b import B\n",
            "training/b.py": (
                "from typing import TYPE_CHECKING\n"
                "B = 1\n"
                "def late() -> None:\n"
                "    from training.a import X  # noqa: PLC0415 (cycle)\n"
            ),
            "training/c.py": "import training.a\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["training.c"] == {"training.a"}
    assert import_cycles(graph) == [["training.a", "training.b"]]


def test_submodule_and_relative_imports_are_edges(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "training/__init__.py": "",
            "training/models/__init__.py": "from . import base\n",
            "training/models/base.py": "from ..fit import loop\n",
            "training/fit.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from training.models import base\n"
                "loop = 0\n"
            ),
            "bench/run.py": "from training import fit\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph["training.models"] == {"training.models.base"}
    assert graph["training.models.base"] == {"training.fit"}
    assert graph["training.fit"] == {"training.models.base"}
    assert graph["bench.run"] == {"training.fit"}
    assert import_cycles(graph) == [["training.fit", "training.models.base"]]

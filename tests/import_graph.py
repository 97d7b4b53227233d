"""The import graph of latentopt, read from its source (``ast``, nothing is imported).

Every ``import`` statement counts, including imports inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency.  Used by
``tests/test_architecture.py`` and by ``docs/_ext/draw_layers.py`` (the layers diagram).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Module name -> (path, is_package) for every module of latentopt."""
    out = {}
    for path in sorted((root / "latentopt").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = modules()


def imported_names(module: str) -> set[str]:
    """Absolute names of everything ``module`` imports (modules and their members)."""
    path, is_package = MODULES[module]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def dependencies(module: str) -> set[str]:
    """The modules of latentopt that ``module`` imports."""
    deps = set()
    for name in imported_names(module):
        while name and name not in MODULES:  # `from pkg.mod import func` -> pkg.mod
            name = name.rpartition(".")[0]
        if name and name != module:
            deps.add(name)
    return deps


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def external(module: str) -> set[str]:
    """Top-level names of the third-party packages ``module`` imports."""
    return {n.split(".")[0] for n in imported_names(module)} - {"latentopt"}


def package_graph() -> dict[str, set[str]]:
    """Subpackage (``ir``, ``backends``, ...) -> the subpackages it imports."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        parts = module.split(".")
        if len(parts) < 3 and not MODULES[module][1]:
            continue  # latentopt/__init__.py and __main__.py: the entry points
        if len(parts) < 2:
            continue
        deps = {d.split(".")[1] for d in dependencies(module) if d.count(".") >= 1}
        deps = {d for d in deps if d in _subpackages()}
        graph.setdefault(parts[1], set()).update(deps - {parts[1]})
    return graph


def _subpackages() -> set[str]:
    return {m.split(".")[1] for m, (_, is_pkg) in MODULES.items() if is_pkg and m.count(".") == 1}

"""The package's layering, checked on its source: imports go one way.

Every ``import`` statement of every module counts, including imports inside functions
and under ``TYPE_CHECKING``: a lazy import is still a dependency (:mod:`import_graph`).
The rules are those of docs/architecture.md: no import circles; ``ir`` imports nothing of latentopt
outside ``ir``; ``backends`` never imports torch; only ``backends/fhe*`` imports
concrete; every schedule step type has a rendering in every backend.
"""

from __future__ import annotations

import sys

import pytest
from import_graph import MODULES, cycles, dependencies, external

#: Circles owned by other work, each to be removed once fixed (the test then says so).
KNOWN_CYCLES: set[frozenset[str]] = set()


def test_cycle_detection_works():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert dependencies("latentopt.backends.fhe") >= {"latentopt.backends.fhe_lowering",
                                                       "latentopt.ir.schedule"}


def test_no_import_cycles():
    found = set(cycles({m: dependencies(m) for m in MODULES}))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"modules that import each other (directly or not): {new}"
    fixed = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not fixed, f"these circles are gone: remove them from KNOWN_CYCLES: {fixed}"


def test_ir_imports_nothing_of_the_package_outside_ir():
    for module in MODULES:
        if module == "latentopt.ir" or module.startswith("latentopt.ir."):
            outside = {d for d in dependencies(module)
                       if d != "latentopt.ir" and not d.startswith("latentopt.ir.")}
            assert not outside, f"{module} imports {sorted(outside)}"
            assert external(module) <= {"numpy", "__future__", *_stdlib()}, module


def _stdlib() -> set[str]:
    return set(sys.stdlib_module_names)


@pytest.mark.parametrize("heavy", ["torch", "brevitas", "torch_pruning"])
def test_backends_never_import_torch(heavy):
    users = [m for m in MODULES if m.startswith("latentopt.backends") and heavy in external(m)]
    assert not users, f"{heavy} imported by {users}"


def test_only_fhe_backends_import_concrete():
    users = {m for m in MODULES if "concrete" in external(m)}
    allowed = {m for m in users if m.startswith("latentopt.backends.fhe")}
    assert users == allowed, f"concrete imported outside backends/fhe*: {sorted(users - allowed)}"
    assert users, "the FHE backend should import concrete somewhere"


def test_every_step_type_has_one_rendering_per_backend():
    """A new node type is one step type in the schedule plus one rendering per backend."""
    from latentopt.backends.fhe_lowering import LOWERINGS
    from latentopt.backends.integer import KERNELS
    from latentopt.backends.onnx_render import RENDERERS
    from latentopt.ir.nodes import NODE_TYPES
    from latentopt.ir.schedule import SERVER_STEPS, STEP_TYPES

    assert set(STEP_TYPES) == set(NODE_TYPES.values()), "a node type without a step type"
    assert set(RENDERERS) == set(STEP_TYPES.values())
    assert set(KERNELS) == set(SERVER_STEPS)
    assert set(LOWERINGS) == set(SERVER_STEPS)


def test_layers_diagram_matches_the_code():
    """docs/images/layers.svg is drawn from the import graph; redraw it after moves."""
    import importlib.util

    from import_graph import ROOT

    path = ROOT / "docs" / "_ext" / "draw_layers.py"
    spec = importlib.util.spec_from_file_location("draw_layers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    svg = module.render()
    assert "latentopt.ir</text>" in svg and ">schedule</text>" in svg
    assert (ROOT / "docs" / "images" / "layers.svg").read_text() == svg, (
        "the layers drawing is out of date: run python docs/_ext/draw_layers.py")

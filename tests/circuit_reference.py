"""Reference evaluation of IR circuits for the tests: every integer value from the node
definitions with Python-int arithmetic, independent of the integer backend.

Shared by tests/ir and tests/backends (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import numpy as np

from latentopt.ir import Add, Circuit, Gemm, Round, TableLookup


def reference_run(circuit: Circuit, q: np.ndarray) -> dict[str, np.ndarray]:
    """Every integer value of ``circuit`` on quantized inputs ``q``, from the node
    definitions with Python-int arithmetic (independent of the integer backend)."""
    vals: dict[str, np.ndarray] = {circuit.nodes[0].name: np.asarray(q, dtype=np.int64)}
    for node in circuit.nodes[1:-1]:
        x = vals[node.inputs[0]].astype(object)
        if isinstance(node, Add):
            out = x + vals[node.inputs[1]].astype(object)
        elif isinstance(node, Gemm):
            acc = (x - node.input_zero_point) @ node.weight.T.astype(object)
            if node.bias is not None:
                acc = acc + node.bias.astype(object)
            out = acc
        elif isinstance(node, Round):
            step = 1 << node.lsbs
            out = x if node.lsbs == 0 else ((x + step // 2) // step) * step
        elif isinstance(node, TableLookup):
            out = node.fn(x.astype(np.int64))
        else:  # pragma: no cover
            raise TypeError(node)
        assert all(abs(int(v)) < 2**62 for v in np.ravel(out))
        vals[node.name] = np.asarray(out).astype(np.int64)
    return vals

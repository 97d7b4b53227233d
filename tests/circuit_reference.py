"""Reference evaluation of IR circuits for the tests: every integer value from the node
definitions with Python-int arithmetic, independent of the integer backend.

Shared by tests/ir and tests/backends (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import itertools

import numpy as np

from latentopt.ir import (
    Add,
    Circuit,
    Concat,
    Conv,
    Gemm,
    MaxPool,
    Round,
    SumPool,
    TableLookup,
)


def _taps(node, p: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """(kernel index, input position or None when padded) of output position ``p``."""
    nd = len(node.input_shape) - 1
    out = []
    for k in itertools.product(*(range(n) for n in node.kernel_shape)):
        pos = tuple(p[a] * node.stride[a] + k[a] * node.dilation[a] - node.padding[a]
                    for a in range(nd))
        inside = all(0 <= pos[a] < node.input_shape[a + 1] for a in range(nd))
        out.append((k, pos if inside else None))
    return out


def reference_window(node, x: np.ndarray) -> np.ndarray:
    """Conv / SumPool / MaxPool by their definitions, one output element at a time."""
    rows = []
    for sample in x.astype(object):
        xs = sample.reshape(node.input_shape)
        out = np.empty(node.output_shape, dtype=object)
        groups = getattr(node, "groups", 1)
        for o in range(node.output_shape[0]):
            for p in itertools.product(*(range(n) for n in node.output_shape[1:])):
                taps = _taps(node, p)
                if isinstance(node, MaxPool):
                    out[(o, *p)] = max(xs[(o, *pos)] for _, pos in taps if pos is not None)
                    continue
                zp = node.input_zero_point
                if isinstance(node, SumPool):
                    out[(o, *p)] = sum((xs[(o, *pos)] - zp for _, pos in taps
                                        if pos is not None), 0)
                    continue
                cg = node.weight.shape[1]
                first = (o // (node.weight.shape[0] // groups)) * cg
                acc = 0 if node.bias is None else int(node.bias[o])
                for c in range(cg):
                    for k, pos in taps:
                        if pos is not None:
                            acc += int(node.weight[(o, c, *k)]) * (xs[(first + c, *pos)] - zp)
                out[(o, *p)] = acc
        rows.append(out.reshape(-1))
    return np.array(rows, dtype=object).reshape(len(x), -1)


def reference_run(circuit: Circuit, q: np.ndarray) -> dict[str, np.ndarray]:
    """Every integer value of ``circuit`` on quantized inputs ``q``, from the node
    definitions with Python-int arithmetic (independent of the integer backend)."""
    vals: dict[str, np.ndarray] = {circuit.nodes[0].name: np.asarray(q, dtype=np.int64)}
    for node in circuit.nodes[1:-1]:
        x = vals[node.inputs[0]].astype(object)
        if isinstance(node, Add):
            out = x + vals[node.inputs[1]].astype(object)
        elif isinstance(node, Concat):
            out = np.concatenate([x, vals[node.inputs[1]].astype(object)], axis=1)
        elif isinstance(node, Gemm):
            acc = (x - node.input_zero_point) @ node.weight.T.astype(object)
            if node.bias is not None:
                acc = acc + node.bias.astype(object)
            out = acc
        elif isinstance(node, (Conv, SumPool, MaxPool)):
            out = reference_window(node, x)
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

"""Exact integer execution of an IR circuit: the reference backend.

Every other backend (FHE simulation and execution, ONNX) must reproduce the integers
this backend computes.  It is vectorised over the batch and fast:

* integers are carried in float32 arrays when every worst-case accumulator (every
  partial sum included) stays below 2**24, in float64 below 2**53 -- both exact, and
  they let matrix products run on BLAS -- and in int64 otherwise;
* table lookups are gathers from tables materialised once over the worst-case domain;
* batches are processed in cache-sized chunks with reused buffers.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 0.5, 0, 4), Gemm("g", ("q",), [[2, -1]]),
...              Dequantize("out", ("g",), 0.5, 0)], n_features=2)
>>> backend = IntegerBackend(c)
>>> backend.quantize(np.array([[1.0, 0.5]])).tolist()
[[2, 1]]
>>> backend.run_integers(np.array([[2, 1]])).tolist()
[[3]]
>>> backend.predict(np.array([[1.0, 0.5]])).tolist()
[[1.5]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..ir import (
    Add,
    Circuit,
    Gemm,
    Node,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)
from ..ir.functions import int_grid
from ..ir.ranges import Interval

__all__ = ["IntegerBackend"]

#: Largest table (entries over all channels) materialised for a table lookup.
MAX_TABLE_ENTRIES = 1 << 22
#: Rows processed at once by :meth:`IntegerBackend.predict`.
CHUNK_ROWS = 1024

Kernel = Callable[[np.ndarray, bool], np.ndarray]  # (x, may_overwrite_x) -> y


def _accumulator_bound(node: Gemm, x_range: Interval) -> int:
    """Largest |partial sum| the gemm can produce (bias included)."""
    zp = node.input_zero_point
    mag = np.maximum(np.abs(x_range.lo - zp), np.abs(x_range.hi - zp)).astype(object)
    if mag.size == 1:
        mag = np.full(node.in_features, mag[0], dtype=object)
    bound = int(max(np.abs(node.weight).astype(object) @ mag))
    if node.bias is not None:
        bound += int(np.abs(node.bias).max())
    return bound


def _choose_dtype(circuit: Circuit, worst: dict[str, Interval]) -> Any:
    top = 0
    for node in circuit.nodes:
        if isinstance(node, Gemm):
            top = max(top, _accumulator_bound(node, worst[node.inputs[0]]))
            # the kernel subtracts the zero point in the carrier: it must be exact there too
            top = max(top, abs(node.input_zero_point))
        top = max(top, abs(worst[node.name].min), abs(worst[node.name].max))
    if top < 2**24:
        return np.float32
    if top < 2**53:
        return np.float64
    return np.int64


def _gemm_kernel(node: Gemm, dtype: Any) -> Kernel:
    zp = node.input_zero_point
    wt = np.ascontiguousarray(node.weight.T.astype(dtype))
    b = None if node.bias is None else node.bias.astype(dtype)

    def gemm(x: np.ndarray, inplace: bool) -> np.ndarray:
        if zp:
            x = x - dtype(zp)
        acc = np.matmul(x, wt)
        if b is not None:
            acc += b
        return acc

    return gemm


def _round_kernel(node: Round, dtype: Any) -> Kernel:
    if node.lsbs == 0:
        return lambda x, inplace: x
    if dtype is np.int64:
        return lambda x, inplace: node.apply(x)
    half, step, inv = dtype(1 << (node.lsbs - 1)), dtype(1 << node.lsbs), dtype(2.0**-node.lsbs)

    def round_float(x: np.ndarray, inplace: bool) -> np.ndarray:  # exact: 2**k scaling
        y = np.add(x, half, out=x if inplace else None)
        y *= inv
        np.floor(y, out=y)
        y *= step
        return y

    return round_float


def _tlu_kernel(node: TableLookup, x_range: Interval, lsbs: int, dtype: Any) -> Kernel:
    fn = node.fn
    step = 1 << lsbs
    lo, hi = x_range.min, x_range.max
    n = (hi - lo) // step + 1
    channels = fn.n_channels or 1
    if n * channels > MAX_TABLE_ENTRIES:

        def tlu_direct(x: np.ndarray, inplace: bool) -> np.ndarray:
            return fn(x.astype(np.int64)).astype(dtype)

        return tlu_direct
    # Values at multiples of `step` (after rounding, lo and hi are multiples too).
    # Base-class method called explicitly: ExplicitTable's `table` field (the array)
    # shadows the `table()` method on its instances.
    table = fn.tabulate(lo, hi, step).astype(dtype)  # (channels, n)
    affine = _affine_kernel(fn, table, lo, hi, step, dtype)
    if affine is not None:
        return affine
    flat = table[0] if channels == 1 else table.reshape(-1)
    offsets = None if channels == 1 else (np.arange(channels, dtype=np.int64) * n)[None, :]
    idx_dtype = np.int32 if n * channels < 2**31 else np.int64

    def tlu_gather(x: np.ndarray, inplace: bool) -> np.ndarray:
        if dtype is np.int64:
            idx = (x - lo) >> lsbs
        else:
            idx = ((x - dtype(lo)) * dtype(2.0**-lsbs) if lsbs else x - dtype(lo))
            idx = idx.astype(idx_dtype)
        if offsets is not None:
            idx = idx + offsets.astype(idx.dtype)
        return np.take(flat, idx)

    return tlu_gather


def affine_ratio(fn: Any, grid: np.ndarray, values: np.ndarray, dtype: Any) -> Any:
    """``input_scale / output_scale`` in ``dtype`` when ``clip(rint(x * ratio) + zp)``,
    computed in ``dtype``, equals ``values`` (the function on ``grid``) everywhere; else
    ``None``.  Only ReLU / identity requantizations qualify (affine before clipping), and
    never in an int64 carrier.  Shared by this backend and the ONNX export, so both take
    the shortcut exactly when it is provably exact.
    """
    if dtype is np.int64 or not isinstance(fn, QuantActivation):
        return None
    if fn.activation not in ("relu", "identity"):
        return None
    ratio = (fn.input_scale / fn.output_scale).astype(dtype)
    qlo, qhi = fn.qrange
    y = np.rint(grid.astype(dtype) * ratio) + dtype(fn.output_zero_point)
    y = np.minimum(np.maximum(y, dtype(qlo)), dtype(qhi))
    return ratio if np.array_equal(y, values) else None


def _affine_kernel(
    fn: Any, table: np.ndarray, lo: int, hi: int, step: int, dtype: Any
) -> Kernel | None:
    """``clip(rint(x * r) + zp)`` in place, when it provably equals the table.

    ReLU/identity requantization is affine before clipping.  Evaluating it in the
    carrier dtype costs three in-place passes instead of an index conversion and a
    gather; it is used only if it reproduces the table on the whole worst-case domain
    (so the backend stays exact by construction, see :func:`affine_ratio`).
    """
    if (isinstance(fn, QuantActivation) and fn.activation == "relu"
            and fn.output_zero_point != fn.qrange[0]):
        return None
    width = table.shape[0]
    domain = int_grid(lo, hi, step)
    ratio = affine_ratio(fn, np.broadcast_to(domain[:, None], (domain.size, width)), table.T,
                         dtype)
    if ratio is None:
        return None
    qlo, qhi = fn.qrange
    zp = dtype(fn.output_zero_point)
    # per-channel bound rows: numpy's maximum/minimum are much faster with an array
    # operand than with a scalar (or np.clip), which matters for these tiny passes
    lo_row = np.full(max(width, np.size(ratio)), qlo, dtype=dtype)
    hi_row = np.full(max(width, np.size(ratio)), qhi, dtype=dtype)

    def affine(x: np.ndarray, inplace: bool = False) -> np.ndarray:
        y = np.multiply(x, ratio, out=x if inplace else None)
        np.rint(y, out=y)
        if zp:
            y += zp
        np.maximum(y, lo_row if lo_row.size == y.shape[-1] else lo_row[0], out=y)
        return np.minimum(y, hi_row if hi_row.size == y.shape[-1] else hi_row[0], out=y)

    return affine


def _add_kernel(xs: Any, inplace: bool) -> np.ndarray:
    a, b = xs
    return a + b


class IntegerBackend:
    """Executes a :class:`~latentopt.ir.Circuit` exactly on integers.

    Parameters
    ----------
    circuit : Circuit
        The circuit to run.  Kernels (carrier dtype, materialised tables) are prepared
        once here.

    Attributes
    ----------
    dtype : numpy dtype
        Carrier of the integers: float32, float64 or int64 (see module docstring).
    """

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        worst = circuit.worst_case_ranges()
        self.dtype = _choose_dtype(circuit, worst)
        self._steps: list[tuple[Node, Kernel]] = []
        for node in circuit.nodes[1:-1]:
            src = node.inputs[0]
            if isinstance(node, Gemm):
                kernel = _gemm_kernel(node, self.dtype)
            elif isinstance(node, Round):
                kernel = _round_kernel(node, self.dtype)
            elif isinstance(node, TableLookup):
                src_node = circuit[src]
                lsbs = src_node.lsbs if isinstance(src_node, Round) else 0
                kernel = _tlu_kernel(node, worst[src], lsbs, self.dtype)
            elif isinstance(node, Add):
                kernel = _add_kernel  # reads two values: see _run
            else:
                raise TypeError(f"integer backend cannot run {type(node).__name__}")
            self._steps.append((node, kernel))
        self._sequential = all(
            node.arity == 1 and node.inputs[0] == prev.name
            for (node, _), prev in zip(self._steps, circuit.nodes[:-2])
        ) and circuit.output.inputs[0] == circuit.nodes[-2].name

    # ------------------------------------------------------------------ stages
    def quantize(self, X: np.ndarray) -> np.ndarray:
        """Float features -> input integers (client side under FHE)."""
        X = np.asarray(X, dtype=np.float64)
        self._check_width(X, self.circuit.n_features, "X")
        return self.circuit.input_quantizer.apply(X)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Output integers -> floats (client side under FHE)."""
        return self.circuit.output.apply(values)

    def _run(self, carrier: np.ndarray, keep: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values: dict[str, np.ndarray] = {self.circuit.input_quantizer.name: carrier}
        current = carrier
        inplace = self._sequential and not keep
        for node, kernel in self._steps:
            if node.arity == 2:
                current = kernel((values[node.inputs[0]], values[node.inputs[1]]), False)
            else:
                src = current if self._sequential else values[node.inputs[0]]
                current = kernel(src, inplace)
            if keep or not self._sequential:
                values[node.name] = current
        out = current if self._sequential else values[self.circuit.output.inputs[0]]
        return out, values

    def run_integers(self, q: np.ndarray, return_all: bool = False) -> Any:
        """Run the integer part of the circuit on quantized inputs.

        Parameters
        ----------
        q : int array of shape (n_samples, n_features)
            Quantized inputs, inside the input quantizer's range.
        return_all : bool
            Also return every intermediate value (dict name -> int64 array).

        Returns
        -------
        out : int64 array of shape (n_samples, n_outputs)
        values : dict, only if ``return_all``
        """
        q = np.asarray(q)
        if q.dtype.kind not in "iu":
            raise TypeError(f"run_integers expects integer inputs, got dtype {q.dtype}")
        self._check_width(q, self.circuit.n_features, "q")
        qnode: QuantizeInput = self.circuit.input_quantizer
        lo, hi = qnode.qrange
        if q.size and (q.min() < lo or q.max() > hi):
            raise ValueError(f"quantized inputs must lie in [{lo}, {hi}]")
        out, values = self._run(q.astype(self.dtype), keep=return_all)
        result = out.astype(np.int64)
        if return_all:
            return result, {k: v.astype(np.int64) for k, v in values.items()}
        return result

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantize, run and dequantize, chunk by chunk: float in, float out."""
        X = np.asarray(X)
        self._check_width(X, self.circuit.n_features, "X")
        qnode = self.circuit.input_quantizer
        parts = []
        for start in range(0, len(X), CHUNK_ROWS):
            q = qnode.apply_float32(X[start : start + CHUNK_ROWS]).astype(self.dtype, copy=False)
            out, _ = self._run(q, keep=False)
            parts.append(self.circuit.output.apply(out))
        if not parts:
            return np.empty((0, self.circuit.n_outputs))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def calibrate(self, X: np.ndarray) -> Circuit:
        """A copy of the circuit with calibrated ranges observed on ``X``."""
        _, values = self.run_integers(self.quantize(X), return_all=True)
        return self.circuit.with_calibration(values)

    @staticmethod
    def _check_width(X: np.ndarray, n: int, name: str) -> None:
        if X.ndim != 2 or X.shape[1] != n:
            raise ValueError(f"{name} must have shape (n_samples, {n}), got {X.shape}")

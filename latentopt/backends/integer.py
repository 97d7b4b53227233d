"""Exact integer execution of an IR circuit: the reference backend.

Every other backend (FHE simulation and execution, ONNX) must reproduce the integers
this backend computes.  It is vectorised over the batch and fast:

* integer matrix products run on float32 BLAS when the worst-case accumulator (every
  partial sum included) stays below 2**24, on float64 BLAS below 2**53, and on int64
  otherwise -- all three are exact;
* table lookups are gathers from tables materialised once over the worst-case domain.

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

from typing import Callable

import numpy as np

from ..ir import Circuit, Dequantize, Gemm, QuantizeInput, Round, TableLookup
from ..ir.ranges import Interval

__all__ = ["IntegerBackend"]

#: Largest table (entries over all channels) materialised for a table lookup.
MAX_TABLE_ENTRIES = 1 << 22

Kernel = Callable[[np.ndarray], np.ndarray]


def _gemm_kernel(node: Gemm, x_range: Interval) -> Kernel:
    zp = node.input_zero_point
    mag = np.maximum(np.abs(x_range.lo - zp), np.abs(x_range.hi - zp)).astype(object)
    if mag.size == 1:
        mag = np.full(node.in_features, mag[0], dtype=object)
    wabs = np.abs(node.weight).astype(object)
    bound = int(max(wabs @ mag)) if node.weight.size else 0
    if node.bias is not None:
        bound += int(np.abs(node.bias).max())
    bias = node.bias
    if bound < 2**53:
        dtype = np.float32 if bound < 2**24 else np.float64
        wt = np.ascontiguousarray(node.weight.T.astype(dtype))
        b = None if bias is None else bias.astype(dtype)

        def gemm_float(x: np.ndarray) -> np.ndarray:
            xf = x.astype(dtype, copy=False)
            if zp:
                xf = xf - dtype(zp)
            acc = xf @ wt
            if b is not None:
                acc += b
            return acc

        return gemm_float
    w64 = np.ascontiguousarray(node.weight.T)

    def gemm_int(x: np.ndarray) -> np.ndarray:
        acc = (x.astype(np.int64) - zp) @ w64
        return acc if bias is None else acc + bias

    return gemm_int


def _tlu_kernel(node: TableLookup, x_range: Interval, lsbs: int, width: int) -> Kernel:
    fn = node.fn
    step = 1 << lsbs
    lo, hi = x_range.min, x_range.max
    n = (hi - lo) // step + 1
    channels = fn.n_channels or 1
    if n * channels > MAX_TABLE_ENTRIES:

        def tlu_direct(x: np.ndarray) -> np.ndarray:
            return fn(x.astype(np.int64))

        return tlu_direct
    # Values at multiples of `step` (after rounding, lo and hi are multiples too).
    table = fn.table(lo, hi, step).astype(np.float32)  # (channels, n), small ints
    if channels == 1:
        flat = table[0]
        offsets = None
    else:
        flat = table.reshape(-1)
        offsets = (np.arange(channels, dtype=np.int64) * n)[None, :]

    def tlu_gather(x: np.ndarray) -> np.ndarray:
        xi = x.astype(np.int64, copy=False)
        idx = (xi - lo) >> lsbs if lsbs else xi - lo
        if offsets is not None:
            idx = idx + offsets
        return np.take(flat, idx)

    return tlu_gather


class IntegerBackend:
    """Executes a :class:`~latentopt.ir.Circuit` exactly on integers.

    Parameters
    ----------
    circuit : Circuit
        The circuit to run.  Kernels (BLAS dtype, materialised tables) are prepared
        once here.
    """

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        worst = circuit.worst_case_ranges()
        self._worst = worst
        self._kernels: dict[str, Kernel] = {}
        for node in circuit.nodes[1:-1]:
            src = node.inputs[0]
            if isinstance(node, Gemm):
                self._kernels[node.name] = _gemm_kernel(node, worst[src])
            elif isinstance(node, Round):
                self._kernels[node.name] = _round_kernel(node)
            elif isinstance(node, TableLookup):
                src_node = circuit[src]
                lsbs = src_node.lsbs if isinstance(src_node, Round) else 0
                self._kernels[node.name] = _tlu_kernel(
                    node, worst[src], lsbs, circuit.width(node.name)
                )
            else:
                raise TypeError(f"integer backend cannot run {type(node).__name__}")

    # ------------------------------------------------------------------ stages
    def quantize(self, X: np.ndarray) -> np.ndarray:
        """Float features -> input integers (client side under FHE)."""
        X = np.asarray(X, dtype=np.float64)
        self._check_width(X, self.circuit.n_features, "X")
        return self.circuit.input_quantizer.apply(X)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Output integers -> floats (client side under FHE)."""
        out: Dequantize = self.circuit.output
        return out.apply(values)

    def run_integers(self, q: np.ndarray, return_all: bool = False):  # type: ignore[no-untyped-def]
        """Run the integer part of the circuit on quantized inputs.

        Parameters
        ----------
        q : int array of shape (n_samples, n_features)
            Quantized inputs, inside the input quantizer's range.
        return_all : bool
            Also return every intermediate value (dict name -> int64 array).
        """
        q = np.asarray(q)
        if q.dtype.kind not in "iu":
            raise TypeError(f"run_integers expects integer inputs, got dtype {q.dtype}")
        self._check_width(q, self.circuit.n_features, "q")
        qnode: QuantizeInput = self.circuit.input_quantizer
        lo, hi = qnode.qrange
        if q.size and (q.min() < lo or q.max() > hi):
            raise ValueError(f"quantized inputs must lie in [{lo}, {hi}]")
        values: dict[str, np.ndarray] = {qnode.name: q.astype(np.int64)}
        for node in self.circuit.nodes[1:-1]:
            values[node.name] = self._kernels[node.name](values[node.inputs[0]])
        result = values[self.circuit.output.inputs[0]].astype(np.int64)
        if return_all:
            return result, {k: v.astype(np.int64) for k, v in values.items()}
        return result

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantize, run and dequantize: float in, float out."""
        return self.dequantize(self.run_integers(self.quantize(X)))

    def calibrate(self, X: np.ndarray) -> Circuit:
        """A copy of the circuit with calibrated ranges observed on ``X``."""
        _, values = self.run_integers(self.quantize(X), return_all=True)
        return self.circuit.with_calibration(values)

    @staticmethod
    def _check_width(X: np.ndarray, n: int, name: str) -> None:
        if X.ndim != 2 or X.shape[1] != n:
            raise ValueError(f"{name} must have shape (n_samples, {n}), got {X.shape}")


def _round_kernel(node: Round) -> Kernel:
    def round_(x: np.ndarray) -> np.ndarray:
        return node.apply(x.astype(np.int64, copy=False))

    return round_

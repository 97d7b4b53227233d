"""Exact integer execution of an IR circuit: the reference backend.

Every other backend (FHE simulation and execution, ONNX) must reproduce the integers
this backend computes.  It renders the circuit's :class:`~latentopt.ir.schedule.Schedule`
as numpy kernels, one per step type (:data:`KERNELS`), vectorised over the batch:

* integers live in the schedule's carrier (:func:`~latentopt.ir.schedule.carrier_dtype`):
  float32 when every worst-case accumulator (every partial sum included) stays below
  2**24, float64 below 2**53 -- both exact, and they let matrix products run on BLAS --
  and int64 otherwise;
* table lookups are gathers from tables materialised once over the schedule's lookup
  domain, or the lookup's proven affine form (:meth:`LookupStep.affine
  <latentopt.ir.schedule.LookupStep.affine>`); a table over :data:`MAX_TABLE_ENTRIES`
  is not materialised, the function is evaluated elementwise instead;
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

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..ir import Circuit, TableLookup
from ..ir.equalize import equalize_lookup, lookup_gains
from ..ir.ranges import widen_ranges
from ..ir.schedule import (
    MAX_TABLE_ENTRIES,
    AddStep,
    AffineShortcut,
    ConcatStep,
    ConvStep,
    GemmStep,
    LookupStep,
    MaxPoolStep,
    RoundStep,
    Schedule,
    Step,
    SumPoolStep,
    check_features,
    schedule,
)
from .conv_kernels import window_kernel

__all__ = ["KERNELS", "IntegerBackend"]

#: Rows processed at once by :meth:`IntegerBackend.predict`.
CHUNK_ROWS = 1024

#: A unary kernel ``(x, may_overwrite_x) -> y``; an Add's or Concat's takes ``(a, b)``.
Kernel = Callable[..., np.ndarray]


def _gemm_kernel(step: GemmStep, dtype: Any) -> Kernel:
    node = step.node
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


def _round_kernel(step: RoundStep, dtype: Any) -> Kernel:
    node = step.node
    if node.lsbs == 0:
        return lambda x, inplace: x
    if dtype is np.int64:
        return lambda x, inplace: node.apply(x)
    half, step_, inv = dtype(1 << (node.lsbs - 1)), dtype(1 << node.lsbs), dtype(2.0**-node.lsbs)

    def round_float(x: np.ndarray, inplace: bool) -> np.ndarray:  # exact: 2**k scaling
        y = np.add(x, half, out=x if inplace else None)
        y *= inv
        np.floor(y, out=y)
        y *= step_
        return y

    return round_float


def _lookup_kernel(step: LookupStep, dtype: Any) -> Kernel:
    fn = step.node.fn
    domain = step.domain
    if domain.entries > MAX_TABLE_ENTRIES:  # too large to materialise: evaluate directly

        def lookup_direct(x: np.ndarray, inplace: bool) -> np.ndarray:
            return fn(x.astype(np.int64)).astype(dtype)

        return lookup_direct
    affine = step.affine(dtype)
    if affine is not None:
        return _affine_kernel(affine, dtype)
    table = step.table().astype(dtype)
    lsbs, n = step.lsbs, table.size
    # index = (x - lo_c) / step + start_c: exact in the carrier, since x - lo_c lies in
    # [0, hi_c - lo_c] and the index below the table size
    lo: Any = domain.lo[0] if domain.channels == 1 else domain.lo
    start = None if domain.channels == 1 else domain.starts
    idx_dtype = np.int32 if n < 2**31 else np.int64
    if dtype is not np.int64:
        lo = np.asarray(lo).astype(dtype)
        start = None if start is None else start.astype(dtype)
    inv = dtype(2.0**-lsbs) if lsbs else None

    def lookup_gather(x: np.ndarray, inplace: bool) -> np.ndarray:
        if dtype is np.int64:
            idx = (x - lo) >> lsbs
        else:
            idx = x - lo
            if inv is not None:
                idx *= inv
        if start is not None:
            idx += start
        return np.take(table, idx.astype(idx_dtype, copy=False))

    return lookup_gather


def _affine_kernel(affine: AffineShortcut, dtype: Any) -> Kernel:
    """``clip(rint(x * r) + zp)`` in place: three passes instead of an index conversion
    and a gather, exact because the schedule proved it equal to the table."""
    ratio, zp = affine.ratio, dtype(affine.zero_point)
    # bound rows: numpy's maximum/minimum are much faster with an array operand than with
    # a scalar (or np.clip), which matters for these tiny passes
    rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def bounds(width: int) -> tuple[np.ndarray, np.ndarray]:
        if width not in rows:
            rows[width] = (np.full(width, affine.qmin, dtype=dtype),
                           np.full(width, affine.qmax, dtype=dtype))
        return rows[width]

    def lookup_affine(x: np.ndarray, inplace: bool = False) -> np.ndarray:
        y = np.multiply(x, ratio, out=x if inplace else None)
        np.rint(y, out=y)
        if zp:
            y += zp
        lo_row, hi_row = bounds(y.shape[-1])
        np.maximum(y, lo_row, out=y)
        return np.minimum(y, hi_row, out=y)

    return lookup_affine


def _add_kernel(step: AddStep, dtype: Any) -> Kernel:
    def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    return add


def _concat_kernel(step: ConcatStep, dtype: Any) -> Kernel:
    def concat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b], axis=-1)

    return concat


def _window_kernel(step: ConvStep | SumPoolStep | MaxPoolStep, dtype: Any) -> Kernel:
    """Convolution and pooling: the exact kernels of :mod:`.conv_kernels`."""
    kernel = window_kernel(step.node, dtype)

    def window(x: np.ndarray, inplace: bool) -> np.ndarray:
        return kernel(x)

    return window


#: The numpy rendering of each server step type (the quantizer and the dequantizer are
#: :meth:`IntegerBackend.quantize` and :meth:`IntegerBackend.dequantize`).
KERNELS: dict[type[Step[Any]], Callable[[Any, Any], Kernel]] = {
    GemmStep: _gemm_kernel,
    RoundStep: _round_kernel,
    LookupStep: _lookup_kernel,
    AddStep: _add_kernel,
    ConcatStep: _concat_kernel,
    ConvStep: _window_kernel,
    SumPoolStep: _window_kernel,
    MaxPoolStep: _window_kernel,
}


class IntegerBackend:
    """Executes a :class:`~latentopt.ir.Circuit` exactly on integers.

    Parameters
    ----------
    circuit : Circuit
        The circuit to run.  Its schedule is rendered once here (carrier dtype,
        materialised tables).

    Attributes
    ----------
    schedule : Schedule
        The circuit's lowering plan (worst-case lookup domains).
    dtype : numpy dtype
        Carrier of the integers: float32, float64 or int64 (see module docstring).
    """

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self.schedule: Schedule = schedule(circuit)
        self.dtype = self.schedule.carrier
        self._steps: list[tuple[Step[Any], Kernel]] = []
        for step in self.schedule.server_steps:
            render = KERNELS.get(type(step))
            if render is None:
                raise TypeError(f"integer backend cannot run {type(step.node).__name__}")
            self._steps.append((step, render(step, self.dtype)))
        nodes = circuit.nodes
        self._sequential = all(
            len(step.inputs) == 1 and step.inputs[0] == prev.name
            for (step, _), prev in zip(self._steps, nodes[:-2])
        ) and circuit.output.inputs[0] == nodes[-2].name

    # ------------------------------------------------------------------ stages
    def quantize(self, X: np.ndarray) -> np.ndarray:
        """Float features -> input integers (client side under FHE)."""
        X = check_features(np.asarray(X, dtype=np.float64), self.circuit.n_features)
        return self.circuit.input_quantizer.apply(X)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Output integers -> floats (client side under FHE)."""
        return self.circuit.output.apply(values)

    def _run(self, carrier: np.ndarray, keep: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        values: dict[str, np.ndarray] = {self.circuit.input_quantizer.name: carrier}
        current = carrier
        inplace = self._sequential and not keep
        for step, kernel in self._steps:
            if len(step.inputs) == 2:  # Add, Concat
                current = kernel(values[step.inputs[0]], values[step.inputs[1]])
            else:
                src = current if self._sequential else values[step.inputs[0]]
                current = kernel(src, inplace)
            if keep or not self._sequential:
                values[step.name] = current
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
        q = self.schedule.check_quantized(q)
        out, values = self._run(q.astype(self.dtype), keep=return_all)
        result = out.astype(np.int64)
        if return_all:
            return result, {k: v.astype(np.int64) for k, v in values.items()}
        return result

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Quantize, run and dequantize, chunk by chunk: float in, float out."""
        X = check_features(X, self.circuit.n_features)
        qnode = self.circuit.input_quantizer
        parts = []
        for start in range(0, len(X), CHUNK_ROWS):
            q = qnode.apply_float32(X[start : start + CHUNK_ROWS]).astype(self.dtype, copy=False)
            out, _ = self._run(q, keep=False)
            parts.append(self.circuit.output.apply(out))
        if not parts:
            return np.empty((0, self.circuit.n_outputs))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def overflows(self, q: np.ndarray,
                  widths: Mapping[str, tuple[np.ndarray | int, int]]) -> np.ndarray:
        """Which samples reach a value outside a set of compiled widths.

        Parameters
        ----------
        q : int array of shape (n_samples, n_features)
            Quantized inputs.
        widths : mapping name -> (offset, bits)
            A value ``v`` fits when ``0 <= v - offset < 2**bits`` (``offset`` per channel,
            broadcast on the last axis), as in the FHE lowering's value plans.

        Returns
        -------
        bool array of shape (n_samples,)
            ``True`` for the samples whose exact evaluation leaves some width: a circuit
            compiled with these widths would compute garbage for them.
        """
        q = self.schedule.check_quantized(q)
        bad = np.zeros(q.shape[0], dtype=bool)
        for start in range(0, q.shape[0], CHUNK_ROWS):
            _, values = self._run(q[start : start + CHUNK_ROWS].astype(self.dtype), keep=True)
            for name, (offset, bits) in widths.items():
                if name not in values:
                    continue
                centred = values[name].astype(np.int64) - np.asarray(offset, np.int64)
                out = (centred < 0) | (centred >= 1 << int(bits))
                bad[start : start + CHUNK_ROWS] |= out.reshape(out.shape[0], -1).any(axis=1)
        return bad

    def calibrate(self, X: np.ndarray) -> Circuit:
        """A copy of the circuit with calibrated ranges observed on ``X``."""
        _, values = self.run_integers(self.quantize(X), return_all=True)
        return self.circuit.with_calibration(values)

    def round_lookups(
        self, q: np.ndarray, bits: int | Sequence[int], method: str = "exact",
        ranges: str = "calibrated", margin: float = 0.0, equalize: bool = False,
    ) -> Circuit:
        """The circuit with every lookup input rounded to ``bits`` bits as FHE lowers it.

        Lookups are rounded in order, each measured (:meth:`Circuit.rounding_lsbs
        <latentopt.ir.Circuit.rounding_lsbs>`) on the ranges the roundings before it
        leave: rounding a layer moves the accumulators after it, so LSBs chosen on the
        unrounded ranges can give lookups a bit narrower or wider than asked.

        Parameters
        ----------
        q : int array of shape (n_samples, n_features)
            Quantized calibration inputs (what the FHE compilation gets).
        bits : int or sequence of int (one per lookup)
        method : {"exact", "approximate"}
        ranges : {"calibrated", "worst_case"}
            Measure on the ranges reached on ``q`` (widened by ``margin``) or on the
            worst case.
        equalize : bool
            Give each channel of the layer feeding a rounded lookup the largest integer
            gain that keeps the lookup ``bits`` wide (:mod:`latentopt.ir.equalize`):
            narrow channels then use their whole table instead of a fraction of it.

        Returns
        -------
        Circuit
            Rounded, calibrated on ``q``.
        """
        q = self.schedule.check_quantized(q)
        circuit = self.circuit.with_rounding(0)
        tlus = [n.name for n in circuit.nodes if isinstance(n, TableLookup)]
        lsbs: dict[str, int] = {}
        measured: Circuit | None = None
        for name in tlus:
            if measured is None:  # (re)calibrate on what the roundings so far leave
                _, values = IntegerBackend(circuit).run_integers(q, return_all=True)
                measured = circuit.with_calibration(values)
                if ranges == "calibrated" and margin > 0 and measured.calibration:
                    measured = measured.replace(
                        calibration=widen_ranges(measured, measured.calibration, margin))
            lsbs[name] = measured.rounding_lsbs(bits, ranges=ranges)[name]
            if lsbs[name] and equalize:
                target = bits if isinstance(bits, (int, np.integer)) else list(bits)[
                    tlus.index(name)]
                gains = lookup_gains(measured, name, lsbs[name], int(target),
                                     measured.lookup_input_range(name, ranges))
                circuit = equalize_lookup(circuit, name, gains)
            if lsbs[name]:
                circuit = circuit.with_rounding(lsbs, method=method)
                measured = None
        _, values = IntegerBackend(circuit).run_integers(q, return_all=True)
        return circuit.with_calibration(values)

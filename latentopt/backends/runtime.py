"""The fastest exact runtime of a circuit, chosen per circuit by a quick measurement.

``predict(X, fhe="disable")`` runs the integer circuit.  Two renderings of the same
schedule compute the same integers: :class:`~latentopt.backends.integer.IntegerBackend`
(numpy, the reference) and :class:`~latentopt.backends.onnx_runner.OnnxRunner`
(onnxruntime, usually 1.5-2x faster, but with a per-call overhead that loses on tiny
batches).  :class:`ExactRuntime` runs the numpy reference on small batches
(< ``MIN_MEASURE_ROWS`` rows) and, on the first larger one, times both on the same rows
and keeps the faster for that circuit, after checking that both return the same
integers (a mismatch, or a circuit onnxruntime cannot run, keeps numpy).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..ir import Circuit
from .integer import IntegerBackend

__all__ = ["MIN_MEASURE_ROWS", "ExactRuntime"]

#: Batches smaller than this always run on numpy (onnxruntime's call overhead dominates).
MIN_MEASURE_ROWS = 64
#: Rows timed when choosing.
PROBE_ROWS = 2048


def _best_of(fn: Any, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class ExactRuntime:
    """Runs a circuit's integers on its fastest exact runtime.

    Parameters
    ----------
    circuit : Circuit
    backend : IntegerBackend, optional
        The numpy reference, if already built.

    Attributes
    ----------
    chosen : {"numpy", "onnxruntime"} or None
        The runtime for batches of at least ``MIN_MEASURE_ROWS`` rows (``None`` until one
        was measured).
    timings : dict
        Seconds per probe of each runtime, from the measurement.
    """

    def __init__(self, circuit: Circuit, backend: IntegerBackend | None = None) -> None:
        self.circuit = circuit
        self.numpy = backend if backend is not None else IntegerBackend(circuit)
        self.onnx: Any = None
        self.chosen: str | None = None
        self.timings: dict[str, float] = {}

    def run_integers(self, q: np.ndarray) -> np.ndarray:
        """Quantized inputs -> output integers (identical on every runtime)."""
        if len(q) < MIN_MEASURE_ROWS:
            return self.numpy.run_integers(q)
        if self.chosen is None:
            self._choose(q[:PROBE_ROWS])
        if self.chosen == "onnxruntime":
            return np.asarray(self.onnx.run_integers(q), dtype=np.int64)
        return self.numpy.run_integers(q)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Float features -> dequantized outputs (quantized as ``IntegerBackend`` does)."""
        return self.numpy.dequantize(self.run_integers(self.numpy.quantize(X)))

    def _choose(self, probe: np.ndarray) -> None:
        self.chosen = "numpy"
        try:
            from .onnx_runner import OnnxRunner

            onnx = OnnxRunner(self.circuit)
            ref = self.numpy.run_integers(probe)
            if not np.array_equal(np.asarray(onnx.run_integers(probe), np.int64), ref):
                return
        except Exception:  # no onnxruntime, or an operator it cannot run: keep numpy
            return
        self.onnx = onnx
        self.timings = {"numpy": _best_of(lambda: self.numpy.run_integers(probe)),
                        "onnxruntime": _best_of(lambda: onnx.run_integers(probe))}
        if self.timings["onnxruntime"] < self.timings["numpy"]:
            self.chosen = "onnxruntime"

"""The fastest exact runtime of a circuit, chosen per circuit by a quick measurement.

``predict(X, fhe="disable")`` runs the integer circuit.  Two renderings of the same
schedule compute the same integers: :class:`~latentopt.backends.integer.IntegerBackend`
(numpy, the reference) and :class:`~latentopt.backends.onnx_runner.OnnxRunner`
(onnxruntime, usually 1.5-2x faster, but with a per-call overhead that loses on tiny
batches).  :class:`ExactRuntime` runs the numpy reference on small batches
(< ``MIN_MEASURE_ROWS`` rows) and, on the first larger one, times both on the same rows
and keeps the faster for that circuit, after checking that both return the same
integers (a mismatch, or a circuit onnxruntime cannot run, keeps numpy).

:meth:`ExactRuntime.predict` (float features in, dequantized outputs out: what
``predict(fhe="disable")`` runs) chooses separately among whole-pipeline runtimes that
also quantize and dequantize: numpy (:meth:`IntegerBackend.predict`), the standard ONNX
model with its quantizer (``OnnxRunner.predict``) and, for MLPs whose values fit 8
bits, the int8 model of :mod:`.onnx_int8` (``uint8 x int8`` GEMMs with the lookup fused
into the requantization: faster than the float network).  Each candidate must return
numpy's output integers and floats on the probe rows, or it is not used.
"""

from __future__ import annotations

import threading
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
#: One measurement at a time (threads predicting at once on a new runtime)
_CHOOSE_LOCK = threading.Lock()


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
    intra_op_num_threads : int, optional
        Threads of the onnxruntime sessions (onnxruntime's default: the cores).

    Attributes
    ----------
    chosen : {"numpy", "onnxruntime"} or None
        The runtime of :meth:`run_integers` for batches of at least ``MIN_MEASURE_ROWS``
        rows (``None`` until one was measured).
    timings : dict
        Seconds per probe of each runtime, from the measurement.
    chosen_predict : {"numpy", "onnxruntime", "onnxruntime-int8"} or None
        The runtime of :meth:`predict` (float features to outputs) for large batches.
    predict_timings : dict
        Seconds per probe of each exact candidate of :meth:`predict`.
    """

    def __init__(self, circuit: Circuit, backend: IntegerBackend | None = None,
                 intra_op_num_threads: int | None = None) -> None:
        self.circuit = circuit
        self.intra_op_num_threads = intra_op_num_threads
        self.numpy = backend if backend is not None else IntegerBackend(circuit)
        self.onnx: Any = None
        self.chosen: str | None = None
        self.timings: dict[str, float] = {}
        self.chosen_predict: str | None = None
        self.predict_timings: dict[str, float] = {}
        self._predictors: dict[str, Any] = {}

    def run_integers(self, q: np.ndarray) -> np.ndarray:
        """Quantized inputs -> output integers (identical on every runtime)."""
        if len(q) < MIN_MEASURE_ROWS:
            return self.numpy.run_integers(q)
        if self.chosen is None:
            with _CHOOSE_LOCK:
                if self.chosen is None:
                    self._choose(q[:PROBE_ROWS])
        if self.chosen == "onnxruntime":
            return np.asarray(self.onnx.run_integers(q), dtype=np.int64)
        return self.numpy.run_integers(q)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Float features -> dequantized outputs (quantized as ``IntegerBackend`` does)."""
        X = np.asarray(X)
        if len(X) < MIN_MEASURE_ROWS:
            return self.numpy.predict(X)
        if self.chosen_predict is None:
            with _CHOOSE_LOCK:  # threads predicting at once: one measures, the rest wait
                if self.chosen_predict is None:
                    self._choose_predict(X[:PROBE_ROWS])
        assert self.chosen_predict is not None
        return np.asarray(self._predictors[self.chosen_predict](X))

    def _choose_predict(self, probe: np.ndarray) -> None:
        ref = self.numpy.predict(probe)
        ref_int = self.numpy.run_integers(self.numpy.quantize(probe))
        predictors: dict[str, Any] = {"numpy": self.numpy.predict}
        for name, make in (("onnxruntime", self._onnx_predictor),
                           ("onnxruntime-int8", self._int8_predictor)):
            try:
                pair = make()
                if pair is None:
                    continue
                out, ints = pair(probe)
                if np.array_equal(ints, ref_int) and np.array_equal(out, ref):
                    predictors[name] = lambda X, pair=pair: pair(X)[0]
            except Exception:  # no onnxruntime, or an operator it cannot run
                continue
        self.predict_timings = {name: _best_of(lambda fn=fn: fn(probe))
                                for name, fn in predictors.items()}
        self._predictors = predictors  # complete before a name is chosen from it
        self.chosen_predict = min(self.predict_timings, key=self.predict_timings.__getitem__)

    def _onnx_predictor(self) -> Any:
        from .onnx_runner import OnnxRunner

        if self.onnx is None:
            self.onnx = OnnxRunner(self.circuit, intra_op_num_threads=self.intra_op_num_threads)
        onnx = self.onnx

        def run(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out, ints = onnx.run(X)
            return np.asarray(out), np.asarray(ints, np.int64)

        return run

    def _int8_predictor(self) -> Any:
        from .onnx_int8 import int8_mlp_onnx
        from .onnx_runner import OnnxRunner

        model = int8_mlp_onnx(self.circuit)  # same inputs and outputs as the standard export
        if model is None:
            return None
        return OnnxRunner(model, intra_op_num_threads=self.intra_op_num_threads).run

    def _choose(self, probe: np.ndarray) -> None:
        self.chosen = self._measure(probe)  # set once, when complete (threads read it)

    def _measure(self, probe: np.ndarray) -> str:
        try:
            from .onnx_runner import OnnxRunner

            onnx = OnnxRunner(self.circuit, intra_op_num_threads=self.intra_op_num_threads)
            ref = self.numpy.run_integers(probe)
            if not np.array_equal(np.asarray(onnx.run_integers(probe), np.int64), ref):
                return "numpy"
        except Exception:  # no onnxruntime, or an operator it cannot run: keep numpy
            return "numpy"
        self.onnx = onnx
        self.timings = {"numpy": _best_of(lambda: self.numpy.run_integers(probe)),
                        "onnxruntime": _best_of(lambda: onnx.run_integers(probe))}
        return "onnxruntime" if self.timings["onnxruntime"] < self.timings["numpy"] else "numpy"

"""Run an exported circuit in onnxruntime (CPU).

:class:`OnnxRunner` loads a model written by :func:`~latentopt.backends.onnx_export.
circuit_to_onnx` (or exports a :class:`~latentopt.ir.Circuit` first) and runs it on
float features or on quantized integers, with the input checks of every backend
(:func:`~latentopt.ir.schedule.check_quantized`).  onnxruntime is imported lazily.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..ir import Circuit
from ..ir.schedule import check_features, check_quantized
from .onnx_graph import INPUT, INPUT_INTEGERS, META, OUTPUT, OUTPUT_INTEGERS, integer_entry
from .onnx_render import circuit_to_onnx

__all__ = ["CHUNK_ROWS", "OnnxRunner"]

#: Rows per onnxruntime call in :class:`OnnxRunner` (bounds the intermediate buffers).
CHUNK_ROWS = 1 << 16


class OnnxRunner:
    """Runs an exported circuit with onnxruntime's CPU provider.

    Parameters
    ----------
    model : ModelProto, bytes, path or Circuit
        An exported model (a :class:`~latentopt.ir.Circuit` is exported first).
    intra_op_num_threads : int, optional
        onnxruntime's intra-op thread count (its default when ``None``).
    """

    def __init__(self, model: Any, *, intra_op_num_threads: int | None = None) -> None:
        import onnx

        if isinstance(model, Circuit):
            model = circuit_to_onnx(model)
        elif isinstance(model, bytes):
            model = onnx.load_from_string(model)
        elif isinstance(model, (str, os.PathLike)):
            model = onnx.load(os.fspath(model))
        self.model: onnx.ModelProto = model
        self.intra_op_num_threads = intra_op_num_threads
        self._meta = {p.key: p.value for p in model.metadata_props}
        self._sessions: dict[bool, Any] = {}
        dims = model.graph.input[0].type.tensor_type.shape.dim
        self.n_features = int(dims[1].dim_value)

    def _session(self, integer: bool) -> Any:
        if integer not in self._sessions:
            import onnxruntime as ort

            names = {i.name for i in self.model.graph.input}
            if not integer and INPUT not in names:
                raise ValueError("this model reads integers (exported with integer_input=True)")
            model = integer_entry(self.model) if integer else self.model
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.intra_op_num_threads is not None:
                options.intra_op_num_threads = int(self.intra_op_num_threads)
            self._sessions[integer] = ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[integer]

    def _run(self, feed: str, X: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
        session = self._session(integer)
        if len(X) == 0:
            n_out = int(self.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
            return np.empty((0, n_out)), np.empty((0, n_out), np.int64)
        parts = [session.run([OUTPUT, OUTPUT_INTEGERS], {feed: X[i : i + CHUNK_ROWS]})
                 for i in range(0, len(X), CHUNK_ROWS)]
        if len(parts) == 1:
            return parts[0][0], parts[0][1]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def run(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float features -> ``(output, output_integers)``."""
        X = check_features(X, self.n_features).astype(np.float32)
        if np.isnan(X).any():
            raise ValueError("cannot quantize NaN inputs")
        return self._run(INPUT, X, integer=False)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Float features -> dequantized float64 outputs."""
        return self.run(X)[0]

    def run_integers(self, q: np.ndarray) -> np.ndarray:
        """Quantized int inputs (inside the input quantizer's range) -> output integers."""
        bounds = self._meta.get(META + "input_range")
        if bounds is None:
            raise ValueError("not a latentopt model: its quantizer range is unknown")
        lo, hi = (int(v) for v in bounds.split(","))
        q = check_quantized(q, self.n_features, (lo, hi))
        return self._run(INPUT_INTEGERS, q, integer=True)[1]

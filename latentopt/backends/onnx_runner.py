"""Run an exported circuit in onnxruntime (CPU).

:class:`OnnxRunner` loads a model written by :func:`~latentopt.backends.onnx_export.
circuit_to_onnx` (or exports a :class:`~latentopt.ir.Circuit` first) and runs it on
float features or on quantized integers, with the input checks of every backend
(:func:`~latentopt.ir.schedule.check_quantized`), NaN features refused (a raw onnxruntime
session gives garbage for them).  onnxruntime is imported lazily.
"""

from __future__ import annotations

import numbers
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


#: What :class:`OnnxRunner` expects of a model (said when it refuses one).
_EXPECTED = (
    "OnnxRunner runs models written by latentopt's export (circuit_to_onnx, save_onnx, "
    "to_onnx): one input 'input' (float32) or 'input_integers' (int64) of shape "
    "(N, n_features), and outputs 'output' and 'output_integers' (run_integers also "
    "needs the export's 'latentopt.*' metadata); run other models with "
    "onnxruntime.InferenceSession"
)


def _parse(load: Any, data: Any, source: str) -> Any:
    """``load(data)``, a ``ValueError`` when ``data`` does not parse as an ONNX model."""
    try:
        model = load(data)
    except OSError:  # a missing file, a directory: the OS error says it best
        raise
    except Exception as exc:  # protobuf's DecodeError and the like
        raise ValueError(f"{source} is not an ONNX model ({exc})") from exc
    if not model.graph.node and not model.graph.input and not model.graph.output:
        raise ValueError(f"{source} is not an ONNX model (it is empty)")
    return model


def _check_export(model: Any, source: str) -> None:
    """A ``ValueError`` unless ``model`` has the interface of a latentopt export."""
    graph = model.graph
    inputs = [i.name for i in graph.input]
    outputs = {o.name for o in graph.output}
    if inputs not in ([INPUT], [INPUT_INTEGERS]):
        problem = f"its inputs are {inputs}"
    elif not {OUTPUT, OUTPUT_INTEGERS} <= outputs:
        problem = f"its outputs are {sorted(outputs)}"
    else:
        dims = graph.input[0].type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].dim_value > 0:
            return
        problem = "its input has no (N, n_features) shape"
    raise ValueError(f"{source} is not a latentopt export: {problem}.  {_EXPECTED}")


class OnnxRunner:
    """Runs an exported circuit with onnxruntime's CPU provider.

    Only models written by the export run here: a graph reading ``input`` (float32) or
    ``input_integers`` (int64) of shape ``(N, n_features)``, writing ``output`` and
    ``output_integers`` (:meth:`run_integers` also needs the export's ``latentopt.*``
    metadata).  Other ONNX models are refused (run them with
    ``onnxruntime.InferenceSession``).

    :meth:`run` and :meth:`predict` refuse NaN features with a ``ValueError``.  A raw
    onnxruntime session of the same model does not check: a NaN feature gives garbage
    outputs for its sample (the quantizer's ``Cast`` of NaN, e.g. ``-2**63`` integers),
    without any error.

    Parameters
    ----------
    model : ModelProto, bytes, path or Circuit
        An exported model (a :class:`~latentopt.ir.Circuit` is exported first).
    intra_op_num_threads : int, optional
        onnxruntime's intra-op thread count, >= 0 (its default when ``None`` or 0).

    Raises
    ------
    TypeError
        ``model`` of another type, or a non-integer ``intra_op_num_threads``.
    ValueError
        A file or bytes that are not an ONNX model, a model not exported by latentopt,
        or a negative ``intra_op_num_threads``.
    """

    def __init__(self, model: Any, *, intra_op_num_threads: int | None = None) -> None:
        import onnx

        if intra_op_num_threads is not None:
            if isinstance(intra_op_num_threads, bool) or not isinstance(
                    intra_op_num_threads, numbers.Integral):
                raise TypeError("intra_op_num_threads must be an int or None, got "
                                f"{intra_op_num_threads!r}")
            if intra_op_num_threads < 0:
                raise ValueError("intra_op_num_threads must be >= 0 (0: onnxruntime's "
                                 f"default), got {intra_op_num_threads}")
        source = "the model"
        if isinstance(model, Circuit):
            model = circuit_to_onnx(model)
        elif isinstance(model, (bytes, bytearray)):
            source = "the byte string"
            model = _parse(onnx.load_from_string, bytes(model), source)
        elif isinstance(model, (str, os.PathLike)):
            source = f"file {os.fspath(model)!r}"
            model = _parse(onnx.load, os.fspath(model), source)
        elif not isinstance(model, onnx.ModelProto):
            raise TypeError("OnnxRunner expects an onnx.ModelProto, its bytes, a path to an "
                            ".onnx file or a latentopt Circuit, got "
                            f"{type(model).__name__}")
        _check_export(model, source)
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
                raise ValueError("this model reads integers (exported with integer_input=True): "
                                 "call run_integers with quantized inputs")
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
        """Float features -> ``(output, output_integers)``; NaN features are refused."""
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
            raise ValueError("this model has no latentopt metadata (its quantizer range): "
                             "run_integers needs a model written by circuit_to_onnx")
        lo, hi = (int(v) for v in bounds.split(","))
        q = check_quantized(q, self.n_features, (lo, hi))
        return self._run(INPUT_INTEGERS, q, integer=True)[1]

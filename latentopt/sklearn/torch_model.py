"""Custom torch models: post-training quantization and brevitas QAT import.

:func:`compile_torch_model` quantizes a float ``torch.nn.Module`` after training
(static PTQ, calibrated on data); :func:`compile_brevitas_qat_model` imports a network
trained with brevitas quantizers, reading its bit-widths and scales.  Both return a
:class:`QuantizedTorchModel` with the estimators' inference API: ``predict(X,
fhe=...)``, ``score``, ``compile``, ``keygen``, ``save_deployment``, ``to_onnx`` and
``bit_width_report`` (:mod:`latentopt.sklearn.base`, the same signatures as the MLP
estimators').  Both builders take the same compile options as
:meth:`~latentopt.sklearn.base.QuantizedEstimatorBase.compile`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from .atomic import restored_on_error
from .base import FHE_MODES, QuantizedEstimatorBase, softmax

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..ir import Circuit

__all__ = ["QuantizedTorchModel", "compile_brevitas_qat_model", "compile_torch_model"]

TASKS = (None, "classification", "regression")


class QuantizedTorchModel(QuantizedEstimatorBase):
    """A quantized torch model: an IR circuit with the estimators' inference API.

    Build one with :func:`compile_torch_model` or :func:`compile_brevitas_qat_model`.

    Parameters
    ----------
    task : {None, "classification", "regression"}
        ``None``: :meth:`predict` returns the network's outputs (like calling the torch
        model); ``"classification"``: :meth:`predict` returns the argmax class index
        and :meth:`predict_proba` the softmax.  A model with a single output is read as
        one binary logit (as trained with ``BCEWithLogitsLoss``): class 1 where it is
        positive, probabilities ``[1 - sigmoid, sigmoid]``.
    fhe_mode : {"disable", "simulate", "execute"}
        Default of the ``fhe`` argument of the prediction methods.
    verbose : int
        Progress bars of compilation and encrypted execution.

    Attributes
    ----------
    input_shape_, output_shape_ : tuple of int
        Shapes of one sample (without the batch axis).
    n_features_in_ : int
        Number of input values per sample (``prod(input_shape_)``).
    classes_ : ndarray of shape (n_classes,)
        With ``task="classification"``: the class indices ``0 .. n_outputs - 1``
        (``[0, 1]`` for a single-logit binary model).
    import_report_ : dict
        What the importer did: method (``"ptq"`` or brevitas QAT), folded batch norms,
        bit-widths, the operations read.
    circuit_ : latentopt.ir.Circuit
        The quantized integer circuit (IR) with calibrated value ranges, unrounded.
    calibration_set_ : ndarray of shape (n_rows, n_features_in_)
        Calibration rows (flattened) used by :meth:`compile` without ``X``.
    rounded_circuit_ : latentopt.ir.Circuit or None
        After :meth:`compile`: the IR circuit that was lowered to TFHE (``circuit_``,
        recalibrated on compile's ``X`` if given, with rounding).  Predictions with
        ``fhe="disable"`` run it (``active_circuit_``).  None before.
    fhe_circuit_ : latentopt.backends.fhe.FHECircuit or None
        After :meth:`compile`: the TFHE program compiled from ``rounded_circuit_``
        (simulate, execute, keys), not an IR circuit.  Not pickled: rebuilt from
        ``rounded_circuit_`` and ``compile_options_`` on first FHE use.  None before.
    fhe_report_ : dict or None
        After :meth:`compile`: what concrete reports about ``fhe_circuit_`` (PBS count,
        complexity, key sizes, p_error, per-layer bit-widths).  The IR's own per-layer
        analysis is :meth:`bit_width_report`.
    compile_options_ : dict or None
        The options of the last :meth:`compile` (rounding, p_error, ranges, security,
        batch size), without data: ``est.compile(**est.compile_options_)`` repeats it.
    compile_inputset_ : ndarray of int or None
        Quantized calibration rows the FHE compiler was given when :meth:`compile` got
        an explicit ``X`` (None: ``calibration_set_`` was used).
    inner_search_ : latentopt.search.inner.InnerResult
        After ``compile(rounding_bits="auto")`` / ``p_error="auto"``: every candidate
        of the search.
    """

    input_shape_: tuple[int, ...]
    output_shape_: tuple[int, ...]
    import_report_: dict[str, Any]
    classes_: np.ndarray

    def __init__(self, task: str | None = None, fhe_mode: str = "disable",
                 verbose: int = 1) -> None:
        self.task = task
        self.fhe_mode = fhe_mode
        self.verbose = verbose

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        if self.task == "classification":
            tags.estimator_type = "classifier"
        elif self.task == "regression":
            tags.estimator_type = "regressor"
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Self:
        """Re-calibrate the circuit's value ranges (FHE bit-widths) on ``X``.

        Weights and quantizers are fixed at import; this only replaces the calibration
        data that :meth:`compile` uses by default (``y`` is ignored).  Drops what
        :meth:`compile` produced.
        """
        with restored_on_error(self):
            from ..backends.integer import IntegerBackend

            X_cal = self._validate_X(X, reset=False)
            self.circuit_ = IntegerBackend(self.circuit_).calibrate(X_cal)
            self.calibration_set_ = X_cal
            self.__dict__.pop("_backend", None)
            self._forget_compilation()
            return self

    # ------------------------------------------------------------- validation
    def _check_built(self) -> None:
        if "circuit_" not in self.__dict__:
            raise RuntimeError(
                "this QuantizedTorchModel has no circuit: build it with "
                "compile_torch_model() or compile_brevitas_qat_model()")

    def _raw_output(self, X: Any, fhe: str | None = None) -> np.ndarray:
        self._check_built()
        return super()._raw_output(X, fhe)

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        self._check_built()
        return flat_samples(X, tuple(self.input_shape_), int(self.n_features_in_))

    # ------------------------------------------------------------- inference
    def forward(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """The network's outputs, shaped ``(n_samples, *output_shape_)``."""
        out = self._raw_output(X, fhe)
        return out.reshape((len(out), *self.output_shape_))

    def predict(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Outputs (``task=None`` / ``"regression"``) or class indices (classification:
        the argmax of the outputs; a single output is one binary logit, class 1 where it
        is positive)."""
        out = self._raw_output(X, fhe)
        if self.task == "classification":
            if out.shape[1] == 1:
                return (out[:, 0] > 0).astype(np.int64)
            return np.argmax(out, axis=1)
        return out.reshape((len(out), *self.output_shape_))

    def predict_proba(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Softmax of the outputs (``task="classification"`` only; a single output is a
        binary logit: ``[1 - sigmoid, sigmoid]``)."""
        if self.task != "classification":
            raise AttributeError("predict_proba needs task='classification'")
        return softmax(self._raw_output(X, fhe))


def flat_samples(X: Any, input_shape: tuple[int, ...], n_features: int) -> np.ndarray:
    """``X`` (array or torch tensor, image-shaped ``(n, *input_shape)`` or flat
    ``(n, n_features)``) as finite float64 rows ``(n, n_features)``; ValueError else."""
    if hasattr(X, "detach"):  # torch tensor (bfloat16 and the like have no numpy dtype)
        X = X.detach().cpu()
        X = (X.float() if X.is_floating_point() and X.dtype.itemsize < 4 else X).numpy()
    if hasattr(X, "toarray") and hasattr(X, "nnz"):  # scipy sparse
        raise TypeError("X is a sparse matrix: pass a dense array (X.toarray())")
    X = np.asarray(X)
    if X.dtype == object:  # numbers held as objects: as scikit-learn's check_array does
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"X must be numeric, got dtype object ({exc})") from exc
    if X.dtype.kind not in "fiub":
        raise ValueError(f"X must be numeric, got dtype {X.dtype}")
    if X.ndim >= 1 and len(X) == 0:  # (a reshape of 0 rows to (0, -1) is ambiguous)
        raise ValueError("X has 0 samples")
    if X.ndim == len(input_shape) + 1 and X.shape[1:] == input_shape:
        X = X.reshape(len(X), -1)
    elif not (X.ndim == 2 and X.shape[1] == n_features):
        raise ValueError(
            f"X must have shape (n_samples, {', '.join(map(str, input_shape))})"
            + (f" or (n_samples, {n_features})" if len(input_shape) > 1 else "")
            + f", got {X.shape}")
    if len(X) == 0:
        raise ValueError("X has 0 samples")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinity")
    return X


def _check_common(task: Any, fhe_mode: Any) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if fhe_mode not in FHE_MODES:
        raise ValueError(f"fhe_mode must be one of {FHE_MODES}, got {fhe_mode!r}")


def _calibration_array(model: Any, X_calib: Any) -> np.ndarray:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(X_calib, "detach"):
        X_calib = X_calib.detach().cpu().numpy()
    X = np.asarray(X_calib)
    if X.dtype.kind not in "fiub":
        raise ValueError(f"X_calib must be numeric, got dtype {X.dtype}")
    if X.ndim < 2 or len(X) == 0:
        raise ValueError(f"X_calib must be a non-empty batch (n_samples, ...), got {X.shape}")
    X = X.astype(np.float32)
    if not np.all(np.isfinite(X)):
        raise ValueError("X_calib contains NaN or infinity")
    return X


def _finish(circuit: Circuit, X: np.ndarray, report: dict[str, Any], task: Any, fhe_mode: str,
            verbose: int, fhe: bool, **compile_kwargs: Any) -> QuantizedTorchModel:
    """The model around a freshly imported circuit; compiled to FHE if ``fhe``."""
    from ..backends.integer import IntegerBackend

    est = QuantizedTorchModel(task=task, fhe_mode=fhe_mode, verbose=verbose)
    flat = X.reshape(len(X), -1).astype(np.float64)
    est.input_shape_ = tuple(X.shape[1:])
    est.output_shape_ = tuple(circuit.metadata["output_shape"])
    est.n_features_in_ = int(flat.shape[1])
    est.circuit_ = IntegerBackend(circuit).calibrate(flat)
    est.calibration_set_ = flat
    est.import_report_ = report
    if task == "classification":  # one output: a binary logit (BCEWithLogitsLoss)
        est.classes_ = np.arange(max(2, int(np.prod(est.output_shape_))))
    est._forget_compilation()
    if fhe:
        est.compile(**compile_kwargs)
    return est


def compile_torch_model(
    model: Any,
    X_calib: Any,
    *,
    n_bits: int | dict[str, Any] = 8,
    calibration: str = "minmax",
    percentile: float = 99.99,
    bias_correction: bool = False,
    maxpool: str = "exact",
    task: str | None = None,
    rounding_bits: int | Sequence[int] | None = None,
    rounding_method: str = "approximate",
    p_error: float | None = None,
    global_p_error: float | None = None,
    range_mode: str = "calibrated",
    range_margin: float = 0.25,
    on_overflow: str = "warn",
    security_level: int = 128,
    batch_size: int | None = None,
    parameter_strategy: str = "auto",
    equalize: bool = True,
    fhe: bool = True,
    fhe_mode: str = "disable",
    verbose: int = 1,
) -> QuantizedTorchModel:
    """Quantize a trained float torch model (static PTQ) and compile it.

    Parameters
    ----------
    model : torch.nn.Module
        A float model made of supported operations (see
        :data:`latentopt.nn.fx_import.SUPPORTED`); it is traced with ``torch.fx`` on a
        copy, in eval mode; the model itself is not modified.
    X_calib : array-like of shape (n_samples, *input_shape)
        Representative inputs: ranges of every tensor are calibrated on them, and FHE
        bit-widths too.  A few hundred rows are enough.
    n_bits : int or dict
        Bit-widths: one for inputs, weights and activations, or a dict with keys
        ``"inputs"``, ``"weights"``, ``"activations"`` and per-layer entries (module or
        graph-node name -> int or ``{"weights": .., "activations": ..}``).
    calibration : {"minmax", "percentile", "mse"}
        Range of each activation: its observed min/max, the ``100 - percentile`` and
        ``percentile`` percentiles (clips rare outliers; finer steps elsewhere), or the
        clipping that minimises the mean squared quantization error of the tensor
        (searched on a grid; ``"mse"`` also searches each output channel's weight
        clipping).  See :mod:`latentopt.nn.ptq_ranges`.
    percentile : float
        With ``calibration="percentile"``.
    bias_correction : bool
        Correct each convolution / linear layer's bias for the per-channel mean shift
        that quantization causes in its outputs, measured on ``X_calib`` with the
        quantized network (:mod:`latentopt.nn.bias_correction`).
    maxpool : {"exact", "avg"}
        ``"exact"``: max poolings are computed exactly (under FHE, ``window - 1``
        comparisons and a cast, i.e. ``window`` PBS, per output value).  ``"avg"``:
        rewrite them as average poolings over the same windows (free under FHE) — the
        model changes, check its accuracy.
    task : {None, "classification", "regression"}
        See :class:`QuantizedTorchModel`.
    rounding_bits, rounding_method, p_error, global_p_error : optional
        FHE compilation options (rounding, error probability), as in
        :meth:`~latentopt.sklearn.base.QuantizedEstimatorBase.compile`.
    range_mode, range_margin, on_overflow, security_level, batch_size, parameter_strategy, \
equalize : optional
        FHE compilation options (value ranges, security, batching, crypto-parameter
        partitions, per-channel gains before rounded lookups), with the defaults
        of :meth:`~latentopt.sklearn.base.QuantizedEstimatorBase.compile` (the same for
        every estimator).
    fhe : bool
        Compile to FHE now (``False``: integer backend only; call ``compile`` later).

    Returns
    -------
    QuantizedTorchModel
    """
    from ..nn.bias_correction import correct_biases
    from ..nn.fx_import import read_graph
    from ..nn.fx_values import record_values
    from ..nn.graph_lowering import lower_graph
    from ..nn.ptq import PTQPolicy, parse_bits

    _check_common(task, fhe_mode)
    X = _calibration_array(model, X_calib)
    gm, ops, folded = read_graph(model, maxpool=maxpool, example=X)
    bits = parse_bits(n_bits, ops)
    values = record_values(gm, X)
    shapes = {k: tuple(v.shape[1:]) for k, v in values.items()}
    policy = PTQPolicy(ops, values, bits, calibration=calibration, percentile=percentile)
    if bias_correction:
        correct_biases(gm, ops, policy, X, values)
    report = {"method": "ptq", "calibration": calibration, "n_bits": bits.to_dict(),
              "bias_correction": bool(bias_correction), "maxpool": maxpool,
              "folded_batch_norms": folded, "ops": [(op.name, op.kind) for op in ops]}
    circuit = lower_graph(ops, shapes, policy, metadata={"source": "compile_torch_model",
                                                        "n_bits": bits.to_dict()})
    return _finish(circuit, X, report, task, fhe_mode, verbose, fhe,
                   rounding_bits=rounding_bits, rounding_method=rounding_method,
                   p_error=p_error, global_p_error=global_p_error, range_mode=range_mode,
                   range_margin=range_margin, on_overflow=on_overflow,
                   security_level=security_level,
                   batch_size=batch_size, parameter_strategy=parameter_strategy,
                   equalize=equalize)


def compile_brevitas_qat_model(
    model: Any,
    X_calib: Any,
    *,
    task: str | None = None,
    rounding_bits: int | Sequence[int] | None = None,
    rounding_method: str = "approximate",
    p_error: float | None = None,
    global_p_error: float | None = None,
    range_mode: str = "calibrated",
    range_margin: float = 0.25,
    on_overflow: str = "warn",
    security_level: int = 128,
    batch_size: int | None = None,
    parameter_strategy: str = "auto",
    equalize: bool = True,
    fhe: bool = True,
    fhe_mode: str = "disable",
    verbose: int = 1,
) -> QuantizedTorchModel:
    """Import a network trained with brevitas quantizers (QAT) and compile it.

    Bit-widths, scales and zero points are read from the brevitas modules, so the
    integer circuit computes what brevitas computes, up to the shift of a batch norm
    (never folded into brevitas layers; rounded to its input's grid: custom-models
    guide).  Quantizers that round other than to nearest, biases narrower than 32 bits
    and padding other than zeros are refused (see
    :mod:`latentopt.nn.brevitas_import` for the supported patterns).  ``X_calib`` only
    calibrates FHE bit-widths.  Other parameters as in :func:`compile_torch_model`.
    """
    from ..nn.brevitas_import import import_brevitas

    _check_common(task, fhe_mode)
    X = _calibration_array(model, X_calib)
    circuit, report = import_brevitas(model, X)
    return _finish(circuit, X, report, task, fhe_mode, verbose, fhe,
                   rounding_bits=rounding_bits, rounding_method=rounding_method,
                   p_error=p_error, global_p_error=global_p_error, range_mode=range_mode,
                   range_margin=range_margin, on_overflow=on_overflow,
                   security_level=security_level,
                   batch_size=batch_size, parameter_strategy=parameter_strategy,
                   equalize=equalize)

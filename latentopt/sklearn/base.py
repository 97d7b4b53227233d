"""One public API for every quantized estimator: inference, score, FHE, export, pickling.

:class:`QuantizedEstimatorBase` gives :class:`~latentopt.sklearn.mlp.QuantizedMLPClassifier`,
:class:`~latentopt.sklearn.mlp.QuantizedMLPRegressor` and
:class:`~latentopt.sklearn.torch_model.QuantizedTorchModel` the same methods with the same
signatures (``docs/api-table.md`` lists them, generated from the code and checked by the
test suite): ``score(X, y, sample_weight=None, fhe=None)``, ``compile``,
``keygen(force=False, seed=None)``, ``to_onnx(path, **options)``, ``save_deployment``
and ``bit_width_report()``.

Subclasses build ``circuit_`` (the MLPs train a brevitas module and export it, see
:mod:`latentopt.sklearn.training`; the torch models import one) and turn
:meth:`~QuantizedEstimatorBase._raw_output` -- the circuit's dequantized outputs, already
in the user's units -- into predictions.  Every output path (integer backend, FHE
simulation and execution, ONNX, deployment client) runs the same circuit, so they agree.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, is_classifier
from sklearn.utils.validation import check_is_fitted, validate_data

from ..ir.inputs import warn_far_outside
from .deprecated import DeprecatedNamesMixin, upgrade_state

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..backends.fhe import FHECircuit
    from ..backends.integer import IntegerBackend
    from ..backends.runtime import ExactRuntime
    from ..ir import Circuit
    from ..ir.circuit import CircuitReport

__all__ = ["FHE_MODES", "QuantizedEstimatorBase", "softmax"]

FHE_MODES = ("disable", "simulate", "execute")

#: Options of :meth:`QuantizedEstimatorBase.compile` passed on to ``FHECircuit.compile``.
FHE_COMPILER_OPTIONS = ("p_error", "global_p_error", "range_mode", "range_margin", "on_overflow",
                        "security_level", "batch_size", "parameter_strategy")

#: Fitted attributes that :meth:`~QuantizedEstimatorBase.compile` sets (a refit drops them).
COMPILED_ATTRIBUTES = ("fhe_circuit_", "rounded_circuit_", "fhe_report_", "compile_options_",
                       "compile_inputset_")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (class probabilities from logits), computed in the clear.  A
    single column is one binary logit (``BCEWithLogitsLoss``): ``[1 - sigmoid,
    sigmoid]`` (its softmax would be 1 for every row)."""
    if logits.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-np.clip(logits[:, 0], -500, 500)))
        return np.stack([1.0 - p1, p1], axis=1)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


#: Lazy recompiles of unpickled estimators, one at a time (estimators hold no lock: they
#: pickle and clone).
_RECOMPILE_LOCK = threading.Lock()


def _check_rounding_bits(rounding_bits: Any) -> None:
    """``rounding_bits``: None, ``"auto"``, an int or a sequence of ints (not floats or
    bools, which would otherwise be read as sequences or as 1)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if rounding_bits is None or isinstance(rounding_bits, str) or is_int(rounding_bits):
        return
    if isinstance(rounding_bits, np.ndarray) and rounding_bits.ndim == 1:
        rounding_bits = rounding_bits.tolist()
    if not isinstance(rounding_bits, (list, tuple)) or not all(is_int(v) for v in rounding_bits):
        raise ValueError(f"rounding_bits must be an int, a sequence of ints (one per table "
                         f"lookup), None or 'auto', got {rounding_bits!r}")


class QuantizedEstimatorBase(DeprecatedNamesMixin, BaseEstimator):
    """Base of estimators whose fitted model is a quantized IR circuit (``circuit_``).

    The fitted attributes it manages (``circuit_``, ``calibration_set_`` and, set by
    :meth:`compile`, ``rounded_circuit_``, ``fhe_circuit_``, ``fhe_report_``,
    ``compile_options_``, ``compile_inputset_``) are documented on each estimator.
    """

    # fitted state (annotations only: nothing is set on the class)
    circuit_: Circuit
    calibration_set_: np.ndarray
    n_features_in_: int
    rounded_circuit_: Circuit | None
    fhe_circuit_: FHECircuit | None
    fhe_report_: dict[str, Any] | None
    compile_options_: dict[str, Any] | None
    compile_inputset_: np.ndarray | None
    verbose: int
    fhe_mode: str

    # ------------------------------------------------------------------ helpers
    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        return np.asarray(
            validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=True))

    def _check_fhe(self, fhe: str | None) -> str:
        mode = self.fhe_mode if fhe is None else fhe
        if mode not in FHE_MODES:
            name = "fhe_mode" if fhe is None else "fhe"
            raise ValueError(f"{name} must be one of {FHE_MODES}, got {mode!r}")
        return mode

    @property
    def active_circuit_(self) -> Circuit:
        """The IR circuit predictions run: ``rounded_circuit_`` after :meth:`compile`, else
        ``circuit_``."""
        check_is_fitted(self, "circuit_")
        rounded = getattr(self, "rounded_circuit_", None)
        return self.circuit_ if rounded is None else rounded

    def _integer_backend(self) -> IntegerBackend:
        circuit = self.active_circuit_
        backend = getattr(self, "_backend", None)
        if backend is None or backend.circuit is not circuit:
            from ..backends.integer import IntegerBackend

            backend = IntegerBackend(circuit)
            self._backend = backend
        return backend

    def _exact_runtime(self) -> ExactRuntime:
        """The fastest exact runtime of the active circuit (numpy, onnxruntime or its int8
        rendering, chosen by measurement on the first large batch, see
        :mod:`latentopt.backends.runtime`)."""
        backend = self._integer_backend()
        runtime = getattr(self, "_runtime", None)
        if runtime is None or runtime.numpy is not backend:
            from ..backends.runtime import ExactRuntime

            runtime = ExactRuntime(backend.circuit, backend)
            self._runtime = runtime
        return runtime

    def _raw_output(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Dequantized circuit outputs (user units) for ``X`` under the chosen FHE mode."""
        check_is_fitted(self, "circuit_")
        mode = self._check_fhe(fhe)
        X = self._validate_X(X, reset=False)
        backend = self._integer_backend()
        warn_far_outside(X, backend.circuit.input_quantizer)  # clipped in every mode
        if mode == "disable":  # the fastest exact pipeline, quantizer included
            return np.asarray(self._exact_runtime().predict(X))
        out = self._run_fhe(backend.quantize(X), mode)
        return np.asarray(backend.dequantize(out))

    def _forget_compilation(self) -> None:
        """Drop what :meth:`compile` produced (a refit or recalibration invalidates it)."""
        for attr in COMPILED_ATTRIBUTES:
            setattr(self, attr, None)

    def _fhe(self, action: str) -> FHECircuit:
        fhe_circuit = getattr(self, "fhe_circuit_", None)
        options = getattr(self, "compile_options_", None)
        if fhe_circuit is None and options is not None and self.rounded_circuit_ is not None:
            # unpickled estimator: compiled circuits do not pickle, recompile on demand
            # (once: threads predicting at the same time wait for the first one's compile)
            with _RECOMPILE_LOCK:
                fhe_circuit = getattr(self, "fhe_circuit_", None)
                if fhe_circuit is None:
                    inputset = self.compile_inputset_
                    if inputset is None:
                        inputset = self.rounded_circuit_.input_quantizer.apply(
                            self.calibration_set_)
                    fhe_circuit = self._lower_to_fhe(self.rounded_circuit_, inputset,
                                                     options, int(self.verbose))
                    self.fhe_circuit_ = fhe_circuit
        if fhe_circuit is None:
            raise RuntimeError(
                f"{action} needs a compiled circuit: call {type(self).__name__}.compile() first"
            )
        return fhe_circuit

    def _lower_to_fhe(self, circuit: Circuit, inputset_q: np.ndarray, options: dict[str, Any],
                      verbose: int) -> FHECircuit:
        from ..backends.fhe import FHECircuit

        kwargs = {k: options[k] for k in FHE_COMPILER_OPTIONS if k in options}
        return FHECircuit.compile(circuit, inputset_q, verbose=verbose, **kwargs,
                                  **self._fhe_test_options())

    def _run_fhe(self, q: np.ndarray, mode: str) -> np.ndarray:
        fhe_circuit = self._fhe(f"predict(fhe={mode!r})")
        report = fhe_circuit.report
        if report["range_mode"] == "calibrated":  # worst_case: exact for every input
            from ..backends.fhe_diagnostics import report_overflow

            # as the deployed client does: clipped to the calibrated input box (inside
            # it the compiled widths hold), so that execute, simulate and a deployment's
            # client give one answer; flagged if outside it or still overflowing
            box = report.get("input_box") or report["input_range"]
            lo, hi = np.asarray(box[0], np.int64), np.asarray(box[1], np.int64)
            outside = ((q < lo) | (q > hi)).any(axis=1)
            q = np.clip(q, lo, hi)
            bad = outside | fhe_circuit.overflows(q)
            n_out, n_in = int(outside.sum()), int((bad & ~outside).sum())
            what = " and ".join(
                [f"{n_out} lie outside its calibrated input box (clipped to it)"] * bool(n_out)
                + [f"{n_in} inside it overflow an accumulator"] * bool(n_in))
            report_overflow(
                int(bad.sum()), len(q), report.get("on_overflow", "warn"),
                f"leave the range this circuit was compiled for (range_mode='calibrated'; "
                f"{what}): their FHE results may differ from fhe='disable'")
        out = fhe_circuit.simulate(q) if mode == "simulate" else fhe_circuit.execute(q)
        return np.asarray(out)

    # -------------------------------------------------------------- inference
    def predict(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Predictions for ``X``; ``fhe`` overrides ``fhe_mode``."""
        raise NotImplementedError

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
              fhe: str | None = None) -> float:
        """Accuracy (classifiers) or R^2 (otherwise) of ``predict(X, fhe=fhe)`` against ``y``.

        ``fhe`` (default: ``fhe_mode``) chooses the integer backend, FHE simulation or
        real encrypted execution, so the score of what FHE computes is one call.
        """
        from sklearn.metrics import accuracy_score, r2_score

        pred = self.predict(X, fhe=fhe)
        y_true = np.asarray(y)
        if is_classifier(self):
            return float(accuracy_score(y_true, pred, sample_weight=sample_weight))
        if pred.ndim > 2:  # e.g. a torch model's image outputs: one column per value
            pred, y_true = pred.reshape(len(pred), -1), y_true.reshape(len(y_true), -1)
        return float(r2_score(y_true, pred, sample_weight=sample_weight))

    # --------------------------------------------------------------------- FHE
    def compile(
        self,
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        *,
        rounding_bits: int | Sequence[int] | str | None = None,
        rounding_method: str = "approximate",
        p_error: float | str | None = None,
        global_p_error: float | None = None,
        range_mode: str = "calibrated",
        range_margin: float = 0.25,
        on_overflow: str = "warn",
        security_level: int = 128,
        batch_size: int | None = None,
        max_accuracy_drop: float = 0.01,
        cost_model: Any = None,
        verbose: int | None = None,
        parameter_strategy: str = "auto",
        equalize: bool = True,
    ) -> Self:
        """Compile the fitted circuit to TFHE (concrete-python); returns ``self``.

        Sets ``rounded_circuit_`` (the IR circuit lowered: ``circuit_``, recalibrated on
        ``X`` if given, with rounding), ``fhe_circuit_`` (the TFHE program),
        ``fhe_report_``, ``compile_options_`` and ``compile_inputset_``.  After
        compiling, ``predict(X, fhe="disable")`` runs ``rounded_circuit_`` on the integer
        backend, i.e. predicts what FHE computes (exactly, for exact rounding and a
        negligible p_error).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), optional
            Calibration data for the compiler (value ranges, hence bit-widths).  By
            default the subsample of the training data kept at fit
            (``calibration_set_``).
        y : array-like, optional
            With ``X``: held-out data for ``"auto"`` knobs.
        rounding_bits : int or sequence of int, optional
            Round every table-lookup input to at most this many bits (one value for all,
            or one per hidden layer) by removing LSBs (``round_bit_pattern``).  The
            biggest single lever on latency; ``None`` keeps exact accumulators.
        rounding_method : {"approximate", "exact"}
            Approximate rounding may be off by one step but costs less; exact rounding
            adds PBS per removed bit.
        p_error, global_p_error : float, optional
            Error probability of one table lookup, or of one whole inference; at most one
            (default: ``global_p_error=1e-5``).
        range_mode : {"calibrated", "worst_case"}
            ``"calibrated"`` (default): bit-widths from the calibration data; inputs far
            outside it may overflow intermediate values, so every ``predict(fhe=
            "simulate" / "execute")`` checks its samples with the exact integer circuit
            and applies ``on_overflow`` (never silently wrong).  ``"worst_case"``:
            bit-widths from the worst case, so every compiled value provably fits for
            every input the input quantizer can produce (it clips): ``fhe="disable"``
            predicts what FHE computes on any input.  At the same ``rounding_bits`` it
            rounds away more LSBs (breast_cancer, 16 hidden, 5 bits: accuracy 0.62 vs
            0.93 calibrated); matching the accuracy costs about 10x complexity
            (``benchmarks/range_modes.py``).
        range_margin : float
            With ``"calibrated"``: every calibrated range is widened by this fraction of
            its span on each side (at most to the worst case).  Test data a little
            beyond the training data then does not overflow; measured on wine, the
            default 0.25 removed every overflow at the same TLU widths (0.0 overflowed
            4 of 45 test samples and cost 7 points of simulated accuracy).
        on_overflow : {"warn", "raise"}
            With ``"calibrated"``: samples outside the calibrated input box
            (``fhe_report_["input_box"]``) are clipped to it before encryption, as
            deployed clients do; warn naming the number of samples whose FHE result may
            differ from ``fhe="disable"`` (default), or raise
            :class:`~latentopt.backends.fhe.FHEOverflowError`.  Deployed clients apply it
            to samples outside the calibrated input box (``fhe_report_["input_box"]``).
        security_level : int
            128 (default) or 132 bits.
        batch_size : int, optional
            Samples per encrypted call (see ``FHECircuit.compile``).
        max_accuracy_drop : float
            With ``rounding_bits="auto"`` and/or ``p_error="auto"``: the fastest point
            whose FHE-simulated score on ``(X, y)`` stays within this of the unrounded
            circuit's score is chosen (:func:`latentopt.search.inner.search_compile`;
            the search is kept in ``inner_search_``).  Calibration then uses
            ``calibration_set_``.  With ``rounding_bits="auto"`` and no ``p_error``,
            the rounding is scored at ``p_error=1e-3`` per lookup (more error than the
            default) and the circuit compiled at the default error probability.
        cost_model : latentopt.search.cost.CostModel, optional
            Latency model for the ``"auto"`` search (default: concrete's complexity).
        verbose : int, optional
            Defaults to the estimator's ``verbose``.
        parameter_strategy : {"auto", "precision", "precision_and_norm2"}
            Crypto-parameter partitions of concrete's optimizer (see
            ``FHECircuit.compile``); ``"auto"`` keeps per-norm partitions when they cut
            the complexity by 5% or more, ``"precision"`` gives the fewest keys.
        equalize : bool
            With rounding: multiply each channel of the layer feeding a rounded lookup
            by the largest integer gain that keeps the lookup ``rounding_bits`` wide
            (:mod:`latentopt.ir.equalize`), so narrow channels use their whole table.
            Exact integer arithmetic, no added operation, no wider lookup; measured on
            real MNIST MLPs (784-32-10, 3 bits, p_error 0.1) it lifts simulated
            accuracy by 0.9-1.5 points at 5-bit lookups and by 7.5-9.5 points at 4-bit
            ones, with concrete's complexity unchanged (on a pruned MNIST CNN it rose
            by 17%).  ``False`` rounds every channel as the widest one needs.
        """
        check_is_fitted(self, "circuit_")
        _check_rounding_bits(rounding_bits)
        if not isinstance(equalize, (bool, np.bool_)):  # equalize="no" was taken as True
            raise ValueError(f"equalize must be a bool, got {equalize!r}")
        if isinstance(rounding_bits, str) or isinstance(p_error, str):
            if rounding_bits not in ("auto", None) and isinstance(rounding_bits, str):
                raise ValueError("rounding_bits must be an int, a list, None or 'auto'")
            if isinstance(p_error, str) and p_error != "auto":
                raise ValueError("p_error must be a float, None or 'auto'")
            if X is None or y is None:
                raise ValueError("rounding_bits='auto' / p_error='auto' need held-out X and y")
            if global_p_error is not None:
                raise ValueError("p_error='auto' cannot be combined with global_p_error")
            from ..search.inner import compile_searched

            return compile_searched(
                self, X, y, rounding_bits=rounding_bits, rounding_method=rounding_method,
                p_error=p_error, max_accuracy_drop=max_accuracy_drop, cost_model=cost_model,
                verbose=verbose, equalize=equalize, range_mode=range_mode,
                range_margin=range_margin, on_overflow=on_overflow, security_level=security_level,
                batch_size=batch_size, parameter_strategy=parameter_strategy)
        if y is not None:  # held-out labels serve the "auto" search only
            warnings.warn("compile: y is used only with rounding_bits='auto' or "
                          "p_error='auto'; it is ignored here", UserWarning, stacklevel=2)
        if rounding_method not in ("approximate", "exact"):
            raise ValueError(
                f"rounding_method must be 'approximate' or 'exact', got {rounding_method!r}"
            )
        from .lowering import compile_at

        options: dict[str, Any] = dict(
            rounding_bits=rounding_bits, rounding_method=rounding_method, p_error=p_error,
            global_p_error=global_p_error, range_mode=range_mode, range_margin=range_margin,
            on_overflow=on_overflow, security_level=security_level, batch_size=batch_size,
            parameter_strategy=parameter_strategy, equalize=bool(equalize),
        )
        return compile_at(self, X, options, int(self.verbose if verbose is None else verbose))

    def _fhe_test_options(self) -> dict[str, Any]:
        # The test suite sets this class attribute to use concrete's insecure key cache.
        location = getattr(type(self), "_insecure_key_cache", None)
        return {} if location is None else {"insecure_key_cache": location}

    def keygen(self, force: bool = False, seed: int | None = None) -> float:
        """Generate FHE keys now (otherwise the first ``fhe="execute"`` does); seconds taken.

        ``force`` regenerates existing keys; ``seed`` seeds the secret keys
        (reproducible keys, for tests: never reuse a seed in production).
        """
        return float(self._fhe("keygen()").keygen(force=force, seed=seed))

    def fhe_profile(self, X: ArrayLike, repeats: int = 5, cost_model: Any = None) -> Any:
        """Where the time of one encrypted prediction goes (the first row of ``X``).

        Times, as medians of ``repeats`` runs: ``quantize`` (validation and input
        quantizer), ``range check`` (calibrated circuits: the overflow check of every
        ``predict``), ``encrypt``, ``run`` (server), ``decrypt``, ``dequantize`` and
        ``python`` (the rest of ``predict(X[:1], fhe="execute")``, timed end to end).
        With a calibrated :class:`~latentopt.search.cost.CostModel` the server run is
        split into bootstraps, key switches, linear work and the rest, and the floor
        (lookups on the critical path over the cores) is given.  Keys are generated if
        needed.  Returns a :class:`~latentopt.backends.fhe_profile.LatencyProfile`
        (``print(p.table())``); see :mod:`latentopt.backends.fhe_profile` for how each
        number is obtained.
        """
        from .lowering import profile_predict

        return profile_predict(self, X, repeats=repeats, cost_model=cost_model)

    def save_deployment(self, directory: str | Path, via_mlir: bool = False) -> dict[str, Path]:
        """Write the server artefact (no secret key) and the client artefact.

        The client (:class:`latentopt.backends.fhe_deploy.FHEClient`) quantizes, encrypts,
        decrypts and dequantizes; the server (:class:`~latentopt.backends.fhe_deploy.FHEServer`)
        runs on serialised ciphertexts with serialised evaluation keys.  The client
        returns the circuit's dequantized outputs, in the user's units (logits for a
        classifier, targets for a regressor); the artefact also records the task, the
        classes and the output units (:mod:`latentopt.deploy.artifacts`), so
        :class:`latentopt.deploy.Client` returns what :meth:`predict` returns.
        ``via_mlir`` stores the MLIR program instead of the compiled library (portable,
        recompiled on load).  Returns ``{"server": path, "client": path}``.
        """
        from ..deploy.artifacts import estimator_info, estimator_members

        fc = self._fhe("save_deployment()")
        if fc.report.get("range_mode") == "calibrated":
            warnings.warn(
                "this circuit is compiled with range_mode='calibrated': a deployed client "
                "checks samples against the calibrated input box only, and a sample "
                "inside it can still overflow an accumulator and decrypt to a wrong "
                "result without a warning (predict(fhe=...) checks it exactly); compile "
                "with range_mode='worst_case' for a deployment exact on every input",
                UserWarning, stacklevel=2)
        extra = estimator_members(estimator_info(self))
        return dict(fc.save_deployment(directory, via_mlir=via_mlir, client_extra=extra))

    def to_onnx(self, path: str | Path, **options: Any) -> str:
        """Write the integer network as a standard ONNX model (run it with onnxruntime).

        The circuit predictions run is exported (``active_circuit_``: the rounded one
        after :meth:`compile`); its outputs equal the integer backend's, in the user's
        units.  ``options`` go to :func:`latentopt.backends.onnx_export.save_onnx`.
        Returns the path written.
        """
        from ..backends.onnx_export import save_onnx

        return str(save_onnx(self.active_circuit_, path, **options))

    # ----------------------------------------------------------------- reports
    def bit_width_report(self) -> CircuitReport:
        """Per-layer accumulator and table-lookup bit-widths of ``active_circuit_``.

        The IR's analysis (:meth:`latentopt.ir.Circuit.report`): worst-case and
        calibrated accumulator bits, TLU input bits and lookup counts, of the circuit
        predictions run (rounded after :meth:`compile`).  What concrete reports about the
        compiled program is in ``fhe_report_``.
        """
        return self.active_circuit_.report()

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_backend", None)
        state.pop("_runtime", None)
        if "fhe_circuit_" in state:
            state["fhe_circuit_"] = None  # not picklable: recompiled on first FHE use
        module = state.pop("module_", None)
        if module is not None:
            import torch

            buf = io.BytesIO()
            torch.save(module.state_dict(), buf)
            state["_module_blob"] = (module.config, buf.getvalue())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.pop("_module_blob", None)
        self.__dict__.update(upgrade_state(state))
        if blob is not None:
            import torch

            config, data = blob
            module = self._build_module(config)
            module.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
            module.eval()
            self.module_ = module
        self._upgrade_fitted()

    def _upgrade_fitted(self) -> None:
        """Hook for subclasses: bring fitted state of an older pickle up to date."""

    def _build_module(self, config: dict[str, Any]) -> Any:
        raise NotImplementedError

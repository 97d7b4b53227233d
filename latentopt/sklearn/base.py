"""Shared machinery of the quantized estimators: validation, backends, pickling.

Estimators are thin: they validate inputs, build and train a torch module
(:mod:`latentopt.nn`), export it to the IR (:mod:`latentopt.ir`) and run it on a
backend (:mod:`latentopt.backends`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["FHE_MODES", "QuantizedEstimatorBase"]

FHE_MODES = ("disable", "simulate", "execute")

#: Rows of training data kept (quantized at compile time) to calibrate FHE compilation.
N_CALIBRATION = 512


class QuantizedEstimatorBase(BaseEstimator):
    """Base of estimators whose fitted model is a quantized IR circuit (``circuit_``).

    Subclasses implement ``_fit_module(X, y)`` returning the trained module and its
    circuit, and turn ``_raw_output(X)`` (dequantized network outputs) into
    predictions.
    """

    # ------------------------------------------------------------------ helpers
    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        return validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=True)

    def _check_fhe(self, fhe: str | None) -> str:
        mode = self.fhe_mode if fhe is None else fhe
        if mode not in FHE_MODES:
            raise ValueError(f"fhe must be one of {FHE_MODES}, got {mode!r}")
        return mode

    @property
    def active_circuit_(self):  # type: ignore[no-untyped-def]
        """The circuit predictions run: the compiled (rounded) one after :meth:`compile`."""
        check_is_fitted(self, "circuit_")
        compiled = getattr(self, "compiled_circuit_", None)
        return self.circuit_ if compiled is None else compiled

    def _integer_backend(self):  # type: ignore[no-untyped-def]
        circuit = self.active_circuit_
        backend = getattr(self, "_backend", None)
        if backend is None or backend.circuit is not circuit:
            from ..backends.integer import IntegerBackend

            backend = IntegerBackend(circuit)
            self._backend = backend
        return backend

    def _raw_output(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Dequantized network output for validated ``X`` under the chosen FHE mode."""
        check_is_fitted(self, "circuit_")
        mode = self._check_fhe(fhe)
        X = self._validate_X(X, reset=False)
        backend = self._integer_backend()
        q = backend.quantize(X)
        if mode == "disable":
            out = backend.run_integers(q)
        else:
            out = self._run_fhe(q, mode)
        return backend.dequantize(out)

    def _fhe(self, action: str):  # type: ignore[no-untyped-def]
        fhe_circuit = getattr(self, "fhe_circuit_", None)
        if fhe_circuit is None and getattr(self, "_compile_kwargs", None) is not None:
            # unpickled estimator: compiled circuits do not pickle, recompile on demand
            self.compile(**self._compile_kwargs)
            fhe_circuit = self.fhe_circuit_
        if fhe_circuit is None:
            raise RuntimeError(
                f"{action} needs a compiled circuit: call {type(self).__name__}.compile() first"
            )
        return fhe_circuit

    def _run_fhe(self, q: np.ndarray, mode: str) -> np.ndarray:
        fhe_circuit = self._fhe(f"predict(fhe={mode!r})")
        lo, hi = fhe_circuit.report["input_range"]
        if q.size and (q.min() < lo or q.max() > hi):
            warnings.warn(
                f"some quantized inputs lie outside the range the circuit was compiled for "
                f"[{lo}, {hi}]; they are clipped to it (compile with range_mode='worst_case' "
                f"to cover the whole input range)", stacklevel=4,
            )
            q = np.clip(q, lo, hi)
        return fhe_circuit.simulate(q) if mode == "simulate" else fhe_circuit.execute(q)

    # --------------------------------------------------------------------- FHE
    def compile(
        self,
        X: Any = None,
        y: Any = None,
        *,
        rounding_bits: int | Sequence[int] | str | None = None,
        rounding_method: str = "approximate",
        p_error: float | str | None = None,
        global_p_error: float | None = None,
        range_mode: str = "calibrated",
        range_margin: float = 0.25,
        security_level: int = 128,
        batch_size: int | None = None,
        max_accuracy_drop: float = 0.01,
        cost_model: Any = None,
        verbose: int | None = None,
    ):  # type: ignore[no-untyped-def]
        """Compile the fitted circuit to TFHE (concrete-python); returns ``self``.

        After compiling, ``predict(X, fhe="disable")`` runs the rounded circuit on the
        integer backend, i.e. predicts what FHE computes (exactly, for exact rounding and
        a negligible p_error).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), optional
            Calibration data for the compiler (value ranges, hence bit-widths).  By
            default the subsample of the training data kept at fit
            (``calibration_set_``).
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
            Bit-widths from the calibration data (inputs far outside it are clipped to
            the compiled input range and may overflow intermediate values), or from the
            worst case (exact for any input, wider lookups).
        range_margin : float
            With ``"calibrated"``: every calibrated range is widened by this fraction of
            its span on each side (at most to the worst case).  Test data a little
            beyond the training data then does not overflow; measured on wine, the
            default 0.25 removed every overflow at the same TLU widths (0.0 overflowed
            4 of 45 test samples and cost 7 points of simulated accuracy).
        security_level : int
            128 (default) or 132 bits.
        batch_size : int, optional
            Samples per encrypted call (see ``FHECircuit.compile``).
        verbose : int, optional
            Defaults to the estimator's ``verbose``.

        y : array-like, optional
            With ``X``: held-out data for ``"auto"`` knobs.
        max_accuracy_drop : float
            With ``rounding_bits="auto"`` and/or ``p_error="auto"``: the fastest point
            whose FHE-simulated score on ``(X, y)`` stays within this of the unrounded
            circuit's score is chosen (:func:`latentopt.search.inner.search_compile`;
            the search is kept in ``inner_search_``).  Calibration then uses
            ``calibration_set_``.
        cost_model : latentopt.search.cost.CostModel, optional
            Latency model for the ``"auto"`` search (default: concrete's complexity).
        """
        from ..backends.fhe import FHECircuit
        from ..backends.integer import IntegerBackend

        check_is_fitted(self, "circuit_")
        if isinstance(rounding_bits, str) or isinstance(p_error, str):
            if rounding_bits not in ("auto", None) and isinstance(rounding_bits, str):
                raise ValueError("rounding_bits must be an int, a list, None or 'auto'")
            if isinstance(p_error, str) and p_error != "auto":
                raise ValueError("p_error must be a float, None or 'auto'")
            if X is None or y is None:
                raise ValueError("rounding_bits='auto' / p_error='auto' need held-out X and y")
            if global_p_error is not None:
                raise ValueError("p_error='auto' cannot be combined with global_p_error")
            from ..search.inner import search_compile

            X_val = self._validate_X(X, reset=False)
            result = search_compile(
                self, X_val, np.asarray(y), max_accuracy_drop=max_accuracy_drop,
                rounding_bits=rounding_bits, rounding_method=rounding_method,
                p_error=1e-3 if p_error is None else p_error, cost_model=cost_model,
                verbose=int(self.verbose if verbose is None else verbose),
            )
            self.inner_search_ = result
            if result.best is None:
                raise ValueError(
                    f"no rounding / p_error point keeps the score within "
                    f"{max_accuracy_drop} of {result.reference_score:.4f}; allow a larger "
                    f"max_accuracy_drop or retrain with more bits\n{result.table()}"
                )
            # the search returns its choice; compiling it is an ordinary compile
            self.compile(**result.compile_kwargs, range_mode=range_mode,
                         range_margin=range_margin, security_level=security_level,
                         batch_size=batch_size, verbose=verbose)
            return self
        if rounding_method not in ("approximate", "exact"):
            raise ValueError(
                f"rounding_method must be 'approximate' or 'exact', got {rounding_method!r}"
            )
        verbose = int(self.verbose if verbose is None else verbose)
        if X is None:
            X_cal = self.calibration_set_
            circuit = self.circuit_
        else:
            X_cal = self._validate_X(X, reset=False)
            circuit = IntegerBackend(self.circuit_).calibrate(X_cal)
        if rounding_bits is not None:
            rounded_from = circuit
            if range_mode == "calibrated" and range_margin > 0 and circuit.calibration:
                from ..backends.fhe_lowering import widen_ranges

                rounded_from = circuit.replace(
                    calibration=widen_ranges(circuit, circuit.calibration, range_margin))
            lsbs = rounded_from.rounding_lsbs(
                rounding_bits, ranges="calibrated" if range_mode == "calibrated" else "worst_case"
            )
            circuit = circuit.with_rounding(lsbs, method=rounding_method)
        q = circuit.input_quantizer.apply(X_cal)
        fhe_circuit = FHECircuit.compile(
            circuit, q, p_error=p_error, global_p_error=global_p_error, range_mode=range_mode,
            range_margin=range_margin,
            security_level=security_level, batch_size=batch_size, verbose=verbose,
            **self._fhe_test_options(),
        )
        self.fhe_circuit_ = fhe_circuit
        self.compiled_circuit_ = circuit
        self.compiled_report_ = dict(fhe_circuit.report)
        self._compile_kwargs = dict(
            X=X, rounding_bits=rounding_bits, rounding_method=rounding_method, p_error=p_error,
            global_p_error=global_p_error, range_mode=range_mode, range_margin=range_margin,
            security_level=security_level, batch_size=batch_size, verbose=verbose,
        )
        return self

    def _fhe_test_options(self) -> dict[str, Any]:
        # The test suite sets this class attribute to use concrete's insecure key cache.
        location = getattr(type(self), "_insecure_key_cache", None)
        return {} if location is None else {"insecure_key_cache": location}

    def save_deployment(self, directory: Any, via_mlir: bool = False) -> dict[str, Any]:
        """Write the server artefact (no secret key) and the client artefact.

        The client (:class:`latentopt.backends.fhe_deploy.FHEClient`) quantizes, encrypts,
        decrypts and dequantizes; the server (:class:`~latentopt.backends.fhe_deploy.FHEServer`)
        runs on serialised ciphertexts with serialised evaluation keys.  The client
        returns the network's dequantized outputs (logits for a classifier, standardised
        targets for a regressor).  Returns ``{"server": path, "client": path}``.
        """
        return self._fhe("save_deployment()").save_deployment(directory, via_mlir=via_mlir)

    def to_onnx(self, path: Any) -> Any:
        """Write the integer network as a standard ONNX model (run it with onnxruntime).

        The circuit predictions run is exported: the rounded one after :meth:`compile`.
        Its outputs equal the integer backend's (see
        :mod:`latentopt.backends.onnx_export`).
        """
        from ..backends.onnx_export import save_onnx

        return save_onnx(self.active_circuit_, path)

    def keygen(self, force: bool = False) -> float:
        """Generate FHE keys now (otherwise the first ``fhe="execute"`` does); seconds taken."""
        return float(self._fhe("keygen()").keygen(force=force))

    def _keep_calibration(self, X: np.ndarray, rng: np.random.RandomState) -> None:
        idx = rng.permutation(len(X))[:N_CALIBRATION]
        self.calibration_set_ = np.array(X[np.sort(idx)], dtype=np.float64)

    # ----------------------------------------------------------------- reports
    def report(self):  # type: ignore[no-untyped-def]
        """Bit-width report of the fitted circuit (see ``Circuit.report``)."""
        check_is_fitted(self, "circuit_")
        return self.circuit_.report()

    # ---------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_backend", None)
        state.pop("fhe_circuit_", None)  # compiled FHE circuits are not picklable
        module = state.pop("module_", None)
        if module is not None:
            import torch

            buf = io.BytesIO()
            torch.save(module.state_dict(), buf)
            state["_module_blob"] = (module.config, buf.getvalue())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.pop("_module_blob", None)
        self.__dict__.update(state)
        if blob is not None:
            import torch

            config, data = blob
            module = self._build_module(config)
            module.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
            module.eval()
            self.module_ = module

    def _build_module(self, config: dict[str, Any]):  # type: ignore[no-untyped-def]
        raise NotImplementedError

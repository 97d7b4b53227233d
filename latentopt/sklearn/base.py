"""Shared machinery of the quantized estimators: validation, backends, pickling.

Estimators are thin: they validate inputs, build and train a torch module
(:mod:`latentopt.nn`), export it to the IR (:mod:`latentopt.ir`) and run it on a
backend (:mod:`latentopt.backends`).
"""

from __future__ import annotations

import io
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

    def _integer_backend(self):  # type: ignore[no-untyped-def]
        backend = getattr(self, "_backend", None)
        if backend is None or backend.circuit is not self.circuit_:
            from ..backends.integer import IntegerBackend

            backend = IntegerBackend(self.circuit_)
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

    def _run_fhe(self, q: np.ndarray, mode: str) -> np.ndarray:
        fhe_circuit = getattr(self, "fhe_circuit_", None)
        if fhe_circuit is None:
            raise RuntimeError(
                f"predict(fhe={mode!r}) needs a compiled circuit: call "
                f"{type(self).__name__}.compile() first"
            )
        return fhe_circuit.simulate(q) if mode == "simulate" else fhe_circuit.execute(q)

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

"""Old names of the estimators' API, kept working for a while, and old pickles upgraded.

Each old name warns (``FutureWarning``) and forwards to the new one
(:data:`DEPRECATED_NAMES`).  :func:`upgrade_state` renames the fitted state of an
estimator pickled before the renames, so old pickles keep loading.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..ir import Circuit
    from ..ir.circuit import CircuitReport

__all__ = ["DEPRECATED_NAMES", "DeprecatedNamesMixin", "upgrade_state"]

#: Old public name -> new public name.
DEPRECATED_NAMES = {
    "compiled_circuit_": "rounded_circuit_",
    "compiled_report_": "fhe_report_",
    "report()": "bit_width_report()",
}

#: Private fitted names of older pickles -> their public successors.
_RENAMED_STATE = {
    "compiled_circuit_": "rounded_circuit_",
    "compiled_report_": "fhe_report_",
}


def _warn(old: str) -> None:
    warnings.warn(f"{old} is deprecated, use {DEPRECATED_NAMES[old]}", FutureWarning,
                  stacklevel=3)


class DeprecatedNamesMixin:
    """The deprecated names of :data:`DEPRECATED_NAMES`, forwarding to the new ones."""

    @property
    def compiled_circuit_(self) -> Circuit | None:
        """Deprecated: ``rounded_circuit_``."""
        _warn("compiled_circuit_")
        return getattr(self, "rounded_circuit_")  # noqa: B009 - AttributeError if unset

    @compiled_circuit_.setter
    def compiled_circuit_(self, value: Circuit | None) -> None:
        _warn("compiled_circuit_")
        self.rounded_circuit_ = value

    @property
    def compiled_report_(self) -> dict[str, Any] | None:
        """Deprecated: ``fhe_report_``."""
        _warn("compiled_report_")
        return getattr(self, "fhe_report_")  # noqa: B009

    def report(self) -> CircuitReport:
        """Deprecated: ``bit_width_report()`` (which reports ``active_circuit_``); this
        reports the unrounded ``circuit_``, as it always did."""
        from sklearn.utils.validation import check_is_fitted

        _warn("report()")
        check_is_fitted(self, "circuit_")
        circuit: Circuit = getattr(self, "circuit_")  # noqa: B009
        return circuit.report()


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """Fitted state of an estimator pickled before the renames, with the current names.

    ``_compile_kwargs`` (compile's arguments, calibration array included) becomes
    ``compile_options_`` (options only) and ``compile_inputset_`` (the quantized
    calibration rows); a regressor's ``_y_1d`` becomes ``y_ndim_`` and is flagged for
    the target scaling to be folded into its circuits (``_unfolded_targets``).
    """
    if "_compile_kwargs" not in state and "_y_1d" not in state and "_hidden" not in state:
        return state
    state = dict(state)
    for old, new in _RENAMED_STATE.items():
        if old in state:
            state[new] = state.pop(old)
    state.pop("_hidden", None)
    if "_compile_kwargs" in state:
        kwargs = state.pop("_compile_kwargs")
        state["compile_options_"] = state["compile_inputset_"] = None
        state.setdefault("fhe_circuit_", None)  # not pickled then, nor now
        if kwargs is not None:
            X = kwargs.pop("X", None)
            kwargs.pop("verbose", None)
            state["compile_options_"] = kwargs
            if X is not None and state.get("rounded_circuit_") is not None:
                quantizer = state["rounded_circuit_"].input_quantizer
                state["compile_inputset_"] = quantizer.apply(np.asarray(X, dtype=np.float64))
    if "_y_1d" in state:
        state["y_ndim_"] = 1 if state.pop("_y_1d") else 2
        state["_unfolded_targets"] = True
    return state

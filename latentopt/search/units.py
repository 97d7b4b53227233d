"""Which unit the search ranks latency in: seconds (a cost model) or complexity.

The search ranks by predicted **seconds per sample** whenever it can:
:func:`resolve_cost_model` loads this machine's cached calibration or, if there is none,
calibrates a quick one now (about 30 s with a progress bar, once per machine: it is
cached, see :mod:`latentopt.search.fingerprint`).  Only when that is impossible, or the
user asks for it, does it rank by concrete's *complexity*, a unitless estimate, and it
then says so and never labels it latency or seconds (:func:`latency_label`).
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["COMPLEXITY", "SECONDS", "latency_label", "resolve_cost_model"]

SECONDS = "seconds"
COMPLEXITY = "complexity"


def latency_label(unit: str, short: bool = False) -> str:
    """Display label of the latency objective in ``unit``."""
    if unit == SECONDS:
        return "seconds" if short else "predicted seconds per sample"
    return "complexity" if short else "concrete complexity (unitless, not seconds)"


def resolve_cost_model(cost_model: Any, verbose: int = 1) -> Any:
    """A :class:`~latentopt.search.cost.CostModel`, or None to rank by complexity.

    ``cost_model``: a model (returned as is), ``"auto"`` (cached, else calibrated now on
    the quick grid and cached; if calibration fails, a warning and None), or
    ``"complexity"`` / None (None).
    """
    if cost_model is None or (isinstance(cost_model, str) and cost_model == COMPLEXITY):
        if verbose:
            print("[latentopt] ranking by concrete's complexity (unitless), not seconds",
                  flush=True)
        return None
    if not isinstance(cost_model, str):
        return cost_model
    if cost_model != "auto":
        raise ValueError(f"cost_model must be a CostModel, 'auto', 'complexity' or None, "
                         f"got {cost_model!r}")
    from .cost import CostModel
    from .fingerprint import FingerprintMismatchError

    try:
        return CostModel.load()
    except (FileNotFoundError, FingerprintMismatchError, ValueError):
        pass
    if verbose:
        print("[latentopt] no cost model for this machine yet: calibrating one to rank by "
              "seconds (about 30 s, once; cached)", flush=True)
    try:
        return CostModel.load_or_calibrate(grid="quick", verbose=verbose)
    except Exception as exc:  # noqa: BLE001 - any failure: fall back, loudly
        warnings.warn(f"cost model calibration failed ({type(exc).__name__}: {exc}); the "
                      "search ranks by concrete's complexity (unitless), not seconds",
                      stacklevel=3)
        return None

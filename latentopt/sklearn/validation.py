"""Hyper-parameter validation of the MLP estimators (at ``fit``, never in ``__init__``).

Examples
--------
>>> check_hidden_layer_sizes(16)
(16,)
>>> check_pruning(0.5, None, "l1", 10)
>>> check_pruning(1.0, None, "l1", 10)
Traceback (most recent call last):
...
ValueError: pruning_ratio must be in [0, 1), got 1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_hidden_layer_sizes", "check_mlp_params", "check_pruning"]


def check_hidden_layer_sizes(hidden: Any) -> tuple[int, ...]:
    """``hidden_layer_sizes`` as a tuple of positive ints."""
    if isinstance(hidden, (int, np.integer)):
        hidden = (int(hidden),)
    try:
        sizes = tuple(int(h) for h in hidden)
    except TypeError as exc:
        raise ValueError("hidden_layer_sizes must be a sequence of ints") from exc
    if any(h < 1 for h in sizes):
        raise ValueError(f"hidden_layer_sizes must be positive, got {sizes}")
    return sizes


def check_pruning(ratio: Any, n_accum_bits: Any, importance: Any, epochs: Any) -> None:
    """Validate the pruning options (``pruning_ratio``, ``n_accum_bits``, ...)."""
    from ..prune.importance import IMPORTANCES

    if not isinstance(ratio, (int, float, np.number)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {ratio!r}")
    if n_accum_bits is not None and (
        not isinstance(n_accum_bits, (int, np.integer)) or n_accum_bits < 2
    ):
        raise ValueError(f"n_accum_bits must be an int >= 2 or None, got {n_accum_bits!r}")
    if isinstance(importance, str) and importance not in IMPORTANCES:
        raise ValueError(f"prune_importance must be one of {IMPORTANCES}, got {importance!r}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fine_tune_epochs must be an int >= 0, got {epochs!r}")


def check_mlp_params(est: Any) -> tuple[int, ...]:
    """Validate an MLP estimator's hyper-parameters; returns its hidden layer sizes."""
    hidden = check_hidden_layer_sizes(est.hidden_layer_sizes)
    for name in ("max_epochs", "batch_size", "patience"):
        value = getattr(est, name)
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not (isinstance(est.lr, (int, float)) and est.lr > 0):
        raise ValueError(f"lr must be > 0, got {est.lr!r}")
    if not 0.0 <= float(est.validation_fraction) < 1.0:
        raise ValueError(
            f"validation_fraction must be in [0, 1), got {est.validation_fraction!r}"
        )
    est._check_fhe(None)
    from ..nn.distill import check_distill_params, teacher_kind

    check_distill_params(est.distill_temperature, est.distill_alpha)
    if est.teacher is not None:
        teacher_kind(est.teacher)
    check_pruning(est.pruning_ratio, est.n_accum_bits, est.prune_importance,
                  est.fine_tune_epochs)
    return hidden

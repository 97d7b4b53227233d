"""Hyper-parameter validation of the estimators (at ``fit``, never in ``__init__``).

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

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["check_hidden_layer_sizes", "check_mlp_params", "check_pruning",
           "check_torch_qat_params"]


def check_hidden_layer_sizes(hidden: Any) -> tuple[int, ...]:
    """``hidden_layer_sizes`` as a tuple of positive ints."""
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        hidden = (int(hidden),)
    # a string ("16" read as the layers 1 and 6) or a float (8.9 cut to 8) is refused
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__") or not all(
            isinstance(h, (int, np.integer)) and not isinstance(h, bool) for h in hidden):
        raise ValueError(f"hidden_layer_sizes must be an int or a sequence of ints, got "
                         f"{hidden!r}")
    sizes = tuple(int(h) for h in hidden)
    if any(h < 1 for h in sizes):
        raise ValueError(f"hidden_layer_sizes must be positive, got {sizes}")
    return sizes


def _check_numbers(est: Any) -> None:
    """``lr`` (> 0), ``weight_decay`` (>= 0) and ``validation_fraction`` (in [0, 1)):
    real numbers, numpy scalars included (``np.float32(0.01)`` was refused as "lr must be
    > 0, got 0.01"), never bools or strings."""
    for name, lo, hi in (("lr", 0.0, None), ("weight_decay", 0.0, None),
                         ("validation_fraction", 0.0, 1.0)):
        v = getattr(est, name)
        ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
        if ok:
            f = float(v)
            ok = bool(np.isfinite(f)) and (f > lo if name == "lr" else f >= lo) and (
                hi is None or f < hi)
        if not ok:
            what = {"lr": "a number > 0", "weight_decay": "a number >= 0",
                    "validation_fraction": "a number in [0, 1)"}[name]
            raise ValueError(f"{name} must be {what}, got {v!r}")


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
    _check_numbers(est)
    est._check_fhe(None)
    from ..nn.distill import check_distill_params, teacher_kind

    check_distill_params(est.distill_temperature, est.distill_alpha)
    if est.teacher is not None:
        teacher_kind(est.teacher)
    check_pruning(est.pruning_ratio, est.n_accum_bits, est.prune_importance,
                  est.fine_tune_epochs)
    return hidden


def check_torch_qat_params(est: Any, model: Any = None) -> Any:
    """Every hyper-parameter of a ``QuantizedTorchClassifier`` / ``Regressor`` (before
    any training); returns the bits parsed against ``model`` (default: ``est.module``;
    a factory's bits are only parsed at fit, against the module it builds: None
    before)."""
    import torch

    from ..nn.fx_import import read_graph
    from ..nn.ptq import parse_bits
    from .base import FHE_MODES

    if not isinstance(est.module, torch.nn.Module) and not callable(est.module):
        raise TypeError(f"module must be a torch.nn.Module or a factory "
                        f"(input_shape, n_outputs) -> Module, got "
                        f"{type(est.module).__name__}")
    if model is None and isinstance(est.module, torch.nn.Module):
        model = est.module
    bits = None
    if model is not None:
        _, ops, _ = read_graph(model)
        bits = parse_bits(dict(est.n_bits) if isinstance(est.n_bits, Mapping)
                          else est.n_bits, ops)
    ratios = (est.pruning_ratio.values() if isinstance(est.pruning_ratio, Mapping)
              else [est.pruning_ratio])
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {est.pruning_ratio!r}")
    if isinstance(est.pruning_ratio, Mapping) and model is not None:
        from ..prune.channels import PRUNABLE

        layers = {n for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
        unknown = sorted(set(est.pruning_ratio) - layers)
        if unknown:
            raise ValueError(f"pruning_ratio names unknown layers {unknown}; prunable: "
                             f"{sorted(layers)}")
    from ..prune.channels import CHANNEL_IMPORTANCES

    if est.prune_importance not in CHANNEL_IMPORTANCES:
        raise ValueError(f"prune_importance must be one of {CHANNEL_IMPORTANCES}, got "
                         f"{est.prune_importance!r}")
    for name, lo in (("max_epochs", 0), ("batch_size", 1), ("patience", 1)):
        v = getattr(est, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    _check_numbers(est)
    if est.fhe_mode not in FHE_MODES:
        raise ValueError(f"fhe_mode must be one of {FHE_MODES}, got {est.fhe_mode!r}")
    from ..nn.distill import check_distill_params

    check_distill_params(est.distill_temperature, est.distill_alpha)
    if est.distill_alpha > 0 and not isinstance(est.module, torch.nn.Module):
        raise ValueError("distill_alpha > 0 distils the trained float module; a module "
                         "factory builds an untrained one: pass a trained module, or "
                         "distill_alpha=0")
    return bits

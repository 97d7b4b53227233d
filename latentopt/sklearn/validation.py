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
    if isinstance(importance, str) and importance not in IMPORTANCES or not isinstance(
            importance, str) and not _is_tp_importance(importance):
        raise ValueError(f"prune_importance must be one of {IMPORTANCES} or a "
                         f"torch_pruning.importance.Importance, got {importance!r}")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fine_tune_epochs must be an int >= 0, got {epochs!r}")


def _is_tp_importance(importance: Any) -> bool:
    import torch_pruning as tp

    return isinstance(importance, tp.importance.Importance)


def _check_int(est: Any, name: str, lo: int) -> None:
    """``est.<name>`` is an int (not a bool) ``>= lo``.  Training skips one-sample
    batches (they break batch statistics), so ``batch_size`` starts at 2."""
    v = getattr(est, name)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        why = ": one-sample batches are not trained on" if name == "batch_size" else ""
        raise ValueError(f"{name} must be an int >= {lo}{why}, got {v!r}")


def _check_flags(est: Any, names: tuple[str, ...]) -> None:
    """Yes/no options are bools (``"no"`` and ``"False"`` were taken as true) and
    ``verbose`` an int >= 0 (``"x"`` failed after training began)."""
    for name in names:
        v = getattr(est, name)
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {v!r}")
    _check_int(est, "verbose", 0)


def check_mlp_params(est: Any) -> tuple[int, ...]:
    """Validate an MLP estimator's hyper-parameters; returns its hidden layer sizes."""
    hidden = check_hidden_layer_sizes(est.hidden_layer_sizes)
    for name, lo in (("max_epochs", 1), ("batch_size", 2), ("patience", 1)):
        _check_int(est, name, lo)
    _check_flags(est, ("early_stopping", "power_of_two_scales"))
    from ..nn.mlp import TORCH_ACTIVATIONS

    if not isinstance(est.activation, str) or est.activation not in TORCH_ACTIVATIONS:
        # (checked here, the search's check of its space sees it before any training)
        raise ValueError(f"unknown activation {est.activation!r}; known: "
                         f"{sorted(TORCH_ACTIVATIONS)}")
    if est.n_input_bits is None:  # QuantMLP's None (the first activation's bits) is
        # not the estimators' documented int
        raise ValueError("n_input_bits must be an int >= 1, got None")
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
        from ..prune.channels import PRUNABLE, output_layers, prunable_layers

        outputs = sorted(set(est.pruning_ratio) & set(output_layers(model)))
        if outputs and any(est.pruning_ratio[n] > 0 for n in outputs):
            raise ValueError(f"pruning_ratio names output layers {outputs}: their width is "
                             f"the model's output, never pruned; prunable: "
                             f"{prunable_layers(model)}")
        layers = {n for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
        unknown = sorted(set(est.pruning_ratio) - layers)
        if unknown:
            raise ValueError(f"pruning_ratio names unknown layers {unknown}; prunable: "
                             f"{prunable_layers(model)}")
    from ..prune.channels import CHANNEL_IMPORTANCES

    if est.prune_importance not in CHANNEL_IMPORTANCES:
        raise ValueError(f"prune_importance must be one of {CHANNEL_IMPORTANCES}, got "
                         f"{est.prune_importance!r}")
    for name, lo in (("max_epochs", 0), ("batch_size", 2), ("patience", 1)):
        _check_int(est, name, lo)
    _check_flags(est, ("early_stopping",))
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


def warn_feature_scales(X: np.ndarray, n_input_bits: Any) -> None:
    """Warn when most features spread over less than a quarter of one step of the input
    quantizer (standard deviation; standardised data at 3 bits does not warn).

    The input quantizer has one scale for all features (its range is the whole of
    ``X``'s), so on unscaled data (raw scikit-learn ``load_breast_cancer``: feature
    spreads from 0.003 to 570) most features fall on one or two levels and the network
    cannot learn from them: test accuracy 0.37-0.88 over three seeds, against 0.93-0.96
    standardised.
    """
    import warnings

    bits = int(n_input_bits) if isinstance(n_input_bits, (int, np.integer)) else 8
    if len(X) < 2 or bits < 1:  # (a bad n_input_bits is refused by the parameter check)
        return
    std = X.std(axis=0)
    varying = std > 0
    if not varying.any():
        return
    # the grid is symmetric around 0 (signed inputs) or starts at 0: data far from 0 (a
    # +1000 offset) falls on one level even where its spread would fill X's range
    top = float(np.abs(X).max())
    signed = float(X.min()) < 0
    step = top / max(2 ** (bits - 1) - 1, 1) if signed else top / (2**bits - 1)
    span = f"-{top:.3g} to {top:.3g}" if signed else f"0 to {top:.3g}"
    spread = float(np.median(std[varying]))
    if spread < 0.05:  # the grid adapts, training does not: weights must grow 1/spread
        warnings.warn(
            f"the features' median standard deviation is {spread:.3g}: on inputs that "
            f"small the quantized network trains poorly (a generated set, standardised "
            f"then scaled by 0.03: accuracy 0.76; by 0.01: 0.54, chance; unscaled 0.90).  "
            f"Standardise X (e.g. a Pipeline with sklearn.preprocessing.StandardScaler).",
            UserWarning, stacklevel=4)
        return
    narrow = int(np.sum(std[varying] < step / 4))
    if narrow > 0.5 * int(varying.sum()):
        warnings.warn(
            f"{narrow} of {int(varying.sum())} features have a standard deviation under a "
            f"quarter of one step ({step:.3g}) of the {bits}-bit input quantizer, whose "
            f"grid spans {span} (X: {float(X.min()):.3g} to {float(X.max()):.3g}): those "
            f"features reach the network as one or two values.  Standardise X (e.g. a "
            f"Pipeline with sklearn.preprocessing.StandardScaler) if it is not, clip "
            f"outlying values, or raise n_input_bits.", UserWarning, stacklevel=4)

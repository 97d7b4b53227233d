"""Search spaces of the outer (retraining) search, sampled through Optuna trials.

A space maps estimator parameters to choices:

* a list -> categorical (``{"n_w_bits": [2, 3, 4]}``),
* ``(lo, hi)`` of ints or floats -> uniform range,
* ``("log", lo, hi)`` -> log-uniform range,
* ``("step", lo, hi, step)`` -> stepped float range.

Two pseudo-parameters build ``hidden_layer_sizes``: ``n_layers`` and ``width`` (every
hidden layer gets the same width; depth is a dimension of the search).  A third,
``output_w_bits`` (ints, or None: as the hidden layers), gives the MLP's output layer
narrower weights than ``n_w_bits``: a per-layer ``n_w_bits`` list.  Concrete sizes the
crypto parameters of every lookup for the widest value the circuit carries, and that is
often the output layer's accumulator.  Measured on real MNIST (784-32-10, 3 bits,
5-bit lookups, p_error 0.1, one core): 2-bit output weights cut the encrypted time per
sample from 0.92 s to 0.68 s and key generation from 2.5 s to 1.3 s at the same
simulated accuracy (0.914-0.918 against 0.915-0.917); on scikit-learn's digits, 16
hidden units, they changed nothing but cost 1.3 points.  It is not in the default
space: add ``"output_w_bits": [None, 2]`` to search it.

>>> from latentopt import QuantizedMLPClassifier
>>> space = {"n_w_bits": [3], "width": [32], "n_layers": [1], "output_w_bits": [2]}
>>> import optuna
>>> trial = optuna.trial.FixedTrial({"n_w_bits": 3, "width": 32, "n_layers": 1,
...                                  "output_w_bits": 2})
>>> sample_params(trial, space, QuantizedMLPClassifier())
{'n_w_bits': [3, 2], 'hidden_layer_sizes': (32,)}

>>> space = DEFAULT_SPACE
>>> sorted(space)  # doctest: +NORMALIZE_WHITESPACE
['activation', 'lr', 'n_a_bits', 'n_accum_bits', 'n_input_bits', 'n_layers', 'n_w_bits',
 'pruning_ratio', 'width']

Torch estimators (:class:`~latentopt.QuantizedTorchClassifier`) have their own default,
:data:`TORCH_SPACE` (their architecture is the user's model): global bits through the
pseudo-parameters ``n_w_bits``, ``n_a_bits`` and ``n_input_bits``, per-layer bits through
``"n_w_bits.<layer>"`` / ``"n_a_bits.<layer>"`` (module names of the model), all merged
into the estimator's ``n_bits``; and the channel ``pruning_ratio``: one global ratio, or
one per prunable layer with ``"pruning_ratio.<layer>"`` entries, or ``"pruning_ratio.*"``
for every prunable layer (:func:`torch_space` with ``per_layer_pruning=True``).
:func:`default_space` picks the default of an estimator.

>>> sorted(TORCH_SPACE)
['distill_alpha', 'lr', 'n_a_bits', 'n_input_bits', 'n_w_bits', 'pruning_ratio']

``distill_alpha`` (distillation from the user's float model) is left out for module
factories, which have no trained model to learn from.

Trial training.  :data:`FAST_TRAINING` (``{**DEFAULT_SPACE, **FAST_TRAINING}``) trains
every trial (and the check's fold models, and the refit of the chosen configuration) at
``batch_size=256`` with learning rates ``[3e-3, 1e-2, 3e-2]``, where the estimators
default to batch 64: training is about 90% of a trial's time, and four times fewer Adam
steps per epoch make a fit 3-4x faster (``benchmarks/trial_training.py``, rows in
``benchmarks/results_trial_training.txt``).  The learning rates are three times those
searched at batch 64 (1e-3 to 1e-2) because batch 256 at an unscaled rate under-trains.
Measured (200 epochs, one core, two seeds, mean clear test accuracy, batch 64 -> batch
256 at three times the rate): generated 3-class, 24 features, (16,) 3 bits, lr 1e-3:
0.841 -> 0.841 (fit 12 s -> 3.4 s); (64,) 4 bits: 0.887 -> 0.881; generated 5-class,
40 features, (64,) 4 bits: 0.733 -> 0.735.  It is not the default: a search that runs
three times the trials also checks more configurations on unseen rows, and the check's
margin grows with their number; in 15-minute searches it chose slower models than the
default on breast_cancer (0.68 s against 0.36 s) and digits (12 s against 0.55 s)
(search guide, "Measured").  A space without ``batch_size`` keeps the template's.

``n_accum_bits`` is the guaranteed accumulator budget (pruning until every worst-case
accumulator fits; ``None``: no budget).  The rounding bits and ``p_error`` are not in the
space: the inner search (:mod:`latentopt.search.inner`) picks them per trained model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["DEFAULT_SPACE", "FAST_TRAINING", "MLP_PSEUDO", "TORCH_SPACE", "default_space",
           "resolve_space", "sample_params", "search_space", "torch_space", "validate_space"]

#: Pseudo-parameters of the MLP estimators' spaces (module doc).
MLP_PSEUDO = ("n_layers", "width", "output_w_bits")

DEFAULT_SPACE: dict[str, Any] = {
    "n_w_bits": (2, 4),
    "n_a_bits": (2, 4),
    "n_input_bits": (3, 6),
    "n_accum_bits": [None, 8, 10, 12],
    "activation": ["relu", "silu", "tanh"],
    "n_layers": (1, 2),
    "width": ("log", 4, 128),
    "pruning_ratio": [0.0, 0.25, 0.5],
    "lr": [1e-3, 3e-3, 1e-2],
}

#: Faster trial training (module doc, "Trial training"): ``{**DEFAULT_SPACE,
#: **FAST_TRAINING}`` trains every trial at batch 256 with learning rates scaled x3.
FAST_TRAINING: dict[str, Any] = {"batch_size": [256], "lr": [3e-3, 1e-2, 3e-2]}

#: Default space of the torch estimators (QAT of the user's float model).
TORCH_SPACE: dict[str, Any] = {
    "n_w_bits": (2, 6),
    "n_a_bits": (2, 6),
    "n_input_bits": (3, 7),
    "pruning_ratio": [0.0, 0.25, 0.5],
    "lr": [1e-3, 3e-3, 1e-2],
    "distill_alpha": [0.0, 0.5],
}


def default_space(estimator: Any) -> dict[str, Any]:
    """The default search space of ``estimator`` (its own, or :data:`DEFAULT_SPACE`)."""
    own = getattr(estimator, "_default_search_space", None)
    return dict(own()) if callable(own) else DEFAULT_SPACE


def torch_space(per_layer_pruning: bool = False,
                ratios: tuple[float, ...] | list[float] = (0.0, 0.25, 0.5),
                distill: bool = True) -> dict[str, Any]:
    """:data:`TORCH_SPACE`, with one pruning ratio per prunable layer if asked, and
    without distillation if ``distill=False`` (module factories: no trained model).

    ``per_layer_pruning=True`` replaces the global ``pruning_ratio`` by the entry
    ``"pruning_ratio.*"``: the torch estimator expands it (:func:`resolve_space`) into one
    ``"pruning_ratio.<layer>"`` dimension per prunable layer of its model (every
    ``Linear`` / ``Conv1d`` / ``Conv2d`` but the output layers), each choosing among
    ``ratios``; a trial's ratios become the estimator's ``pruning_ratio`` dict.

    >>> sorted(torch_space(per_layer_pruning=True, distill=False))
    ['lr', 'n_a_bits', 'n_input_bits', 'n_w_bits', 'pruning_ratio.*']
    """
    space = dict(TORCH_SPACE)
    if not distill:
        del space["distill_alpha"]
    if per_layer_pruning:
        del space["pruning_ratio"]
        space["pruning_ratio.*"] = [float(r) for r in ratios]
    else:
        space["pruning_ratio"] = [float(r) for r in ratios]
    return space


def resolve_space(space: Mapping[str, Any], estimator: Any) -> dict[str, Any]:
    """``space`` with the estimator's wildcard entries expanded (a torch estimator's
    ``"pruning_ratio.*"``: one entry per prunable layer of its model)."""
    expand = getattr(estimator, "_expand_search_space", None)
    return dict(expand(space)) if callable(expand) else dict(space)


def search_space(param_space: Mapping[str, Any] | None, estimator: Any) -> dict[str, Any]:
    """The space a search over ``estimator`` samples: ``param_space``, or the
    estimator's :func:`default_space` when it is None or empty, wildcards expanded
    (:func:`resolve_space`).  The study's identity, its seeds and every trial use it."""
    return resolve_space(param_space or default_space(estimator), estimator)


def _pseudo(estimator: Any, name: str) -> bool:
    check = getattr(estimator, "_is_search_name", None)
    if callable(check):
        return bool(check(name))
    return name in MLP_PSEUDO


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)) and bool(np.isfinite(v))


def validate_space(space: Mapping[str, Any], estimator: Any) -> None:
    """Raise ``ValueError`` for malformed entries or parameters the estimator lacks."""
    params = set(estimator.get_params())
    for name, spec in space.items():
        if name not in params and not _pseudo(estimator, name):
            raise ValueError(f"search space names {name!r}, not a parameter of "
                             f"{type(estimator).__name__}")
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"search space entry {name!r} is an empty list")
        elif isinstance(spec, tuple):
            kind = spec[0] if spec and spec[0] in ("log", "step") else None
            bounds = spec[1:] if kind is not None else spec
            # ("relu", "tanh") compared as strings, a step of 0 failed every trial
            # while it was sampled: the search never ended
            if (len(spec) != {"log": 3, "step": 4, None: 2}[kind]
                    or not all(_is_number(b) for b in bounds) or bounds[0] > bounds[1]
                    or (kind == "step" and not bounds[2] > 0)):
                raise ValueError(
                    f"malformed search space entry {name!r}: {spec!r} (a tuple is a range: "
                    f"(low, high), ('log', low, high) or ('step', low, high, step > 0) of "
                    f"numbers; a list is a set of choices)")
        else:
            raise ValueError(f"search space entry {name!r} must be a list or a tuple")
    if "output_w_bits" in space:
        spec = space["output_w_bits"]
        if not isinstance(spec, list) or not all(
                v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 2)
                for v in spec):
            raise ValueError(f"search space entry 'output_w_bits' must be a list of ints >= 2 "
                             f"or None, got {spec!r}")
    if ("n_layers" in space) != ("width" in space):
        raise ValueError("'n_layers' and 'width' go together (they build hidden_layer_sizes)")


def _suggest(trial: Any, name: str, spec: Any) -> Any:
    if isinstance(spec, list):
        # optuna stores categoricals as given: tuples/None are fine, lists are not
        choices = [tuple(c) if isinstance(c, list) else c for c in spec]
        return trial.suggest_categorical(name, choices)
    if spec[0] == "log":
        lo, hi = spec[1], spec[2]
        if isinstance(lo, int) and isinstance(hi, int):
            return trial.suggest_int(name, lo, hi, log=True)
        return trial.suggest_float(name, lo, hi, log=True)
    if spec[0] == "step":
        return trial.suggest_float(name, spec[1], spec[2], step=spec[3])
    lo, hi = spec
    if isinstance(lo, int) and isinstance(hi, int):
        return trial.suggest_int(name, lo, hi)
    return trial.suggest_float(name, float(lo), float(hi))


def sample_params(trial: Any, space: Mapping[str, Any], template: Any = None) -> dict[str, Any]:
    """Estimator parameters for one Optuna trial (``template``: the search's estimator,
    whose ``_assemble_params`` turns pseudo-parameters into its own)."""
    params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
    assemble = getattr(template, "_assemble_params", None)
    if callable(assemble):
        return dict(assemble(params))
    if "n_layers" in params:
        n, w = int(params.pop("n_layers")), int(params.pop("width"))
        params["hidden_layer_sizes"] = (w,) * n
    if "hidden_layer_sizes" in params and not isinstance(params["hidden_layer_sizes"], tuple):
        params["hidden_layer_sizes"] = (int(params["hidden_layer_sizes"]),)
    out_bits = params.pop("output_w_bits", None)
    if out_bits is not None:
        merged = dict(template.get_params() if template is not None else {}, **params)
        hidden = tuple(merged.get("hidden_layer_sizes", ()))
        bits = merged.get("n_w_bits", 3)
        per_layer = (list(bits) if isinstance(bits, (list, tuple))
                     else [int(bits)] * (len(hidden) + 1))
        if len(per_layer) != len(hidden) + 1:
            raise ValueError(f"output_w_bits needs n_w_bits per layer to match "
                             f"hidden_layer_sizes {hidden}, got {bits!r}")
        if int(out_bits) < per_layer[-1]:  # never wider than the hidden layers' weights
            per_layer[-1] = int(out_bits)
            params["n_w_bits"] = per_layer
    return params

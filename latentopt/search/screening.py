"""Cheap decisions taken before a trial spends time: reject, shorten, or seed.

* :func:`lower_bound_seconds`: seconds per sample that no circuit of a configuration
  can beat (one PBS per kept hidden neuron at the cheapest lookup calibrated, one
  encryption per input), from the parameters alone, before training or compiling.  A
  configuration whose bound exceeds the best feasible latency found so far
  (:func:`best_feasible_latency`) is rejected.
* Multi-fidelity (successive halving, one rung): a trial first trains for
  ``max_epochs // SHORT_FRACTION`` epochs; only if its unrounded validation score is in
  the top :data:`PROMOTE` share of the earlier trials' short scores (:func:`promising`)
  is it trained in full and compiled.
* :func:`accumulator_floor`: the fewest accumulator bits one product ``max|w| * max|x|``
  of a configuration needs (from its bit-widths alone); a sampled ``n_accum_bits`` below
  it can never be met, so the trial is rejected before training.
* :func:`seed_configs`: a few configurations around what fast, accurate circuits use
  (one hidden layer of 16-64 neurons at 3-4 bits), enqueued at the start of a study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SHORT_FRACTION", "accumulator_floor", "best_feasible_latency", "clip_to_space",
           "lower_bound_seconds", "n_lookups", "promising", "seed_configs", "short_params"]

#: Short training = the template's ``max_epochs`` divided by this.
SHORT_FRACTION = 8
#: Share of short-trained trials promoted to full training (successive halving, eta=3).
PROMOTE = 1 / 3
#: Fewest short-trained trials before the promotion rule prunes anything.
MIN_RUNG_TRIALS = 3
#: Seeded configurations (in estimator terms, clipped into the space).
#: The learning rate is the largest of the default space: at 3-4 bits and a short
#: budget of epochs, 1e-3 under-trains (measured on a generated 3-class set, 100
#: epochs: 0.75 validation accuracy at 1e-3 against 0.82 at 1e-2, float 0.86).
SEEDS: tuple[dict[str, Any], ...] = (
    {"hidden_layer_sizes": (16,), "n_w_bits": 3, "n_a_bits": 3, "lr": 1e-2},
    {"hidden_layer_sizes": (32,), "n_w_bits": 3, "n_a_bits": 3, "lr": 1e-2},
    {"hidden_layer_sizes": (16,), "n_w_bits": 4, "n_a_bits": 4, "lr": 1e-2},
    {"hidden_layer_sizes": (32,), "n_w_bits": 4, "n_a_bits": 4, "lr": 1e-2},
    # around the float reference's width (scikit-learn's 100): data-hungry problems
    # need it (generated 5-class, 40-feature set, all 1,500 training rows, 4 bits: 0.742
    # test accuracy for (64,), 0.752 for (128,), 0.695 for (32,); float (100,) 0.758)
    {"hidden_layer_sizes": (64,), "n_w_bits": 4, "n_a_bits": 4, "lr": 1e-2},
    {"hidden_layer_sizes": (128,), "n_w_bits": 4, "n_a_bits": 4, "lr": 1e-2},
)


def n_lookups(params: Mapping[str, Any]) -> int:
    """Table lookups per sample a configuration keeps at least (one per hidden neuron
    left after structured pruning of ``pruning_ratio``)."""
    hidden = params.get("hidden_layer_sizes") or ()
    if not hidden:  # a torch estimator's own architecture: no structural bound
        return 0
    ratio = float(params.get("pruning_ratio") or 0.0)
    return sum(max(1, math.floor(int(h) * (1.0 - ratio))) for h in hidden)


def lower_bound_seconds(cost_model: Any, params: Mapping[str, Any], n_features: int) -> float:
    """Seconds per sample no circuit of this configuration can beat (see module doc)."""
    return float(cost_model.lower_bound(n_lookups(params), int(n_features)))


def accumulator_floor(template: Any, params: Mapping[str, Any], n_features: int,
                      input_signed: bool = True) -> int | None:
    """Fewest bits an accumulator of this MLP configuration can have, or None.

    One product ``max|w| * max|x|`` per layer is structural: weight quantizers scale
    to the full signed range and activation quantizers to theirs, whatever training
    does.  None when the configuration has no accumulator budget (``n_accum_bits``) or
    the template is not an MLP estimator.  Below, 3-bit weights (at most 3) times 6-bit
    signed inputs (down to -32) need 8 bits; unsigned inputs (``input_signed=False``,
    training data never negative: up to 63) need 9.

    >>> from latentopt import QuantizedMLPClassifier
    >>> accumulator_floor(QuantizedMLPClassifier(), {"hidden_layer_sizes": (8,),
    ...     "n_w_bits": 3, "n_a_bits": 4, "n_input_bits": 6, "n_accum_bits": 7}, 10)
    8
    >>> accumulator_floor(QuantizedMLPClassifier(), {"hidden_layer_sizes": (8,),
    ...     "n_w_bits": 3, "n_a_bits": 4, "n_input_bits": 6, "n_accum_bits": 7}, 10,
    ...     input_signed=False)
    9
    """
    merged = dict(template.get_params(), **params)
    if merged.get("n_accum_bits") is None or "hidden_layer_sizes" not in merged:
        return None
    from ..nn.mlp import QuantMLP
    from ..prune.accumulator import min_accumulator_bits

    module = QuantMLP(int(n_features), tuple(merged["hidden_layer_sizes"]), 2,
                      n_w_bits=merged["n_w_bits"], n_a_bits=merged["n_a_bits"],
                      n_input_bits=merged.get("n_input_bits"),
                      activation=merged.get("activation", "relu"),
                      power_of_two_scales=bool(merged.get("power_of_two_scales", False)),
                      input_signed=input_signed)
    return int(max(min_accumulator_bits(module)))


def best_feasible_latency(trials: Sequence[Any]) -> float | None:
    """The smallest latency among completed trials that met the budget, or None."""
    best = None
    for t in trials:
        if t.state.name != "COMPLETE" or t.values is None:
            continue
        if t.user_attrs.get("constraint", [1])[0] <= 0:
            best = t.values[0] if best is None else min(best, t.values[0])
    return None if best is None else float(best)


def short_params(template: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` for the short-training rung (fewer epochs, no longer patience)."""
    full = int(dict(template.get_params(), **params).get("max_epochs", 200))
    return dict(params, max_epochs=max(5, full // SHORT_FRACTION))


def promising(score: float, previous: Sequence[float], threshold: float) -> bool:
    """Whether a short-trained score earns full training.

    Yes while fewer than :data:`MIN_RUNG_TRIALS` earlier trials were short-trained, or
    when the score reaches the threshold already, or the top :data:`PROMOTE` share of
    the earlier ones.
    """
    previous = [p for p in previous if np.isfinite(p)]
    if len(previous) < MIN_RUNG_TRIALS or score >= threshold:
        return True
    return bool(score >= float(np.quantile(previous, 1.0 - PROMOTE)))


def clip_to_space(value: Any, spec: Any) -> Any:
    """``value`` moved into a search-space entry (nearest choice or range bound)."""
    if isinstance(spec, list):
        choices = [tuple(c) if isinstance(c, list) else c for c in spec]
        if value in choices:
            return value
        numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if numeric and isinstance(value, (int, float)):
            return min(numeric, key=lambda c: abs(c - value))
        return choices[0]
    lo, hi = (spec[1], spec[2]) if spec[0] in ("log", "step") else spec
    return type(lo)(min(max(value, lo), hi))


def seed_configs(space: Mapping[str, Any], template: Any,
                 X: Any = None) -> list[dict[str, Any]]:
    """Optuna ``enqueue_trial`` parameter dicts for :data:`SEEDS`, in ``space`` terms.

    Parameters the space does not search are left out (the template's values apply);
    parameters the seed does not name take the template's value, clipped into the
    space.  Duplicates after clipping are dropped.  A template with its own
    ``_search_seeds(space, X)`` (the torch estimators: seeds in their pseudo-parameters,
    from their model and a sample ``X``) gives its seeds instead.
    """
    own = getattr(template, "_search_seeds", None)
    if callable(own):
        return list(own(space, X))
    defaults = template.get_params()
    out: list[dict[str, Any]] = []
    for seed in SEEDS:
        params = dict(seed, pruning_ratio=0.0, n_accum_bits=None, output_w_bits=None,
                      activation=defaults.get("activation", "relu"))
        trial: dict[str, Any] = {}
        for name, spec in space.items():
            if name == "n_layers":
                trial[name] = clip_to_space(len(params["hidden_layer_sizes"]), spec)
            elif name == "width":
                trial[name] = clip_to_space(int(params["hidden_layer_sizes"][0]), spec)
            elif name in params:
                trial[name] = clip_to_space(params[name], spec)
            elif name in defaults and defaults[name] is not None:
                trial[name] = clip_to_space(defaults[name], spec)
        if trial and trial not in out:
            out.append(trial)
    return out

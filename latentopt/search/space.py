"""Search spaces of the outer (retraining) search, sampled through Optuna trials.

A space maps estimator parameters to choices:

* a list -> categorical (``{"n_w_bits": [2, 3, 4]}``),
* ``(lo, hi)`` of ints or floats -> uniform range,
* ``("log", lo, hi)`` -> log-uniform range,
* ``("step", lo, hi, step)`` -> stepped float range.

Two pseudo-parameters build ``hidden_layer_sizes``: ``n_layers`` and ``width`` (every
hidden layer gets the same width; depth is a dimension of the search).

>>> space = DEFAULT_SPACE
>>> sorted(space)  # doctest: +NORMALIZE_WHITESPACE
['activation', 'lr', 'n_a_bits', 'n_accum_bits', 'n_input_bits', 'n_layers', 'n_w_bits',
 'pruning_ratio', 'width']

``n_accum_bits`` is the guaranteed accumulator budget (pruning until every worst-case
accumulator fits; ``None``: no budget).  The rounding bits and ``p_error`` are not in the
space: the inner search (:mod:`latentopt.search.inner`) picks them per trained model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_SPACE", "sample_params", "validate_space"]

DEFAULT_SPACE: dict[str, Any] = {
    "n_w_bits": (2, 4),
    "n_a_bits": (2, 4),
    "n_input_bits": (3, 6),
    "n_accum_bits": [None, 8, 10, 12],
    "activation": ["relu", "silu", "tanh"],
    "n_layers": (1, 2),
    "width": ("log", 4, 64),
    "pruning_ratio": [0.0, 0.25, 0.5],
    "lr": [1e-3, 3e-3, 1e-2],
}


def validate_space(space: Mapping[str, Any], estimator: Any) -> None:
    """Raise ``ValueError`` for malformed entries or parameters the estimator lacks."""
    params = set(estimator.get_params())
    for name, spec in space.items():
        if name not in params and name not in ("n_layers", "width"):
            raise ValueError(f"search space names {name!r}, not a parameter of "
                             f"{type(estimator).__name__}")
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"search space entry {name!r} is an empty list")
        elif isinstance(spec, tuple):
            if spec and spec[0] in ("log", "step"):
                if len(spec) != (3 if spec[0] == "log" else 4) or spec[1] > spec[2]:
                    raise ValueError(f"malformed search space entry {name!r}: {spec!r}")
            elif len(spec) != 2 or spec[0] > spec[1]:
                raise ValueError(f"malformed search space entry {name!r}: {spec!r}")
        else:
            raise ValueError(f"search space entry {name!r} must be a list or a tuple")
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


def sample_params(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Estimator parameters for one Optuna trial."""
    params = {name: _suggest(trial, name, spec) for name, spec in space.items()}
    if "n_layers" in params:
        n, w = int(params.pop("n_layers")), int(params.pop("width"))
        params["hidden_layer_sizes"] = (w,) * n
    if "hidden_layer_sizes" in params and not isinstance(params["hidden_layer_sizes"], tuple):
        params["hidden_layer_sizes"] = (int(params["hidden_layer_sizes"]),)
    return params

"""Checks of every :class:`~latentopt.search.latency_search.LatencySearch` argument.

All run in ``fit`` before any training, so that a wrong argument costs nothing.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .space import resolve_space, validate_space

__all__ = ["check_search_args", "check_space_values", "split_error"]

#: Bit-width parameters and their smallest supported value.
_MIN_BITS = {"n_w_bits": 2, "n_a_bits": 2, "n_input_bits": 2}


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_search_args(search: Any) -> None:
    """Raise ``ValueError`` / ``TypeError`` for any invalid argument of a search."""
    drop = search.max_accuracy_drop
    if not _real(drop) or not math.isfinite(float(drop)) or float(drop) < 0:
        raise ValueError(f"max_accuracy_drop must be a finite number >= 0, got {drop!r}")
    ref = search.reference_score
    if ref is not None and (not _real(ref) or not math.isfinite(float(ref))):
        raise ValueError(f"reference_score must be None or a finite number, got {ref!r}")
    from sklearn.base import is_classifier

    from .scoring import check_scoring, unit_interval

    scoring = getattr(search, "scoring", None)
    if hasattr(search.estimator, "get_params"):
        check_scoring(scoring, is_classifier(search.estimator))
    bounded = unit_interval(scoring) or (scoring is None and is_classifier(search.estimator))
    if ref is not None and bounded and not 0 <= float(ref) <= 1:
        # an accuracy: 5.0 was taken, and the advice read "max_accuracy_drop >= 4.25"
        what = f"a {scoring} score" if scoring is not None else "an accuracy for a classifier"
        raise ValueError(f"reference_score is {what}: in [0, 1], got {ref!r}")
    for name in ("n_trials", "n_jobs", "n_repeats"):
        v = getattr(search, name)
        if not _int(v) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    t = search.timeout
    if t is not None and (not _real(t) or not math.isfinite(float(t)) or float(t) <= 0):
        raise ValueError(f"timeout must be None or a finite number of seconds > 0, got {t!r}")
    vf = search.validation_fraction
    if not _real(vf) or not 0.0 < float(vf) < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {vf!r}")
    if not _int(search.verbose):
        raise ValueError(f"verbose must be an int, got {search.verbose!r}")
    if not isinstance(search.refit, bool):
        raise ValueError(f"refit must be a bool, got {search.refit!r}")
    if search.study_name is not None and (not isinstance(search.study_name, str)
                                          or not search.study_name):
        raise ValueError(f"study_name must be None or a non-empty str, got "
                         f"{search.study_name!r}")
    if search.cache_dir is not None and not isinstance(search.cache_dir, (str, os.PathLike)):
        raise ValueError(f"cache_dir must be None or a path, got {search.cache_dir!r}")
    cm = search.cost_model
    if not (cm is None or (isinstance(cm, str) and cm in ("auto", "complexity"))
            or hasattr(cm, "predict")):
        raise ValueError(f"cost_model must be 'auto', 'complexity', None or a CostModel, "
                         f"got {cm!r}")
    hf = search.holdout_fraction
    if not _real(hf) or not 0.0 <= float(hf) < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {hf!r}")
    cf = search.check_folds
    if isinstance(cf, bool) or not isinstance(cf, numbers.Integral) or not 1 <= int(cf) <= 20:
        raise ValueError(f"check_folds must be an int in [1, 20], got {cf!r}")
    if not isinstance(search.multi_fidelity, bool):
        raise ValueError(f"multi_fidelity must be a bool, got {search.multi_fidelity!r}")
    if search.n_jobs > 1 and type(search.storage).__name__ == "InMemoryStorage":
        # each worker process would hold its own copy: their trials never came back
        raise ValueError("n_jobs > 1 needs a storage the worker processes share: an "
                         "optuna InMemoryStorage lives in one process (its workers' trials "
                         "were lost); pass storage=None (a temporary journal), a "
                         "'.journal' path or a database URL")
    est = search.estimator
    if not (hasattr(est, "get_params") and hasattr(est, "compile")):
        raise TypeError(f"estimator must be a latentopt estimator (QuantizedMLPClassifier, "
                        f"QuantizedMLPRegressor, QuantizedTorchClassifier or "
                        f"QuantizedTorchRegressor), got {type(est).__name__}")
    _check_bits(est.get_params(), "the estimator")
    if search.param_space is not None:
        if not isinstance(search.param_space, Mapping):
            raise ValueError("param_space must be a dict (see latentopt.search.space)")
        space = resolve_space(search.param_space, est)
        validate_space(space, est)
        check_space_values(space, est)


def _check_bits(params: Mapping[str, Any], where: str) -> None:
    for name, lo in _MIN_BITS.items():
        if name not in params or params[name] is None:
            continue
        v = params[name]
        values = list(v) if isinstance(v, (list, tuple)) else [v]
        for b in values:
            if not _int(b) or b < lo:
                extra = (" (binary weights are not supported: a signed narrow-range 1-bit "
                         "quantizer has the single level 0, so the model cannot train)"
                         if name == "n_w_bits" and b == 1 else "")
                raise ValueError(f"{name}={v!r} in {where}: bit-widths must be ints >= {lo}"
                                 f"{extra}")


def _extremes(spec: Any) -> list[Any]:
    if isinstance(spec, list):
        return list(spec)
    if spec[0] == "log":
        if spec[1] <= 0:
            raise ValueError(f"a log-uniform range needs a lower bound > 0, got {spec!r}")
        return [spec[1], spec[2]]
    if spec[0] == "step":
        return [spec[1], spec[2]]
    return [spec[0], spec[1]]


def check_space_values(space: Mapping[str, Any], estimator: Any) -> None:
    """Check the values a space can produce against the estimator's own validation."""
    for name, spec in space.items():
        values = _extremes(spec)
        if name == "output_w_bits":  # checked by validate_space
            continue
        if name in ("n_layers", "width"):
            if not all(_int(v) and v >= 1 for v in values):
                raise ValueError(f"search space entry {name!r} must hold ints >= 1, got {spec!r}")
            continue
        for v in values:
            _check_bits({name: v}, f"search space entry {name!r}")
            if not hasattr(estimator, "_check_params"):
                continue
            try:
                _with(estimator, name, v)._check_params()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"search space entry {name!r} can produce {v!r}, which the "
                                 f"estimator rejects: {exc}") from exc


def _with(estimator: Any, name: str, value: Any) -> Any:
    from sklearn.base import clone

    params = {name: value}
    assemble = getattr(estimator, "_assemble_params", None)
    if callable(assemble):  # pseudo-parameters (e.g. a torch estimator's n_w_bits)
        params = assemble(params)
    return clone(estimator).set_params(**params)



def split_error(exc: ValueError, y: np.ndarray, what: str) -> ValueError:
    """sklearn's "The least populated class in y has only 1 member" from a stratified
    split, as a message that names the rare classes and what to do."""
    labels, counts = np.unique(y, return_counts=True)
    rare = ", ".join(f"{lab!r}: {int(c)}" for lab, c in zip(labels, counts) if c < 2)
    return ValueError(
        f"a class has too few samples for the search's stratified {what} split "
        f"({rare or exc}; each class needs at least 2 samples in what is split, more "
        f"with holdout_fraction > 0): drop or merge the rare classes, or collect more "
        f"samples of them")

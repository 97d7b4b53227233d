"""The search's metric: the estimator's own ``score`` (accuracy, R^2) or a scikit-learn
scorer (``scoring="balanced_accuracy"``, ``"f1_macro"``, ``"roc_auc"``,
``"neg_mean_absolute_error"``, or a callable ``scorer(estimator, X, y)``).

Accuracy is a poor budget on imbalanced classes: on a set with 10% positives a model that
always says "negative" scores 0.90, so a budget of "1 point below a float model at 0.93"
is met by a circuit whose lookups all round to constants.  A scorer that weighs the
classes (balanced accuracy, macro F1) turns that circuit away.

Every score of a search, in trials, on the check split, in cross-validation and at refit,
and the float reference's, goes through :func:`score_in_mode`, so the budget
``reference - max_accuracy_drop`` is always in the scorer's units (higher is better, as
for every scikit-learn scorer: losses are ``neg_...``).
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from typing import Any

import numpy as np

from ..ir.inputs import InputRangeWarning

__all__ = ["check_scoring", "score_in_mode", "scoring_name", "unit_interval"]

#: Scorers whose value is a share of rows right: the check's binomial margin applies.
ACCURACY_LIKE = (None, "accuracy", "balanced_accuracy")


#: Scorer names whose values lie in [0, 1] (a reference score outside is a mistake).
_UNIT_PREFIXES = ("accuracy", "balanced_accuracy", "top_k_accuracy", "f1", "precision",
                  "recall", "jaccard", "roc_auc", "average_precision")


def check_scoring(scoring: Any, classifier: bool | None = None) -> None:
    """ValueError for a scorer name scikit-learn does not know, or (``classifier`` given)
    one of the other task; TypeError for another kind of value."""
    if scoring is None or callable(scoring):
        return
    if not isinstance(scoring, str):
        raise TypeError(f"scoring must be None, a scikit-learn scorer name or a callable "
                        f"scorer(estimator, X, y), got {type(scoring).__name__}")
    from sklearn.metrics import get_scorer, get_scorer_names

    try:
        scorer = get_scorer(scoring)
    except ValueError:
        close = [n for n in get_scorer_names() if scoring.split("_")[0] in n][:6]
        raise ValueError(f"scoring={scoring!r} is not a scikit-learn scorer"
                         + (f" (close: {close})" if close else "")
                         + "; see sklearn.metrics.get_scorer_names()") from None
    module = getattr(getattr(scorer, "_score_func", None), "__module__", "")
    regression = module.endswith("_regression")
    if classifier is not None and classifier == regression:
        task, other = ("a classifier", "regression") if classifier else ("a regressor",
                                                                         "classification")
        raise ValueError(f"scoring={scoring!r} is a {other} metric; the search's estimator "
                         f"is {task}")


def unit_interval(scoring: Any) -> bool:
    """The scorer's values lie in [0, 1] (accuracy, F1, AUC, ...)."""
    return isinstance(scoring, str) and scoring.startswith(_UNIT_PREFIXES)


def _code_key(code: Any) -> str:
    """A digest of a function's code that is the same in every process (its repr holds
    memory addresses)."""
    parts = [code.co_code.hex(), repr(code.co_names)]
    for c in code.co_consts:
        parts.append(_code_key(c) if hasattr(c, "co_code") else repr(c))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def scoring_name(scoring: Any) -> str | None:
    """What names ``scoring`` in a study's identity and in messages: a scikit-learn
    scorer by its function, arguments and sign (its repr), a ``functools.partial`` by its
    function and arguments, a function by its name and a digest of its code (two
    lambdas, or two versions of one function, are told apart)."""
    if scoring is None or isinstance(scoring, str):
        return scoring
    if hasattr(scoring, "_score_func"):  # make_scorer(f, greater_is_better=..., **kwargs)
        return repr(scoring)
    if isinstance(scoring, functools.partial):
        return (f"partial({scoring_name(scoring.func)}, {scoring.args!r}, "
                f"{sorted(scoring.keywords.items())!r})")
    fn = scoring if hasattr(scoring, "__code__") else type(scoring).__call__
    name = (f"{getattr(scoring, '__module__', '')}."
            f"{getattr(scoring, '__qualname__', type(scoring).__qualname__)}")
    code = getattr(fn, "__code__", None)
    return name if code is None else f"{name}#{_code_key(code)}"


class _InMode:
    """``est`` whose predictions run under FHE ``mode``, for a scikit-learn scorer
    (scorers call ``predict(X)`` / ``predict_proba(X)`` without the ``fhe`` argument)."""

    def __init__(self, est: Any, mode: str) -> None:
        self._est, self._mode = est, mode
        for name in ("classes_", "n_features_in_", "feature_names_in_"):
            if hasattr(est, name):
                setattr(self, name, getattr(est, name))

    def __sklearn_tags__(self) -> Any:
        return self._est.__sklearn_tags__()

    def predict(self, X: Any) -> Any:
        return self._est.predict(X, fhe=self._mode)

    def predict_proba(self, X: Any) -> Any:
        if not hasattr(self._est, "predict_proba"):
            raise AttributeError(f"{type(self._est).__name__} has no predict_proba")
        return self._est.predict_proba(X, fhe=self._mode)


def score_in_mode(est: Any, X: np.ndarray, y: np.ndarray, mode: str | None,
                  scoring: Any = None) -> float:
    """``est``'s score on ``(X, y)``: its own ``score`` or ``scoring``, predictions under
    FHE ``mode`` (``None``: an estimator without FHE modes, such as the float reference).

    Without the warning about features far outside the input quantizer's range
    (:func:`~latentopt.ir.inputs.warn_far_outside`): on heavy-tailed data a few
    validation rows can be, and every trial's every score repeated it; the chosen
    model's ``predict`` still warns.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputRangeWarning)
        if scoring is None:
            return float(est.score(X, y) if mode is None else est.score(X, y, fhe=mode))
        from sklearn.metrics import get_scorer

        scorer = get_scorer(scoring) if isinstance(scoring, str) else scoring
        return float(scorer(est if mode is None else _InMode(est, mode), X, y))

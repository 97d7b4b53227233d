"""The search's distillation teacher: fitted once, validated, and keyed for the cache.

A teacher given to :class:`~latentopt.search.latency_search.LatencySearch` (or set on its
estimator template) is fitted on the training split once, before the first trial; the
trials receive the fitted teacher (or, for an array of teacher outputs, its rows of the
training split), and the model cache keys on a digest of the teacher's outputs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, is_classifier
from sklearn.utils.metaestimators import available_if


def search_teacher(search: Any) -> Any:
    """The search's own ``teacher``, else the estimator template's, else None."""
    if search.teacher is not None:
        return search.teacher
    return search.estimator.get_params().get("teacher")


def is_array_teacher(teacher: Any) -> bool:
    """Whether ``teacher`` is an array of outputs, split with the data (not a model)."""
    from ..nn.distill import teacher_kind

    return teacher is not None and teacher_kind(teacher) == "array"


def prepare_teacher(estimator: Any, teacher: Any, X_tr: np.ndarray, y_tr: np.ndarray,
                    array_tr: np.ndarray | None) -> tuple[Any, Any, str]:
    """``(trial teacher, fitted teacher, cache key)`` of ``teacher`` for ``estimator``.

    The teacher is fitted on ``(X_tr, y_tr)`` if it needs to be (an array teacher's
    training rows, ``array_tr``, are used as they are) and its outputs on ``X_tr`` are
    computed once: that validates it before any trial trains, and their digest keys the
    model cache.  ``ValueError`` if ``estimator`` has no ``teacher`` parameter.
    """
    if teacher is None:
        return None, None, ""
    if "teacher" not in estimator.get_params():
        raise ValueError(f"{type(estimator).__name__} has no 'teacher' parameter: "
                         "it cannot be distilled")
    from ..nn.distill import fit_teacher, teacher_targets

    trial_teacher = array_tr if array_tr is not None else fit_teacher(teacher, X_tr, y_tr)
    fitted = np.asarray(teacher) if array_tr is not None else trial_teacher
    if is_classifier(estimator):
        out = teacher_targets(trial_teacher, X_tr, classes=np.unique(y_tr))
    else:
        out = teacher_targets(trial_teacher, X_tr,
                              n_outputs=1 if y_tr.ndim == 1 else y_tr.shape[1])
    key = hashlib.sha256(np.ascontiguousarray(out, dtype=np.float32).tobytes())
    return trial_teacher, fitted, key.hexdigest()[:12]


def _has(name: str) -> Any:
    return lambda self: hasattr(self.estimator_ if hasattr(self, "estimator_")
                                else self.estimator, name)


class FramedTeacher(BaseEstimator):
    """A scikit-learn teacher fed DataFrames with the user's columns.

    The search validates ``X`` to an array once and its trials train on arrays, but a
    teacher given with a DataFrame may select its columns by name (a ``ColumnTransformer``
    in a pipeline), as it does in the estimators' own ``fit``.  This wrapper hands it the
    rows as a DataFrame of ``columns``.
    """

    def __init__(self, estimator: Any = None, columns: Any = None) -> None:
        self.estimator = estimator
        self.columns = columns

    def _frame(self, X: Any) -> Any:
        import pandas as pd

        return pd.DataFrame(np.asarray(X), columns=list(self.columns))

    def fit(self, X: Any, y: Any) -> FramedTeacher:
        from ..nn.distill import fit_teacher

        self.estimator_ = fit_teacher(self.estimator, self._frame(X), y)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "estimator_")

    @property
    def classes_(self) -> Any:
        return self.estimator_.classes_

    def predict(self, X: Any) -> Any:
        return self.estimator_.predict(self._frame(X))

    @available_if(_has("predict_proba"))
    def predict_proba(self, X: Any) -> Any:
        return self.estimator_.predict_proba(self._frame(X))

    @available_if(_has("decision_function"))
    def decision_function(self, X: Any) -> Any:
        return self.estimator_.decision_function(self._frame(X))


def framed(teacher: Any, X: Any) -> Any:
    """``teacher`` wrapped in :class:`FramedTeacher` when ``X`` is a DataFrame and the
    teacher a scikit-learn estimator (arrays and torch modules see arrays anyway)."""
    from ..nn.distill import teacher_kind

    if (teacher is None or not (hasattr(X, "columns") and hasattr(X, "iloc"))
            or teacher_kind(teacher) != "sklearn"):
        return teacher
    return FramedTeacher(teacher, list(X.columns))


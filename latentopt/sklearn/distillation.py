"""Knowledge distillation for the estimators: the teacher's soft targets and loss.

The losses and the teacher adapters live in :mod:`latentopt.nn.distill`; this mixin
fits the teacher (``teacher_``) when ``fit`` runs and turns its outputs into the soft
targets the training loop mixes with the labels: temperature-softened log-probabilities
for a classifier, standardised predictions for a regressor (the scale the regressor
trains on, see :mod:`latentopt.sklearn.targets`).  The torch QAT estimators use the
same soft targets and loss with the user's float module as the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from sklearn.base import is_classifier

__all__ = ["DistillationMixin", "teacher_inputs"]


def teacher_inputs(X: Any, X_arr: np.ndarray) -> Any:
    """What a teacher sees at ``fit``: the user's DataFrame as given (a teacher pipeline
    may select its columns by name), else the validated array ``X_arr``."""
    return X if hasattr(X, "columns") and hasattr(X, "iloc") else X_arr


class DistillationMixin:
    """``teacher`` / ``distill_temperature`` / ``distill_alpha`` of the MLP estimators
    (the torch estimators have no ``teacher``: their module is one)."""

    teacher: Any
    distill_temperature: float
    distill_alpha: float
    # fitted state the soft targets depend on (classifier: classes_; regressor: the rest)
    classes_: np.ndarray
    y_mean_: np.ndarray
    y_scale_: np.ndarray
    n_outputs_: int

    def _distill_targets(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray | None:
        """Fit ``teacher_`` if needed (``y`` given) and return its soft targets on ``X``."""
        if y is not None:
            from ..nn.distill import fit_teacher

            self.teacher_ = None if self.teacher is None else fit_teacher(self.teacher, X, y)
        teacher = getattr(self, "teacher_", None)
        return None if teacher is None else self._teacher_outputs(teacher, X)

    def _soft_loss(self) -> Callable[..., Any]:
        """The training loss against (labels, soft targets)."""
        from ..nn.distill import distillation_loss, regression_distillation_loss

        if is_classifier(self):
            return partial(distillation_loss, temperature=float(self.distill_temperature),
                           alpha=float(self.distill_alpha))
        return partial(regression_distillation_loss, alpha=float(self.distill_alpha))

    def _teacher_outputs(self, teacher: Any, X: np.ndarray) -> np.ndarray:
        """One row of soft targets per sample of ``X``, on the scale the network learns."""
        from ..nn.distill import teacher_targets

        if is_classifier(self):
            return np.asarray(teacher_targets(teacher, X, classes=self.classes_))
        out = teacher_targets(teacher, X, n_outputs=self.n_outputs_)
        return np.asarray((out - self.y_mean_) / self.y_scale_, dtype=np.float32)

"""Knowledge distillation: losses against a teacher's outputs, and the teacher's soft targets.

A small quantized *student* learns from a mix of the hard labels and a *teacher*'s
outputs (Hinton et al., 2015).  Two pieces live here, both torch-only:

* the losses -- :func:`distillation_loss` for classification (cross entropy on the hard
  labels mixed with the KL divergence between temperature-softened teacher and student
  distributions, scaled by ``T**2`` so that its gradients keep their size when ``T``
  changes) and :func:`regression_distillation_loss` (mean squared error to a mix of the
  labels and the teacher's outputs);
* :func:`teacher_targets`, which turns a teacher into one row of soft targets per sample:
  a fitted scikit-learn estimator (``predict_proba``, else ``decision_function``, else
  ``predict``), a ``torch.nn.Module`` (its outputs are logits, or values for regression)
  or an array computed beforehand.

Classification soft targets are stored as teacher *log-probabilities*: softening them by
a temperature, ``softmax(log p / T)``, is the same as softening the teacher's logits,
``softmax(z / T)``, so teachers that give probabilities and teachers that give logits are
treated alike.  Probabilities are clipped to ``PROBA_FLOOR`` first (a one-hot prediction
would otherwise give ``log 0``).

``alpha`` is the weight of the teacher's (soft) term: ``alpha=0`` is plain training on
the labels, ``alpha=1`` learns from the teacher alone.

Examples
--------
>>> import torch
>>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
>>> y = torch.tensor([0, 1])
>>> teacher = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
>>> hard = distillation_loss(logits, y, teacher, temperature=2.0, alpha=0.0)
>>> bool(torch.isclose(hard, torch.nn.functional.cross_entropy(logits, y)))
True
>>> float(distillation_loss(teacher, y, teacher, temperature=2.0, alpha=1.0))  # KL(p||p)
0.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PROBA_FLOOR",
    "check_distill_params",
    "distillation_loss",
    "fit_teacher",
    "regression_distillation_loss",
    "teacher_kind",
    "teacher_targets",
]

#: Teacher probabilities are clipped to at least this before taking their logarithm.
PROBA_FLOOR = 1e-6


def check_distill_params(temperature: Any, alpha: Any) -> None:
    """Raise ``ValueError`` unless ``temperature > 0`` and ``0 <= alpha <= 1``.

    >>> check_distill_params(2.0, 0.5)
    >>> check_distill_params(0.0, 0.5)
    Traceback (most recent call last):
    ...
    ValueError: distill_temperature must be a number > 0, got 0.0
    """
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"distill_temperature must be a number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
            or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"distill_alpha must be a number in [0, 1], got {alpha!r}")


def distillation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    teacher_log_proba: torch.Tensor,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Hard-label cross entropy mixed with the temperature-softened KL to the teacher.

    ``(1 - alpha) * CE(logits, target) + alpha * T**2 * KL(p_T || q_T)`` where
    ``p_T = softmax(teacher_log_proba / T)`` and ``q_T = softmax(logits / T)``, the KL
    averaged over the batch.

    Parameters
    ----------
    logits : torch.Tensor of shape (n, n_classes)
        Student outputs.
    target : torch.Tensor of shape (n,)
        Class indices (int64).
    teacher_log_proba : torch.Tensor of shape (n, n_classes)
        Teacher log-probabilities or logits (the same after softmax).
    temperature : float
        ``T > 0``; larger values soften both distributions.
    alpha : float
        Weight of the soft (teacher) term in [0, 1].

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    t = float(temperature)
    hard = F.cross_entropy(logits, target)
    student = F.log_softmax(logits / t, dim=1)
    teacher = F.log_softmax(teacher_log_proba.to(logits.dtype) / t, dim=1)
    soft = F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)
    return (1.0 - float(alpha)) * hard + float(alpha) * soft


def regression_distillation_loss(
    output: torch.Tensor,
    target: torch.Tensor,
    teacher_output: torch.Tensor,
    *,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Mean squared error to ``(1 - alpha) * target + alpha * teacher_output``.

    The gradient equals that of ``(1 - alpha) * MSE(target) + alpha * MSE(teacher)``.

    Parameters
    ----------
    output, target, teacher_output : torch.Tensor of the same shape
        Student outputs, labels and teacher outputs (in the student's target units).
    alpha : float
        Weight of the teacher's outputs in [0, 1].
    """
    a = float(alpha)
    mixed = (1.0 - a) * target + a * teacher_output.to(target.dtype)
    return F.mse_loss(output, mixed)


def teacher_kind(teacher: Any) -> str:
    """``"torch"``, ``"sklearn"`` or ``"array"``: how :func:`teacher_targets` uses it.

    >>> from sklearn.linear_model import LogisticRegression
    >>> teacher_kind(LogisticRegression()), teacher_kind([[0.5, 0.5]])
    ('sklearn', 'array')
    """
    if isinstance(teacher, nn.Module):
        return "torch"
    if hasattr(teacher, "fit") and hasattr(teacher, "predict"):
        return "sklearn"
    if teacher is None or isinstance(teacher, (str, bytes)) or callable(teacher):
        raise TypeError(
            "teacher must be a scikit-learn estimator (with fit and predict), a "
            f"torch.nn.Module or an array of outputs, got {type(teacher).__name__}"
        )
    return "array"


def _as_2d(out: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"teacher {what} are not numeric: {exc}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        hint = ("; an array teacher holds outputs for the rows of one X: under "
                "cross-validation, where each fold fits other rows, pass a teacher estimator "
                "or module instead" if arr.ndim == 2 and what == "array values" else "")
        raise ValueError(
            f"teacher {what} have shape {np.shape(out)}; expected {n} rows (one per sample "
            f"of X), as (n_samples, n_outputs) or, for a single output, (n_samples,){hint}"
        )
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.all(np.isfinite(arr), axis=1)))
        raise ValueError(f"teacher {what} contain NaN or infinite values ({bad} rows)")
    return arr


def _torch_outputs(module: nn.Module, X: np.ndarray) -> np.ndarray:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.as_tensor(X, dtype=torch.float32))
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"teacher module returned {type(out).__name__}, not a tensor")
    return out.detach().to(torch.float64).cpu().numpy()


def _check_sklearn_classes(teacher: Any, classes: np.ndarray) -> np.ndarray | None:
    """Column order mapping teacher.classes_ to ``classes`` (None: no ``classes_``)."""
    t_classes = getattr(teacher, "classes_", None)
    if t_classes is None:
        return None
    t_classes = np.asarray(t_classes)
    if t_classes.ndim != 1 or set(t_classes.tolist()) != set(classes.tolist()):
        raise ValueError(
            f"the teacher's classes {t_classes.tolist()} differ from the student's classes "
            f"{classes.tolist()}: fit the teacher on the same labels"
        )
    order = {c: i for i, c in enumerate(t_classes.tolist())}
    return np.array([order[c] for c in classes.tolist()])


def _log_proba(proba: np.ndarray) -> np.ndarray:
    p = np.clip(proba, PROBA_FLOOR, None)
    return np.log(p / p.sum(axis=1, keepdims=True))


def _classification_targets(teacher: Any, kind: str, X: np.ndarray,
                            classes: np.ndarray) -> np.ndarray:
    n, k = len(X), len(classes)
    if kind == "sklearn":
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(teacher)
        cols = _check_sklearn_classes(teacher, classes)
        if hasattr(teacher, "predict_proba"):
            out = _as_2d(teacher.predict_proba(X), n, "predict_proba outputs")
            logp = _log_proba(out)
        elif hasattr(teacher, "decision_function"):
            out = _as_2d(teacher.decision_function(X), n, "decision_function outputs")
            # binary decision functions give one score: the logit of classes_[1]
            logp = np.hstack([np.zeros_like(out), out]) if out.shape[1] == 1 and k == 2 else out
        else:
            pred = np.asarray(teacher.predict(X))
            if pred.shape != (n,):
                raise ValueError(f"teacher predict outputs have shape {pred.shape}; "
                                 f"expected ({n},) labels")
            unknown = np.setdiff1d(np.unique(pred), classes)
            if unknown.size:
                raise ValueError(f"the teacher predicts labels {unknown.tolist()} that are not "
                                 f"among the student's classes {classes.tolist()}")
            onehot = (pred[:, None] == classes[None, :]).astype(np.float64)
            return _log_proba(onehot)  # already in the student's class order
        out = logp if cols is None or logp.shape[1] != k else logp[:, cols]
    elif kind == "torch":
        out = _as_2d(_torch_outputs(teacher, X), n, "module outputs")
        if out.shape[1] == 1 and k == 2:
            out = np.hstack([np.zeros_like(out), out])  # one logit: that of class 1
    else:  # an array
        if np.ndim(teacher) != 2:
            raise ValueError(f"a teacher array for classification must be 2-D (n_samples, "
                             f"n_classes) probabilities or logits, got shape "
                             f"{np.shape(teacher)}")
        out = _as_2d(np.asarray(teacher, dtype=np.float64), n, "array values")
        if out.shape[1] == k and np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0,
                                                                  atol=1e-4):
            out = _log_proba(out)  # rows are probabilities
    if out.shape[1] != k:
        raise ValueError(f"teacher outputs have {out.shape[1]} columns, the student has {k} "
                         "classes")
    return out - out.max(axis=1, keepdims=True)  # logits, shifted for stability


def teacher_targets(
    teacher: Any,
    X: np.ndarray,
    *,
    classes: np.ndarray | None = None,
    n_outputs: int | None = None,
) -> np.ndarray:
    """Soft targets of ``teacher`` for the rows of ``X``.

    Parameters
    ----------
    teacher : fitted scikit-learn estimator, torch.nn.Module or array-like
        * scikit-learn classifier: ``predict_proba`` if it has one, else
          ``decision_function`` (logits; a 1-D binary score is the logit of
          ``classes_[1]``), else ``predict`` (one-hot).  Its ``classes_`` must be the
          student's classes (columns are reordered to match).
        * ``torch.nn.Module``: called on ``X`` as float32 in eval mode; outputs are logits
          (one column for two classes: the logit of the second class), or values for
          regression.
        * array of shape (n_samples, n_classes) -- rows that are probabilities (non-negative,
          summing to 1) are taken as such, anything else as logits -- or (n_samples,) /
          (n_samples, n_outputs) values for regression.  Rows must match ``X``.
    X : ndarray of shape (n_samples, n_features), or the user's DataFrame
        Inputs the teacher sees (the estimator's unencoded inputs; a scikit-learn
        teacher gets a DataFrame as it is, with its column names).
    classes : ndarray, optional
        The student's classes (sorted labels): classification.  Exactly one of
        ``classes`` and ``n_outputs`` is given.
    n_outputs : int, optional
        Number of regression targets: regression.

    Returns
    -------
    ndarray of shape (n_samples, n_classes) or (n_samples, n_outputs)
        Classification: teacher log-probabilities (up to a per-row constant), float32.
        Regression: teacher outputs in the units of ``y``, float64.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        A scikit-learn teacher that is not fitted.
    ValueError
        Class sets that differ, outputs of the wrong shape, NaN or infinite outputs.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([0, 0, 1, 1])
    >>> t = teacher_targets(LogisticRegression().fit(X, y), X, classes=np.array([0, 1]))
    >>> t.shape, bool((t.argmax(1) == y).all())
    ((4, 2), True)
    """
    if (classes is None) == (n_outputs is None):
        raise ValueError("give exactly one of classes (classification) and n_outputs "
                         "(regression)")
    kind = teacher_kind(teacher)
    if kind != "sklearn" or not hasattr(X, "columns"):  # a DataFrame stays one for
        X = np.asarray(X)                                # scikit-learn teachers
    n = len(X)
    if classes is not None:
        return _classification_targets(teacher, kind, X, np.asarray(classes)).astype(np.float32)
    if kind == "sklearn":
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(teacher)
        out = _as_2d(teacher.predict(X), n, "predict outputs")
    elif kind == "torch":
        out = _as_2d(_torch_outputs(teacher, X), n, "module outputs")
    else:
        out = _as_2d(teacher, n, "array values")
    if out.shape[1] != n_outputs:
        raise ValueError(f"teacher outputs have {out.shape[1]} columns, the student has "
                         f"{n_outputs} targets")
    return out


def fit_teacher(teacher: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """The teacher to distil from, fitted on ``(X, y)`` if it needs to be.

    A scikit-learn estimator that is already fitted is returned as is; an unfitted one is
    cloned and the clone fitted on ``(X, y)`` (the parameter itself is never modified,
    like ``StackingClassifier`` does with its estimators).  Since ``sklearn.base.clone``
    (and so ``GridSearchCV``) clones nested estimators, a fitted teacher passed as a
    parameter of a cloned student is refitted on the student's training data.  Torch
    modules and arrays are returned as they are.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.array([[-2.0], [-1.0], [1.0], [2.0]]); y = np.array([0, 0, 1, 1])
    >>> template = LogisticRegression()
    >>> fitted = fit_teacher(template, X, y)
    >>> fitted is not template, hasattr(template, "coef_"), fit_teacher(fitted, X, y) is fitted
    (True, False, True)
    """
    if teacher_kind(teacher) != "sklearn":
        return teacher
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(teacher)
        return teacher
    except NotFittedError:
        return clone(teacher).fit(X, y)

"""The float reference a search's accuracy budget is measured from.

For a torch estimator with a trained ``module``, the user's float model itself
(:class:`~latentopt.sklearn.torch_qat_search.FloatReference`); otherwise (MLP estimators,
a torch estimator's module factory) a float scikit-learn MLP fitted on the same
training rows, on flattened samples when they are image-shaped.

A regressor's reference learns standardised targets, as the quantized regressors do, with
its L2 penalty ``alpha`` chosen by 3-fold cross-validation on the training rows
(:data:`REGRESSOR_ALPHAS`).  scikit-learn's ``MLPRegressor`` alone fits raw targets: on
generated targets offset by 10,000 it scored R^2 -153 on test, and on targets in the
tens of thousands 0.001 (0.98 on the same targets unscaled), so every budget measured
from it was met by a model predicting a constant.  Standardised targets without the
penalty search overfit small sets instead (diabetes: -0.13; the search then measures
its budget from a reference worse than the mean).  Measured on test splits (seed 0):
diabetes 0.30 (raw targets) / -0.13 (standardised) / 0.22 (with the chosen penalty);
Friedman #1 plus 10,000: -153 / 0.90 / 0.90; 20 features of which 5 informative, noise
30: 0.85 / 0.76 / 0.86.

>>> import numpy as np
>>> from latentopt import QuantizedMLPClassifier
>>> X = np.random.default_rng(0).normal(size=(40, 3)); y = (X[:, 0] > 0).astype(int)
>>> ref = fit_reference(QuantizedMLPClassifier(), X, y, random_state=0)
>>> type(ref).__name__
'MLPClassifier'
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import is_classifier

__all__ = ["REGRESSOR_ALPHAS", "fit_reference", "quiet_targets"]

#: L2 penalties the regressors' reference chooses from (3-fold cross-validation).
REGRESSOR_ALPHAS = (1e-4, 1e-2, 1.0, 10.0)


def _flatten(X: np.ndarray) -> np.ndarray:
    """Samples as flat rows."""
    return X.reshape(len(X), -1)


def fit_reference(estimator: Any, X_tr: np.ndarray, y_tr: np.ndarray,
                  random_state: Any = None) -> Any:
    """The fitted float reference of the search template ``estimator``."""
    float_reference = getattr(estimator, "_float_reference", None)
    reference = float_reference() if callable(float_reference) else None
    if reference is not None:  # a torch estimator: the user's float model
        return reference.fit(X_tr, y_tr)
    from sklearn.neural_network import MLPClassifier

    mlp: Any
    if is_classifier(estimator):
        mlp = MLPClassifier(max_iter=1000, random_state=random_state)
    else:
        mlp = _regressor_reference(len(X_tr), random_state)
    if X_tr.ndim > 2:  # image-shaped samples (a torch estimator's module factory)
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer

        mlp = make_pipeline(FunctionTransformer(_flatten), mlp)
    with quiet_targets():
        return mlp.fit(X_tr, y_tr)


@contextlib.contextmanager
def quiet_targets() -> Iterator[None]:
    """Fits of the float reference without scikit-learn's ``DataConversionWarning``: with
    one target as a column ``(n, 1)`` (the estimators take it) its ``MLPRegressor`` warned
    on every fit of the penalty's grid and of the check's folds, about 50 times a search."""
    from sklearn.exceptions import DataConversionWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataConversionWarning)
        yield


def _regressor_reference(n_rows: int, random_state: Any) -> Any:
    """A float MLP regressor on standardised targets, its ``alpha`` cross-validated."""
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    mlp = TransformedTargetRegressor(MLPRegressor(max_iter=1000, random_state=random_state),
                                     transformer=StandardScaler())
    if n_rows < 6:  # too few rows to choose a penalty on
        return mlp
    folds = KFold(3, shuffle=True, random_state=0)
    return GridSearchCV(mlp, {"regressor__alpha": list(REGRESSOR_ALPHAS)}, cv=folds)

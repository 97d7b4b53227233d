"""The float reference a search's accuracy budget is measured from.

For a torch estimator with a trained ``module``, the user's float model itself
(:class:`~latentopt.sklearn.torch_qat_search.FloatReference`); otherwise (MLP estimators,
a torch estimator's module factory) a float scikit-learn MLP fitted on the same
training rows, on flattened samples when they are image-shaped.

>>> import numpy as np
>>> from latentopt import QuantizedMLPClassifier
>>> X = np.random.default_rng(0).normal(size=(40, 3)); y = (X[:, 0] > 0).astype(int)
>>> ref = fit_reference(QuantizedMLPClassifier(), X, y, random_state=0)
>>> type(ref).__name__
'MLPClassifier'
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import is_classifier

__all__ = ["fit_reference"]


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
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    cls = MLPClassifier if is_classifier(estimator) else MLPRegressor
    mlp: Any = cls(max_iter=1000, random_state=random_state)
    if X_tr.ndim > 2:  # image-shaped samples (a torch estimator's module factory)
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer

        mlp = make_pipeline(FunctionTransformer(_flatten), mlp)
    return mlp.fit(X_tr, y_tr)

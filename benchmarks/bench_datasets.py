"""The data sets of the search benchmarks, shared with the Concrete ML peer script.

numpy + scikit-learn only, so that it runs in both virtualenvs.  Every set is split the
same way: 25% test (stratified for classification), seed 0, StandardScaler fitted on
the training part.
"""

from __future__ import annotations

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

#: name -> make_classification arguments (generated sets: 2-5 classes, 10-50 features,
#: varied class separation and label noise, several seeds)
GENERATED = {
    "gen_3c_24f": dict(n_samples=1500, n_features=24, n_informative=12, n_classes=3,
                       class_sep=1.0, flip_y=0.01, random_state=0),
    "gen_5c_40f": dict(n_samples=2000, n_features=40, n_informative=20, n_classes=5,
                       class_sep=1.0, flip_y=0.02, random_state=1),
    "gen_2c_10f": dict(n_samples=1000, n_features=10, n_informative=6, n_classes=2,
                       class_sep=0.8, flip_y=0.03, random_state=2),
    "gen_4c_16f": dict(n_samples=1200, n_features=16, n_informative=10, n_classes=4,
                       class_sep=1.3, flip_y=0.05, random_state=3),
    "gen_2c_50f": dict(n_samples=1000, n_features=50, n_informative=8, n_classes=2,
                       class_sep=1.5, flip_y=0.0, random_state=4),
}
BUNDLED = ("breast_cancer", "wine", "digits")
REGRESSION = ("diabetes",)
ALL = (*GENERATED, *BUNDLED, *REGRESSION)


def is_regression(name: str) -> bool:
    return name in REGRESSION


def quantized_mlp(name: str) -> type:
    """latentopt's MLP estimator class for data set ``name`` (imported here, on call: the
    Concrete ML virtualenv loads this module without latentopt)."""
    from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor

    return QuantizedMLPRegressor if is_regression(name) else QuantizedMLPClassifier


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X_train, X_test, y_train, y_test`` of data set ``name`` (scaled, see above)."""
    if name in GENERATED:
        X, y = datasets.make_classification(**GENERATED[name])  # type: ignore[arg-type]
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    strat = None if is_regression(name) else y
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=strat,
                                          random_state=0)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte

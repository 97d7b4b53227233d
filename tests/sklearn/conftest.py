from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor


def _split(X, y, stratify=True):
    Xtr, Xte, ytr, yte = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y if stratify else None
    )
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte


@pytest.fixture(scope="session")
def wine():
    return _split(*load_wine(return_X_y=True))


@pytest.fixture(scope="session")
def breast_cancer():
    return _split(*load_breast_cancer(return_X_y=True))


@pytest.fixture(scope="session")
def diabetes():
    return _split(*load_diabetes(return_X_y=True), stratify=False)


@pytest.fixture(scope="session")
def fitted_wine_clf(wine):
    Xtr, Xte, ytr, yte = wine
    clf = QuantizedMLPClassifier(hidden_layer_sizes=(16,), max_epochs=60, lr=5e-3,
                                 random_state=0, verbose=0)
    return clf.fit(Xtr, ytr)


@pytest.fixture(scope="session")
def fitted_diabetes_reg(diabetes):
    Xtr, Xte, ytr, yte = diabetes
    reg = QuantizedMLPRegressor(hidden_layer_sizes=(16,), max_epochs=60, lr=5e-3,
                                n_w_bits=4, n_a_bits=4, random_state=0, verbose=0)
    return reg.fit(Xtr, ytr)


@pytest.fixture
def rng():
    return np.random.RandomState(0)

"""A fit that raises leaves a fitted estimator as it was (labels, target shape, circuit).

Fitted attributes are set step by step; a refit failing after ``classes_`` or ``y_ndim_``
was replaced paired them with the old network: new label names on the old outputs, a
2-output regressor's predictions flattened to twice the rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification, make_regression

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor, QuantizedTorchClassifier

TINY = dict(hidden_layer_sizes=(8,), max_epochs=3, verbose=0, random_state=0)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(200, 6, n_informative=4, n_classes=3,
                               n_clusters_per_class=1, random_state=0)


def test_classifier_keeps_its_labels_and_circuit(data):
    X, y = data
    clf = QuantizedMLPClassifier(**TINY).fit(X, y)
    before, circuit = clf.predict(X), clf.circuit_
    with pytest.raises(ValueError, match="teacher"):
        clf.set_params(teacher=np.zeros((10, 3))).fit(X, np.array(["a", "b", "c"])[y])
    assert list(clf.classes_) == [0, 1, 2] and clf.circuit_ is circuit
    np.testing.assert_array_equal(clf.predict(X), before)
    with pytest.raises(ValueError):  # and with fewer features: n_features_in_ kept too
        clf.fit(X[:, :4], y)
    assert clf.n_features_in_ == 6
    np.testing.assert_array_equal(clf.predict(X), before)


def test_regressor_keeps_its_target_shape():
    X, y = make_regression(200, 5, n_targets=2, random_state=0)
    reg = QuantizedMLPRegressor(**TINY).fit(X / X.std(0), y)
    before = reg.predict(X / X.std(0))
    with pytest.raises(ValueError, match="teacher"):
        reg.set_params(teacher=np.zeros((3, 1))).fit(X / X.std(0), y[:, 0])
    assert reg.n_outputs_ == 2 and reg.y_ndim_ == 2
    np.testing.assert_array_equal(reg.predict(X / X.std(0)), before)


def test_torch_classifier_keeps_its_labels(data):
    X, y = data
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    clf = QuantizedTorchClassifier(module, n_bits=4, max_epochs=2, verbose=0,
                                   random_state=0).fit(X, y)
    before = clf.predict(X)
    with pytest.raises(ValueError, match="outputs"):
        clf.fit(X[y < 2], np.array(["p", "q"])[y[y < 2]])
    assert list(clf.classes_) == [0, 1, 2]
    np.testing.assert_array_equal(clf.predict(X), before)

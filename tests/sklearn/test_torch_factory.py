"""Torch QAT estimators built from a module factory (the module made at fit time)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn
from torch_qat_models import digits_images

from latentopt import QuantizedTorchClassifier, QuantizedTorchRegressor
from latentopt.nn.factories import MLPFactory


def tiny_cnn(input_shape, n_outputs):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * ((h - 3) // 2 + 1) * ((w - 3) // 2 + 1), n_outputs))


def test_mlp_factory_builds_for_the_data_and_fits_reproducibly():
    X, y = digits_images()
    flat = X.reshape(len(X), -1)
    kw = dict(n_bits=5, max_epochs=8, lr=1e-2, batch_size=32, random_state=0, verbose=0)
    clf = QuantizedTorchClassifier(MLPFactory((16,)), **kw).fit(flat[:1000], y[:1000] % 4)
    first, last = clf.float_module_[1], clf.float_module_[-1]
    assert (first.in_features, last.out_features) == (64, 4)
    assert clf.n_features_in_ == 64 and list(clf.classes_) == [0, 1, 2, 3]
    assert clf.score(flat[1000:], y[1000:] % 4) > 0.8
    again = clone(clf).fit(flat[:1000], y[:1000] % 4)  # seeded by random_state
    np.testing.assert_array_equal(again.predict(flat[1000:]), clf.predict(flat[1000:]))
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict(flat[1000:]), clf.predict(flat[1000:]))
    assert clf._float_reference() is None  # no trained float model to compare with


def test_cnn_factory_gets_the_sample_shape():
    X, y = digits_images()
    clf = QuantizedTorchClassifier(tiny_cnn, n_bits=4, max_epochs=6, lr=1e-2, batch_size=32,
                                   random_state=0, verbose=0).fit(X[:1000], y[:1000])
    assert clf.input_shape_ == (1, 8, 8) and clf.float_module_[3].out_features == 10
    assert clf.score(X[1000:], y[1000:]) > 0.8


def test_regressor_factory_learns_standardised_targets_in_user_units():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)).astype(np.float32)
    y = 1000.0 + 100.0 * (X[:, 0] + 0.5 * X[:, 1] ** 2)
    reg = QuantizedTorchRegressor(MLPFactory((16,)), n_bits=6, max_epochs=20, lr=1e-2,
                                  batch_size=32, random_state=0, verbose=0)
    reg.fit(X[:400], y[:400])
    assert reg.y_mean_[0] == pytest.approx(y[:400].mean(), rel=1e-6)
    assert reg.score(X[400:], y[400:]) > 0.8
    assert abs(reg.predict(X[400:]).mean() - 1000.0) < 50  # in the targets' units
    # a trained module ending in a Linear learns standardised targets too (its head is
    # rescaled on a copy): without fine-tuning the circuit still computes the module
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    fixed = QuantizedTorchRegressor(net, n_bits=8, max_epochs=0, verbose=0).fit(X[:100],
                                                                               y[:100])
    assert fixed.target_head_ == "2"
    assert fixed.y_mean_[0] == pytest.approx(y[:100].mean(), rel=1e-6)
    with torch.no_grad():
        ref = net(torch.as_tensor(X[:100])).numpy().ravel()
    assert np.abs(fixed.predict(X[:100]) - ref).max() < 0.05 * np.ptp(ref)


def test_bad_factories_are_refused():
    X, y = digits_images()
    with pytest.raises(TypeError, match="factory returned"):
        QuantizedTorchClassifier(lambda shape, n: "no", verbose=0).fit(X[:50], y[:50])
    with pytest.raises(TypeError, match="factory"):
        QuantizedTorchClassifier(3, verbose=0).fit(X[:50], y[:50])
    with pytest.raises(ValueError, match="activation"):
        MLPFactory(activation="nope")
    with torch.no_grad():
        assert MLPFactory(())((3,), 2)(torch.zeros(1, 3)).shape == (1, 2)  # linear model

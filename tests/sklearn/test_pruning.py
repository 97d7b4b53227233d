"""Fit-time pruning parameters and est.prune() on the estimators."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor
from latentopt.backends.integer import IntegerBackend

BASE = dict(hidden_layer_sizes=(20,), max_epochs=40, lr=5e-3, fine_tune_epochs=5,
            random_state=0, verbose=0)


def test_fit_time_structured_pruning(wine):
    Xtr, Xte, ytr, yte = wine
    clf = QuantizedMLPClassifier(**BASE, pruning_ratio=0.5).fit(Xtr, ytr)
    assert clf.bit_width_report().tlu_count == 10
    assert clf.module_.config["hidden_sizes"] == [10]
    assert clf.score(Xte, yte) >= 0.85
    assert clf.pruning_ratio == 0.5  # fit never rewrites hyper-parameters
    assert clf.pruning_reports_[0].hidden_after == [10]


def test_fit_time_accumulator_budget_is_guaranteed(wine):
    Xtr, Xte, ytr, yte = wine
    clf = QuantizedMLPClassifier(**BASE, n_accum_bits=8).fit(Xtr, ytr)
    worst = clf.circuit_.worst_case_ranges()
    for node in clf.circuit_.nodes:
        if node.op == "gemm":
            assert worst[node.name].bits <= 8
            # and no input of the quantizer's range can leave that bound
            lo, hi = clf.circuit_.input_quantizer.qrange
    rng = np.random.RandomState(0)
    q = rng.choice([lo, hi], size=(2000, Xtr.shape[1]))
    _, values = IntegerBackend(clf.circuit_).run_integers(q, return_all=True)
    for name in ("fc0", "fc1"):
        assert values[name].min() >= -128 and values[name].max() <= 127


def test_a_ratio_keeps_the_models_own_accumulator_budget():
    """prune(ratio=...) on a model fitted with n_accum_bits=9 reported the budget but
    left a 10-bit worst-case accumulator (structured pruning and fine-tuning move the
    weights); the budget is enforced again, and a ratio given as a string is refused
    as fit refuses it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = np.stack([2 * X[:, 0] - X[:, 1], X[:, 2] ** 2], axis=1)
    reg = QuantizedMLPRegressor(hidden_layer_sizes=(8,), max_epochs=20, n_w_bits=3,
                                n_a_bits=3, activation="silu", n_accum_bits=9,
                                fine_tune_epochs=5, lr=1e-2, random_state=0,
                                verbose=0).fit(X, y)
    pruned = reg.prune(X, y, ratio=0.5, fine_tune_epochs=3)
    assert pruned.n_accum_bits == 9
    worst = pruned.circuit_.worst_case_ranges()
    assert all(worst[n.name].bits <= 9 for n in pruned.circuit_.nodes if n.op == "gemm")
    with pytest.raises(ValueError, match="pruning_ratio"):
        reg.prune(X, y, ratio="0.5")


def test_prune_returns_new_estimator_and_composes(wine):
    Xtr, Xte, ytr, yte = wine
    clf = QuantizedMLPClassifier(**BASE).fit(Xtr, ytr)
    before = clf.predict(Xte)
    pruned = clf.prune(Xtr, ytr, ratio=0.5)
    assert pruned is not clf
    np.testing.assert_array_equal(clf.predict(Xte), before)  # original untouched
    assert clf.bit_width_report().tlu_count == 20
    assert pruned.bit_width_report().tlu_count == 10
    again = pruned.prune(Xtr, ytr, ratio=0.5, n_accum_bits=9)
    assert again.bit_width_report().tlu_count == 5
    assert again.bit_width_report().max_accumulator_bits <= 9
    assert again.pruning_ratio == pytest.approx(0.75)
    assert again.n_accum_bits == 9
    assert len(again.pruning_reports_) == 3
    # the cumulative hyper-parameters refit to a model of the same size
    refit = clone(again).fit(Xtr, ytr)
    assert refit.bit_width_report().tlu_count == 5
    # prune on a pipeline's step with transformed data
    assert again.score(Xte, yte) > 0.6


def test_prune_regressor(diabetes):
    Xtr, Xte, ytr, yte = diabetes
    reg = QuantizedMLPRegressor(**BASE, n_w_bits=4, n_a_bits=4).fit(Xtr, ytr)
    pruned = reg.prune(Xtr, ytr, ratio=0.5)
    assert pruned.bit_width_report().tlu_count == 10
    assert pruned.predict(Xte).shape == (len(Xte),)
    assert pruned.score(Xte, yte) > 0.2


@pytest.mark.parametrize(
    "params, match",
    [
        ({"pruning_ratio": 1.0}, "pruning_ratio"),
        ({"pruning_ratio": -0.1}, "pruning_ratio"),
        ({"n_accum_bits": 1}, "n_accum_bits"),
        ({"n_accum_bits": 4}, "impossible"),   # smaller than one product
        ({"prune_importance": "vibes", "pruning_ratio": 0.5}, "importance"),
        ({"fine_tune_epochs": -1}, "fine_tune_epochs"),
        ({"hidden_layer_sizes": (), "pruning_ratio": 0.5}, r"hidden_layer_sizes=\(\) has no"),
    ],
)
def test_impossible_pruning_is_refused(wine, params, match):
    Xtr, _, ytr, _ = wine
    with pytest.raises(ValueError, match=match):
        QuantizedMLPClassifier(**{**BASE, **params}).fit(Xtr, ytr)


def test_an_impossible_budget_is_refused_before_training(wine, monkeypatch):
    from latentopt.sklearn.training import MLPTrainingMixin

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the budget was checked")

    monkeypatch.setattr(MLPTrainingMixin, "_train", no_training)
    Xtr, _, ytr, _ = wine
    with pytest.raises(ValueError, match=r"n_accum_bits=4 is impossible .* needs 8 bits"):
        QuantizedMLPClassifier(**BASE, n_accum_bits=4).fit(Xtr, ytr)


def test_prune_errors(wine):
    Xtr, _, ytr, _ = wine
    clf = QuantizedMLPClassifier(**BASE).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="not seen"):
        clf.prune(Xtr, ytr + 10, ratio=0.2)
    with pytest.raises(ValueError, match="features"):
        clf.prune(Xtr[:, :3], ytr, ratio=0.2)
    with pytest.raises(ValueError):
        clf.prune(Xtr, ytr, ratio=0.999)  # would leave no neuron


def test_pruning_in_gridsearch(wine):
    Xtr, Xte, ytr, yte = wine
    pipe = make_pipeline(StandardScaler(), QuantizedMLPClassifier(**BASE))
    grid = GridSearchCV(pipe, {"quantizedmlpclassifier__pruning_ratio": [0.0, 0.5]}, cv=2)
    grid.fit(Xtr, ytr)
    best = grid.best_estimator_[-1]
    assert best.bit_width_report().tlu_count == int(20 * (1 - best.pruning_ratio))


def test_prune_reads_the_parameters_the_network_was_fitted_with(wine):
    """set_params after a fit changes the hyper-parameters, not the network: prune()
    counted a pruning_ratio set afterwards as if the network had been pruned by it."""
    Xtr, _, ytr, _ = wine
    clf = QuantizedMLPClassifier(**dict(BASE, max_epochs=5, fine_tune_epochs=1)).fit(Xtr, ytr)
    clf.set_params(pruning_ratio=0.5, hidden_layer_sizes=(40,))  # no refit
    pruned = clf.prune(Xtr, ytr, ratio=0.5)
    assert pruned.hidden_layer_sizes_ == (10,)
    assert pruned.pruning_ratio == pytest.approx(0.5)  # not 0.75
    assert pruned.hidden_layer_sizes == (20,)  # the network's, not the one set later
    assert clone(pruned).fit(Xtr, ytr).hidden_layer_sizes_ == (10,)

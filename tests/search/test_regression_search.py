"""The search on regressors: the float reference its budget is measured from, and a run."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_friedman1
from sklearn.exceptions import ConvergenceWarning

from latentopt import QuantizedMLPRegressor
from latentopt.search import LatencySearch
from latentopt.search.reference import fit_reference


@pytest.fixture(scope="module")
def offset_targets():
    """Friedman #1 targets scaled by 100 and offset by 10,000: a float MLP on raw targets
    cannot fit them (its outputs start near 0)."""
    X, y = make_friedman1(320, 6, noise=0.5, random_state=0)
    return X[:240], 100.0 * y[:240] + 1e4, X[240:], 100.0 * y[240:] + 1e4


def test_the_regressor_reference_fits_targets_far_from_zero(offset_targets):
    from sklearn.neural_network import MLPRegressor

    Xtr, ytr, Xte, yte = offset_targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        raw = MLPRegressor(max_iter=1000, random_state=0).fit(Xtr, ytr).score(Xte, yte)
        ref = fit_reference(QuantizedMLPRegressor(), Xtr, ytr, random_state=0)
    # the failure the reference avoids: a budget measured from R^2 < 0 accepts a constant
    assert raw < 0
    assert ref.score(Xte, yte) > 0.7
    # its predictions are on the targets' scale, and a clone refits (the check's folds)
    assert abs(np.mean(ref.predict(Xte)) - np.mean(yte)) < np.std(yte)
    from sklearn.base import clone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert clone(ref).fit(Xtr, ytr).score(Xte, yte) == pytest.approx(ref.score(Xte, yte))
    # too few rows to cross-validate a penalty: still standardised targets
    tiny = fit_reference(QuantizedMLPRegressor(), Xtr[:5], ytr[:5], random_state=0)
    assert abs(float(np.mean(tiny.predict(Xte))) - 1e4) < 2e3


def test_a_regression_search_measures_its_budget_from_a_fitted_reference(offset_targets,
                                                                          tmp_path):
    Xtr, ytr, Xte, yte = offset_targets
    template = QuantizedMLPRegressor(hidden_layer_sizes=(8,), n_w_bits=3, n_a_bits=3,
                                     max_epochs=60, lr=1e-2, random_state=0, verbose=0)
    s = LatencySearch(template, param_space={"n_w_bits": [3, 4]},
                      max_accuracy_drop=0.3, n_trials=2, n_repeats=1, cost_model=None,
                      holdout_fraction=0.0, cache_dir=tmp_path, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.fit(Xtr, ytr)
    assert s.reference_score_ > 0.5  # R^2 of the float reference on validation
    assert s.threshold_ == pytest.approx(s.reference_score_ - 0.3)
    if s.budget_met_:  # the chosen model holds the budget and predicts the targets' scale
        assert s.best_score_ >= s.threshold_
        pred = s.predict(Xte)
        assert pred.shape == yte.shape and np.std(pred) > 0.2 * np.std(yte)
    else:
        assert "Budget NOT met" in s.outcome_.message


def test_one_target_as_a_column_fits_the_reference_without_a_warning_per_fit(offset_targets):
    """y of shape (n, 1): scikit-learn's MLPRegressor warned on every fit of the
    reference's penalty grid and of the check's folds, about 50 times a search."""
    from latentopt.search.selection import _cv_reference

    Xtr, ytr, Xte, yte = offset_targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", UserWarning)  # DataConversionWarning is one
        ref = fit_reference(QuantizedMLPRegressor(), Xtr, ytr[:, None], random_state=0)
        folds = [(np.arange(0, 240, 2), np.arange(1, 240, 2))]
        score = _cv_reference(ref, Xtr, ytr[:, None], folds)
    assert ref.score(Xte, yte[:, None]) > 0.7 and score > 0.3  # (120 training rows)

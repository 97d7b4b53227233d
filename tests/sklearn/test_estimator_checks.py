"""scikit-learn's own estimator checks, run on small, fast configurations."""

from __future__ import annotations

import warnings

from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor

FAST = dict(hidden_layer_sizes=(16,), max_epochs=30, lr=1e-2, verbose=0, random_state=0)

# No expected failures: both estimators (with and without a teacher) pass every check
# of scikit-learn 1.9.
EXPECTED_FAILED: dict[str, str] = {}


@parametrize_with_checks(
    [QuantizedMLPClassifier(**FAST), QuantizedMLPRegressor(**FAST),
     # distilled variants: the (unfitted) teacher is cloned and fitted inside fit
     QuantizedMLPClassifier(**FAST, teacher=LogisticRegression()),
     QuantizedMLPRegressor(**FAST, teacher=Ridge())],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="brevitas")
        check(estimator)

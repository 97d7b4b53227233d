"""scikit-learn's own estimator checks on the torch QAT estimators.

The checks fit on data of any width and any number of classes, so the estimators get a
module factory (:class:`~latentopt.nn.factories.MLPFactory`, built at fit time for the
data's shape), a tiny one with few epochs so that the whole suite stays fast.
"""

from __future__ import annotations

import warnings

from sklearn.utils.estimator_checks import parametrize_with_checks

from latentopt import QuantizedTorchClassifier, QuantizedTorchRegressor
from latentopt.nn.factories import MLPFactory

FAST = dict(n_bits=5, max_epochs=10, lr=1e-2, batch_size=16, verbose=0, random_state=0)

EXPECTED_FAILED: dict[str, str] = {}


@parametrize_with_checks(
    [QuantizedTorchClassifier(MLPFactory((8,)), **FAST),
     QuantizedTorchRegressor(MLPFactory((8,)), **FAST)],
    expected_failed_checks=lambda est: EXPECTED_FAILED,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="brevitas")
        check(estimator)

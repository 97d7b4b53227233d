"""LatencySearch over torch estimators: QAT of the user's float model, bits and pruning."""

from __future__ import annotations

import pytest
from torch_qat_models import digits_images, float_accuracy, trained_tiny_cnn

from latentopt import QuantizedTorchClassifier
from latentopt.search import LatencySearch
from latentopt.search.space import TORCH_SPACE, default_space
from latentopt.search.trials import StudyMismatchError, n_evaluated

SPACE = {"n_w_bits": (3, 4), "n_a_bits.1": [3, 4], "n_input_bits": [5],
         "pruning_ratio": [0.0, 0.5]}


def _search(module=None, **kw):
    est = QuantizedTorchClassifier(trained_tiny_cnn() if module is None else module, n_bits=4,
                                   max_epochs=2, lr=3e-3, verbose=0)
    kw = {"n_trials": 3, "param_space": SPACE, "max_accuracy_drop": 0.15, "n_repeats": 1,
          "cost_model": None, "random_state": 0, "verbose": 0, "multi_fidelity": False, **kw}
    return LatencySearch(est, **kw)


@pytest.fixture(scope="module")
def data():
    X, y = digits_images()
    return X[:500], y[:500]


def test_search_trains_from_the_float_model_and_finds_a_front(data):
    X, y = data
    s = _search().fit(X, y)
    assert s.budget_met_ and isinstance(s.best_estimator_, QuantizedTorchClassifier)
    assert len(s.results_) == 3 and s.pareto_front_
    # the reference is the user's float model on the validation split
    assert s.reference_estimator_.score(X[:50], y[:50]) == pytest.approx(
        float_accuracy(trained_tiny_cnn(), X[:50], y[:50]))
    best = s.best_estimator_
    bits = best.get_params()["n_bits"]
    assert bits["inputs"] == 5 and bits["weights"] == s.best_params_["n_bits"]["weights"]
    assert bits["1"]["activations"] == best.qat_report_["activations"]["1"]
    assert best.rounded_circuit_ is not None  # compiled at its chosen point
    for row in s.pareto_front_:  # every front point's model, from the model cache
        est = s.trial_estimator(row["trial"])
        assert est.fhe_report_["programmable_bootstrap_count"] == row["pbs"]
    Xte, yte = digits_images()[0][1200:1400], digits_images()[1][1200:1400]
    assert best.score(Xte, yte, fhe="simulate") >= s.threshold_ - 0.1


def test_storage_resume_and_identity(data, tmp_path):
    X, y = data
    url = f"sqlite:///{tmp_path / 's.db'}"
    s1 = _search(n_trials=1, storage=url, study_name="t").fit(X, y)
    s2 = _search(n_trials=2, storage=url, study_name="t").fit(X, y)
    assert n_evaluated(s2.study_) == 2 and s1.results_[0]["trial"] == 0
    other = trained_tiny_cnn()
    other[0].weight.data.mul_(1.01)  # another float model: another study
    with pytest.raises(StudyMismatchError, match="estimator"):
        _search(module=other, n_trials=2, storage=url, study_name="t").fit(X, y)


def test_two_workers(data, tmp_path):
    X, y = data
    s = _search(n_trials=2, n_jobs=2, storage=str(tmp_path / "s.journal")).fit(X, y)
    assert n_evaluated(s.study_) == 2
    assert len({t.user_attrs["pid"] for t in s.study_.trials if "pid" in t.user_attrs}) == 2


def test_default_space_and_space_validation(data):
    est = QuantizedTorchClassifier(trained_tiny_cnn())
    assert default_space(est) == TORCH_SPACE
    assert est._assemble_params({"n_w_bits": 3, "n_a_bits.1": 2, "lr": 1e-3}) == {
        "lr": 1e-3, "n_bits": {"inputs": 4, "weights": 3, "activations": 4,
                               "1": {"activations": 2}}}
    X, y = data
    for space, match in [({"n_layers": (1, 2)}, "not a parameter"),
                         ({"n_w_bits.nope": [3]}, "unknown key"),
                         ({"n_a_bits": (1, 3)}, "bit-widths"),
                         ({"pruning_ratio": [0.0, 1.0]}, "pruning_ratio")]:
        with pytest.raises(ValueError, match=match):
            _search(param_space=space).fit(X, y)

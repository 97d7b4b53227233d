"""LatencySearch over torch estimators: QAT of the user's float model, bits and pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_qat_models import digits_images, float_accuracy, trained_cnn, trained_tiny_cnn

from latentopt import QuantizedTorchClassifier
from latentopt.nn.factories import MLPFactory
from latentopt.search import LatencySearch
from latentopt.search.space import TORCH_SPACE, default_space, resolve_space, torch_space
from latentopt.search.trials import StudyMismatchError, n_evaluated

SPACE = {"n_w_bits": (3, 4), "n_a_bits.1": [3, 4], "n_input_bits": [5],
         "pruning_ratio": [0.0, 0.5]}


def _search(module=None, **kw):
    est = QuantizedTorchClassifier(trained_tiny_cnn() if module is None else module, n_bits=4,
                                   max_epochs=2, lr=3e-3, verbose=0, random_state=0)
    kw = {"n_trials": 3, "param_space": SPACE, "max_accuracy_drop": 0.15, "n_repeats": 1,
          "cost_model": None, "random_state": 0, "verbose": 0, "multi_fidelity": False, **kw}
    return LatencySearch(est, **kw)


@pytest.fixture(scope="module")
def data():
    X, y = digits_images()
    return X[:500], y[:500]


def test_search_trains_from_the_float_model_and_finds_a_front(data):
    X, y = data
    # no check split here (tests/search/test_screening.py covers the check): the inner
    # search drives each trial to the budget's edge on validation, where an independent
    # simulation on unseen rows refuted the chosen trial in about half of the runs
    # (n_repeats=1, 100 validation rows: checked scores 0.79-0.92 against 0.829); a test
    # of the front must not rest on that luck
    s = _search(holdout_fraction=0.0).fit(X, y)
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


def test_per_layer_pruning_space_expands_to_the_model_layers():
    est = QuantizedTorchClassifier(trained_cnn(), pruning_ratio=0.25)
    space = resolve_space(torch_space(per_layer_pruning=True, ratios=[0.0, 0.5]), est)
    # the CNN's conv "0" and hidden linear "5"; the output layer "7" is never pruned
    assert {k for k in space if k.startswith("pruning_ratio")} == {"pruning_ratio.0",
                                                                     "pruning_ratio.5"}
    assert space["pruning_ratio.0"] == [0.0, 0.5] and "pruning_ratio" not in space
    # a named layer keeps its own entry; unnamed layers keep the estimator's ratio
    assert resolve_space({"pruning_ratio.*": [0.5], "pruning_ratio.5": [0.0]}, est) == {
        "pruning_ratio.0": [0.5], "pruning_ratio.5": [0.0]}
    assert est._assemble_params({"pruning_ratio.0": 0.5, "lr": 1e-3}) == {
        "lr": 1e-3, "pruning_ratio": {"0": 0.5, "5": 0.25}}
    # a sampled global ratio is the base the per-layer ratios override
    assert est._assemble_params({"pruning_ratio": 0.0, "pruning_ratio.5": 0.5}) == {
        "pruning_ratio": {"0": 0.0, "5": 0.5}}
    with pytest.raises(ValueError, match="module factory"):
        resolve_space({"pruning_ratio.*": [0.5]}, QuantizedTorchClassifier(MLPFactory()))


def test_distillation_is_searched_for_trained_modules_only():
    trained, factory = QuantizedTorchClassifier(trained_cnn()), QuantizedTorchClassifier(
        MLPFactory())
    assert default_space(trained)["distill_alpha"] == [0.0, 0.5]
    assert "distill_alpha" not in default_space(factory)
    assert "distill_alpha" not in torch_space(distill=False)
    with pytest.raises(ValueError, match="distill_alpha"):  # before any trial
        resolve_space(torch_space(), factory)
    assert resolve_space({"distill_alpha": [0.0]}, factory) == {"distill_alpha": [0.0]}


def test_search_with_per_layer_pruning(data):
    X, y = data
    est = QuantizedTorchClassifier(trained_cnn(), n_bits=4, max_epochs=2, lr=3e-3, verbose=0)
    space = {"n_input_bits": [5], "pruning_ratio.*": [0.0, 0.5]}
    # no check split: the check is tested apart (test_screening), and its safer-point
    # fallback compiles a CNN per point tried (this test took 3 minutes with it)
    s = LatencySearch(est, param_space=space, n_trials=3, max_accuracy_drop=0.3, n_repeats=1,
                      cost_model=None, random_state=0, verbose=0, multi_fidelity=False,
                      holdout_fraction=0.0).fit(X, y)
    assert len(s.results_) == 3
    for row in s.results_:  # every trial records the ratio of each prunable layer
        assert set(row["pruning_ratio"]) == {"0", "5"}
        assert set(row["pruning_ratio"].values()) <= {0.0, 0.5}
    sampled = [t.params for t in s.study_.trials if t.params]
    assert all(set(p) == {"n_input_bits", "pruning_ratio.0", "pruning_ratio.5"}
               for p in sampled)
    # the study starts from the estimator's seeds (half pruned, then light: 0.25 -> 0.0)
    seeds = est._search_seeds(resolve_space(space, est), X[:1])
    assert seeds == [{"n_input_bits": 5, "pruning_ratio.0": 0.5, "pruning_ratio.5": 0.5},
                     {"n_input_bits": 5, "pruning_ratio.0": 0.0, "pruning_ratio.5": 0.0}]
    assert sampled[:2] == seeds
    assert [t.user_attrs.get("seeded", False) for t in s.study_.trials] == [True, True, False]
    assert len({tuple(sorted(p.items())) for p in sampled}) == 3  # 3 distinct configurations
    best = s.best_estimator_
    ratios = s.best_params_["pruning_ratio"]
    assert best.get_params()["pruning_ratio"] == ratios
    conv, hidden = best.float_module_[0], best.float_module_[5]
    assert conv.out_channels == int(8 * (1 - ratios["0"]))
    assert hidden.out_features == int(16 * (1 - ratios["5"]))
    assert hidden.in_features == conv.out_channels * 9  # the coupled layer follows
    assert best.qat_report_["pruning"]["after"] == {"0": conv.out_channels,
                                                    "5": hidden.out_features, "7": 10}


def test_seeds_prune_the_layers_with_most_lookups_per_channel(data):
    X, _ = data
    est = QuantizedTorchClassifier(trained_cnn())
    # conv "0": one channel is a 6x6 map of lookups; the hidden linear "5": one lookup
    assert est._lookups_per_channel(X[:1]) == {"0": 36.0, "5": 1.0}
    space = resolve_space(torch_space(per_layer_pruning=True, ratios=(0.0, 0.25, 0.5, 0.75)),
                          est)
    seeds = est._search_seeds(space, X[:1])
    assert len(seeds) == 4 and all(set(s) == set(space) for s in seeds)
    heavy = seeds[0]  # 3-bit inputs, 4-bit weights and activations, distilled
    assert (heavy["n_input_bits"], heavy["n_w_bits"], heavy["n_a_bits"]) == (3, 4, 4)
    assert heavy["pruning_ratio.0"] == 0.75 and heavy["pruning_ratio.5"] == 0.5
    assert [s["distill_alpha"] for s in seeds] == [0.5, 0.0, 0.5, 0.0]
    assert {s["lr"] for s in seeds} == {max(TORCH_SPACE["lr"])}
    for seed in seeds:  # every value is one the space can sample
        for name, value in seed.items():
            spec = space[name]
            assert value in spec if isinstance(spec, list) else spec[0] <= value <= spec[1]
    # no sample to measure (or a factory): uniform ratios, the seeds still in the space
    blind = est._search_seeds(space, None)
    assert blind[0]["pruning_ratio.0"] == blind[0]["pruning_ratio.5"] == 0.5
    factory = QuantizedTorchClassifier(MLPFactory())
    assert factory._lookups_per_channel(X[:1].reshape(1, -1)) == {}
    assert all("distill_alpha" not in s
               for s in factory._search_seeds(default_space(factory), X[:1]))


def test_unknown_pruning_layers_are_refused(data):
    X, y = data
    with pytest.raises(ValueError, match="unknown layers"):
        _search(param_space={"pruning_ratio.nope": [0.5]}).fit(X, y)


def test_the_float_reference_takes_a_scorer(data):
    """scoring= scores the user's float model too (it had only score())."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from latentopt.search.scoring import score_in_mode
    from latentopt.sklearn.torch_qat_search import FloatReference

    X, y = data
    model = trained_tiny_cnn()
    ref = FloatReference(model, classifier=True).fit(X, y)
    with torch.no_grad():
        logits = model(torch.as_tensor(X[:300])).numpy()
    assert score_in_mode(ref, X[:300], y[:300], None, "balanced_accuracy") == pytest.approx(
        balanced_accuracy_score(y[:300], logits.argmax(1)))
    proba = ref.predict_proba(X[:300])
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert score_in_mode(ref, X[:300], y[:300], None, "roc_auc_ovr") == pytest.approx(
        roc_auc_score(y[:300], proba, multi_class="ovr"))

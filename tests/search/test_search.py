"""Inner (rounding / p_error) and outer (Optuna) searches on tiny problems."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from latentopt import QuantizedMLPClassifier
from latentopt.search import DEFAULT_SPACE, FAST_TRAINING, LatencySearch, search_compile
from latentopt.search.space import sample_params, validate_space

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=3, n_a_bits=3, n_input_bits=4, max_epochs=30,
            lr=1e-2, random_state=0, verbose=0)
SPACE = {"n_w_bits": (2, 3), "width": ("log", 3, 8), "n_layers": (1, 1)}


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(240, 5)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X[:160], y[:160], X[160:], y[160:]


def test_inner_search_finds_fast_feasible_point(data):
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**TINY).fit(Xtr, ytr)
    res = search_compile(est, Xv, yv, max_accuracy_drop=0.05, n_repeats=2)
    assert res.best is not None and res.best.feasible
    assert res.best.score >= res.threshold
    # the chosen point is the cheapest feasible candidate evaluated
    feasible = [c for c in res.candidates if c.feasible]
    assert res.best.latency == min(c.latency for c in feasible)
    # it rounds below the widest TLU input; the estimator itself is left untouched and
    # compiles the chosen point through its public compile()
    assert res.best.rounding_bits < est.circuit_.report().max_tlu_input_bits
    assert getattr(est, "rounded_circuit_", None) is None
    assert getattr(est, "fhe_circuit_", None) is None
    est.compile(**res.compile_kwargs)
    assert est.fhe_report_["max_tlu_input_bits"] <= res.best.rounding_bits
    assert res.latency_unit == "complexity"  # no cost model given: never called seconds
    assert "feasible" in res.table()


def test_inner_search_costs_its_choice_as_compile_will(data):
    """Candidates are ranked under concrete's default partitions; the chosen point's
    latency is the one ``est.compile`` (per-norm partitions where cheaper) gives."""
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**{**TINY, "hidden_layer_sizes": (6, 6)}).fit(Xtr, ytr)
    res = search_compile(est, Xv, yv, max_accuracy_drop=0.05, n_repeats=1)
    assert res.best is not None and res.best.shared_width  # one rounding, two layers
    est.compile(**res.compile_kwargs)
    assert est.fhe_report_["complexity"] == pytest.approx(res.best.latency)
    est.compile(**res.compile_kwargs, parameter_strategy="precision")
    assert est.fhe_report_["complexity"] >= res.best.latency


def test_inner_search_budget_zero_and_infeasible(data):
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**TINY).fit(Xtr, ytr)
    impossible = search_compile(est, Xv, yv, reference_score=1.01, max_accuracy_drop=0.0,
                                n_repeats=1)
    assert impossible.best is None
    with pytest.raises(RuntimeError):
        _ = impossible.compile_kwargs


def test_compile_auto(data):
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**TINY).fit(Xtr, ytr)
    est.compile(Xv, yv, rounding_bits="auto", p_error="auto", max_accuracy_drop=0.05,
                on_overflow="raise", range_margin=0.5, equalize=False)
    assert est.inner_search_.best is not None
    assert est.fhe_report_["p_error"] > 0
    # the chosen point is compiled with every other option the user gave
    chosen = est.inner_search_.compile_kwargs
    assert {k: est.compile_options_[k] for k in chosen} == chosen
    assert (est.compile_options_["on_overflow"], est.compile_options_["range_margin"],
            est.compile_options_["equalize"]) == ("raise", 0.5, False)
    with pytest.raises(ValueError, match="held-out"):
        est.compile(rounding_bits="auto")
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        est.compile(Xv, yv, rounding_bits="auto", max_accuracy_drop=-0.1)


def test_compile_auto_rounding_alone_compiles_at_the_default_error_probability(data):
    """``rounding_bits="auto"`` without ``p_error`` compiled at the inner search's 1e-3
    per lookup (a global error probability near 1e-2, against the default 1e-5)."""
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**TINY).fit(Xtr, ytr)
    est.compile(Xv, yv, rounding_bits="auto", max_accuracy_drop=0.05)
    assert est.compile_options_["p_error"] is None
    assert est.compile_options_["rounding_bits"] == est.inner_search_.best.rounding_bits
    for bad in (5.0, True, [4.0], "6"):
        with pytest.raises(ValueError, match="rounding_bits must be"):
            est.compile(rounding_bits=bad)


def test_compile_auto_on_a_dataframe_warns_once_and_not_about_feature_names(data, tmp_path):
    """The candidates score the validated array: scikit-learn warned "X does not have
    valid feature names" 13 times, and the held-out rows' overflow warning came once per
    candidate (about 15 times); save_deployment's probe rows warned too."""
    import warnings

    pd = pytest.importorskip("pandas")
    Xtr, ytr, Xv, yv = data
    cols = [f"f{i}" for i in range(Xtr.shape[1])]
    est = QuantizedMLPClassifier(**TINY).fit(pd.DataFrame(Xtr, columns=cols), ytr)
    far = pd.DataFrame(np.vstack([Xv, 50 * Xv[:1]]), columns=cols)  # one row out of range
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.compile(far, np.append(yv, yv[:1]), rounding_bits="auto", max_accuracy_drop=0.5)
        est.save_deployment(tmp_path / "dep")
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "feature names" in t]
    overflow = [t for t in texts if "leave the range this circuit" in t]
    assert overflow and len(overflow) == len(set(overflow))


def test_compile_auto_reports_infeasibility(data, monkeypatch):
    import latentopt.search.inner as inner

    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**TINY).fit(Xtr, ytr)
    monkeypatch.setattr(inner, "search_compile",
                        lambda *a, **k: inner.InnerResult(None, 0.9, 0.89))
    with pytest.raises(ValueError, match="within 0.01"):
        est.compile(Xv, yv, rounding_bits="auto")


def test_fast_training_trains_trials_at_batch_256_and_a_space_without_it_keeps_the_template(
        data, tmp_path):
    """Trials of a space with :data:`FAST_TRAINING` (and the refit of the chosen one)
    train at batch 256 with the scaled learning rates; a space that does not name
    ``batch_size`` (the default one) leaves the template's."""
    Xtr, ytr, _, _ = data
    assert FAST_TRAINING == {"batch_size": [256], "lr": [3e-3, 1e-2, 3e-2]}
    assert "batch_size" not in DEFAULT_SPACE
    kw = dict(max_accuracy_drop=0.5, reference_score=0.9, n_repeats=1, n_trials=2,
              cost_model=None, holdout_fraction=0.0, random_state=0, verbose=0)
    s = LatencySearch(QuantizedMLPClassifier(**dict(TINY, batch_size=32)),
                      param_space={"n_w_bits": [2, 3], **FAST_TRAINING},
                      cache_dir=tmp_path / "a", **kw).fit(Xtr, ytr)
    params = [t.user_attrs["params"] for t in s.study_.trials if "params" in t.user_attrs]
    assert sum(t.state.name == "COMPLETE" for t in s.study_.trials) >= 1 and params
    assert all(p["batch_size"] == 256 and p["lr"] in (3e-3, 1e-2, 3e-2) for p in params)
    assert s.best_trial_ is not None
    assert s.best_params_["batch_size"] == 256 and s.best_estimator_.batch_size == 256
    own = LatencySearch(QuantizedMLPClassifier(**dict(TINY, batch_size=32)),
                        param_space={"n_w_bits": [3]}, cache_dir=tmp_path / "b",
                        **dict(kw, n_trials=1)).fit(Xtr, ytr)
    assert all("batch_size" not in t.user_attrs["params"] for t in own.study_.trials
               if "params" in t.user_attrs)
    assert own.best_estimator_.batch_size == 32


def test_space_sampling_and_validation():
    study = optuna.create_study()
    trial = study.ask()
    params = sample_params(trial, DEFAULT_SPACE)
    assert isinstance(params["hidden_layer_sizes"], tuple)
    assert 1 <= len(params["hidden_layer_sizes"]) <= 2
    assert 4 <= params["hidden_layer_sizes"][0] <= DEFAULT_SPACE["width"][2] == 128
    est = QuantizedMLPClassifier()
    with pytest.raises(ValueError, match="not a parameter"):
        validate_space({"depth": (1, 2)}, est)
    with pytest.raises(ValueError, match="go together"):
        validate_space({"width": (2, 8)}, est)
    with pytest.raises(ValueError, match="malformed"):
        validate_space({"n_w_bits": (4, 2)}, est)


def test_output_w_bits_narrows_only_the_output_layer(data, tmp_path):
    """The pseudo-parameter output_w_bits gives the output layer narrower weights (a
    per-layer n_w_bits); never wider than the hidden layers', and checked up front."""
    est = QuantizedMLPClassifier(**TINY)

    def sampled(values):  # noqa: ANN001, ANN202 - test helper
        space = {k: [v] for k, v in values.items()}
        return sample_params(optuna.trial.FixedTrial(values), space, est)

    assert sampled({"n_w_bits": 4, "width": 8, "n_layers": 2, "output_w_bits": 2})[
        "n_w_bits"] == [4, 4, 2]
    assert sampled({"n_w_bits": 2, "output_w_bits": 3}) == {"n_w_bits": 2}  # not wider
    assert sampled({"output_w_bits": None}) == {}
    assert sampled({"output_w_bits": 2})["n_w_bits"] == [3, 2]  # the template's bits
    for bad in ([1], [2.5], (2, 3), ["2"]):
        with pytest.raises(ValueError, match="output_w_bits"):
            validate_space({"output_w_bits": bad}, est)
    Xtr, ytr, _, _ = data
    s = LatencySearch(est, param_space={"width": [6], "n_layers": [1], "output_w_bits": [2]},
                      max_accuracy_drop=1.0, n_trials=1, n_repeats=1, cost_model=None,
                      holdout_fraction=0.0, random_state=0, verbose=0,
                      cache_dir=tmp_path).fit(Xtr, ytr)
    assert s.best_params_["n_w_bits"] == [3, 2]
    model = s.best_estimator_
    layers = [m for m in model.module_.modules() if hasattr(m, "quant_weight")]
    bits = [int(m.quant_weight().bit_width) for m in layers]
    assert bits == [3, 2]


def _search(tmp_path, **kw):
    kw.setdefault("n_trials", 2)
    kw.setdefault("holdout_fraction", 0.0)  # tiny data: the check split is tested apart
    return LatencySearch(QuantizedMLPClassifier(**TINY), param_space=SPACE,
                         max_accuracy_drop=0.1, reference_score=0.9, n_repeats=1,
                         cost_model=None, random_state=0, verbose=0, **kw)


def test_search_results_front_and_refit(data, tmp_path):
    Xtr, ytr, Xv, yv = data
    s = _search(tmp_path, n_trials=3, refit=False).fit(Xtr, ytr)
    assert len(s.results_) == 3
    front = s.pareto_front_
    assert front and all(r["feasible"] for r in front)
    # no front point is dominated by any feasible trial
    for r in front:
        for o in s.results_:
            if o["feasible"]:
                assert not (o["cost"] < r["cost"] and o["score"] > r["score"])
    assert s.best_trial_["cost"] == min(r["cost"] for r in s.results_ if r["feasible"])
    assert s.best_estimator_.fhe_report_ is not None
    assert s.predict(Xv, fhe="simulate").shape == (len(Xv),)
    assert "Pareto" in s.summary()
    ax = s.plot_pareto()
    assert ax.get_xscale() == "log"
    # refit=False: the trial's own (cached, validated) model at its chosen point
    assert s.best_estimator_.fhe_report_["max_tlu_input_bits"] <= (
        s.best_compile_kwargs_["rounding_bits"] or 99)
    assert s.best_estimator_.module_.config["hidden_sizes"] == list(
        s.best_params_["hidden_layer_sizes"])
    assert s.refit_ is None
    # refit=True retrains on all data, compiled at the checked point once verified
    r = _search(tmp_path, n_trials=3, refit=True).fit(Xtr, ytr)
    assert r.best_estimator_.n_features_in_ == Xtr.shape[1]
    assert r.best_estimator_.fhe_circuit_ is not None
    info = r.refit_
    assert info["n_rows"] == len(Xtr)
    if not info["searched_again"]:  # the trial's point held for the retrained model
        assert info["simulated_score"] >= info["unrounded_score"] - info["allowed_loss"]
        assert info["allowed_loss"] >= r.max_accuracy_drop
        assert info["point"] == r.best_compile_kwargs_
        assert r.best_estimator_.fhe_report_["max_tlu_input_bits"] <= (
            r.best_compile_kwargs_["rounding_bits"] or 99)
        # and the cost reported is the delivered circuit's, not the trial model's
        from latentopt.search.inner import _latency

        delivered = _latency(r.best_estimator_, r.cost_model_)
        assert r.best_trial_["cost"] == pytest.approx(delivered) == info["latency"]
        assert r.best_trial_["pbs"] == r.best_estimator_.fhe_report_[
            "programmable_bootstrap_count"]
    # a retrained model differs from the trial's (trained on all rows, not a part)
    trial_model = r.trial_estimator(r.best_trial_["trial"])
    assert not np.array_equal(trial_model.predict_proba(Xtr),
                              r.best_estimator_.predict_proba(Xtr))


def test_refit_searches_again_when_the_point_fails_the_retrained_model(data, tmp_path):
    """A checked point that costs the retrained model more than the budget is not
    copied: rounding and p_error are searched again on the retrained model."""
    Xtr, ytr, _, _ = data
    s = _search(tmp_path, n_trials=2, refit=True).fit(Xtr, ytr)
    assert s.best_params_ is not None
    s.max_accuracy_drop = 0.02
    # a point no model survives: 1-bit lookups at a high error rate
    forced = {"rounding_bits": 1, "rounding_method": "approximate", "p_error": 0.2}
    s.best_compile_kwargs_ = dict(forced)
    est = s._best_estimator(s._objective, Xtr, ytr)
    info = s.refit_
    assert info["simulated_score"] < info["unrounded_score"] - 0.02
    assert info["searched_again"]
    if not info.get("kept_trial_model"):
        assert info["point"] != forced
        # what the search reports is the delivered model's point
        assert s.best_compile_kwargs_ == info["point"]
        assert {k: est.compile_options_[k] for k in forced} == info["point"]
        assert est.fhe_report_["max_tlu_input_bits"] <= (info["point"]["rounding_bits"]
                                                         or 99)


def test_search_resumes_without_redoing_trials(data, tmp_path):
    Xtr, ytr, _, _ = data
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = _search(tmp_path, n_trials=2, storage=storage, study_name="s", refit=False)
    first.fit(Xtr, ytr)
    numbers = {r["trial"] for r in first.results_}
    second = _search(tmp_path, n_trials=3, storage=storage, study_name="s", refit=False)
    second.fit(Xtr, ytr)
    assert len(second.results_) == 3
    assert numbers < {r["trial"] for r in second.results_}
    # the finished trials kept their values: nothing was recomputed
    old = {r["trial"]: (r["cost"], r["score"]) for r in first.results_}
    for r in second.results_:
        if r["trial"] in old:
            assert old[r["trial"]] == (r["cost"], r["score"])
    # trained models are cached next to the storage and reused for repeated configs
    assert list((tmp_path / "latentopt-models").glob("model-*.pkl"))
    third = _search(tmp_path, n_trials=3, storage=storage, study_name="s", refit=False)
    third.fit(Xtr, ytr)
    assert len(third.results_) == 3  # already complete: no new trial


def test_two_worker_processes_share_a_study(data, tmp_path):
    Xtr, ytr, _, _ = data
    storage = str(tmp_path / "study.journal")
    s = _search(tmp_path, n_trials=4, storage=storage, study_name="par", n_jobs=2,
                refit=False).fit(Xtr, ytr)
    trials = s.study_.trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4  # exact across workers
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["pid"] for t in done}) == 2
    assert len({tuple(sorted(t.params.items())) for t in done}) == 4  # no repeats

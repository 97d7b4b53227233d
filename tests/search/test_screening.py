"""Cheap search decisions: cost bounds, early rejection, short training, seeds, units.

Tiny and fast: synthetic cost models, tiny estimators, no keys.
"""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from latentopt import QuantizedMLPClassifier
from latentopt.search import DEFAULT_SPACE, LatencySearch, search_compile
from latentopt.search.cost import PRIOR, CostModel
from latentopt.search.fingerprint import machine_fingerprint
from latentopt.search.objective import _Objective
from latentopt.search.screening import (
    accumulator_floor,
    best_feasible_latency,
    lower_bound_seconds,
    n_lookups,
    promising,
    seed_configs,
    short_params,
)
from latentopt.search.selection import check_on_holdout, cv_folds
from latentopt.search.units import latency_label, resolve_cost_model

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=3, n_a_bits=3, n_input_bits=4, max_epochs=30,
            lr=1e-2, random_state=0, verbose=0)
# bits, p_error, N, k, n, level, key-switch ops per PBS, input LWE dimension
TABLE = [[3, 1e-2, 2048, 1, 815, 2, 2048 * 815 * 8, 2048],
         [6, 1e-2, 2048, 1, 854, 1, 2048 * 854 * 6, 2048],
         [6, 1e-5, 4096, 1, 899, 2, 4096 * 899 * 6, 4096],
         [8, 1e-2, 8192, 1, 950, 1, 8192 * 950 * 6, 8192]]


@pytest.fixture(scope="module")
def model() -> CostModel:
    """A cost model with the prior coefficients and a calibration table (no timing)."""
    return CostModel(PRIOR, 1.0, machine_fingerprint(), {"grid": "test", "pbs_table": TABLE})


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(240, 5)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X[:160], y[:160], X[160:], y[160:]


# ------------------------------------------------------------------ bounds
def test_lower_bound_grows_with_lookups_and_inputs(model):
    small = {"hidden_layer_sizes": (8,)}
    assert n_lookups(small) == 8
    assert n_lookups({"hidden_layer_sizes": (8, 8), "pruning_ratio": 0.5}) == 8
    bounds = [lower_bound_seconds(model, {"hidden_layer_sizes": (w,)}, 10)
              for w in (4, 16, 64, 256)]
    assert all(b > a > 0 for a, b in zip(bounds, bounds[1:]))
    assert lower_bound_seconds(model, small, 784) > lower_bound_seconds(model, small, 10)


def test_max_useful_bits_shrinks_with_the_cap(model):
    caps = [model.max_useful_bits(16, s) for s in (100.0, 1.0, 0.1, 1e-4)]
    assert caps[0] == 16 and caps[-1] == 1
    assert all(b <= a for a, b in zip(caps, caps[1:]))
    # per-PBS cost is monotone in the bits (what the cap relies on)
    assert model.pbs_seconds(9) > model.pbs_seconds(4) > 0


def test_best_feasible_latency_ignores_infeasible_and_pruned():
    study = optuna.create_study(directions=["minimize", "maximize"])
    for value, violation in ((0.5, 0.0), (0.1, 0.2), (0.3, -0.1)):
        study.add_trial(optuna.trial.create_trial(
            values=[value, 0.9], user_attrs={"constraint": [violation]}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    assert best_feasible_latency(study.trials) == 0.3
    assert best_feasible_latency([]) is None


def test_configuration_proven_slower_is_rejected_before_training(model, data, tmp_path):
    """Early rejection: no model is trained, the trial is pruned with a reason."""
    Xtr, ytr, Xv, yv = data
    search = LatencySearch(QuantizedMLPClassifier(**TINY), max_accuracy_drop=0.1,
                           param_space={"width": [64], "n_layers": [2]}, n_repeats=1)
    objective = _Objective(search, (Xtr, ytr, Xv, yv), 0.9, model, tmp_path)
    study = optuna.create_study(directions=["minimize", "maximize"])
    best = 1e-4  # seconds: a feasible point no 128-neuron circuit can approach
    study.add_trial(optuna.trial.create_trial(values=[best, 0.95],
                                              user_attrs={"constraint": [-0.05]}))
    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert "cost bound" in trial.user_attrs["rejected"]
    assert trial.user_attrs["lower_bound_seconds"] > best
    assert not list(tmp_path.glob("model-*.pkl")), "nothing may be trained"


def test_accumulator_floor_matches_the_trained_model(data):
    """The floor from bit-widths alone is what the pruner finds on a trained model."""
    from latentopt.prune.accumulator import min_accumulator_bits

    Xtr, ytr, _, _ = data
    for params in ({"n_w_bits": 3, "n_a_bits": 3, "n_input_bits": 6},
                   {"n_w_bits": 4, "n_a_bits": 2, "n_input_bits": 3, "activation": "tanh"}):
        est = QuantizedMLPClassifier(**dict(TINY, **params)).fit(Xtr, ytr)
        floor = accumulator_floor(QuantizedMLPClassifier(**TINY),
                                  dict(params, n_accum_bits=4), Xtr.shape[1])
        assert floor == max(min_accumulator_bits(est.module_))
        # non-negative training data: an unsigned input quantizer, twice the magnitude
        positive = Xtr - Xtr.min(axis=0)
        est = QuantizedMLPClassifier(**dict(TINY, **params)).fit(positive, ytr)
        assert est.module_.config["input_signed"] is False
        floor = accumulator_floor(QuantizedMLPClassifier(**TINY), dict(params, n_accum_bits=4),
                                  Xtr.shape[1], input_signed=False)
        assert floor == max(min_accumulator_bits(est.module_))
    assert accumulator_floor(QuantizedMLPClassifier(**TINY), {"n_accum_bits": None}, 5) is None


def test_impossible_accumulator_budget_is_rejected_before_training(data, tmp_path):
    """n_accum_bits below one product: pruned at once with the reason, nothing trained."""
    Xtr, ytr, Xv, yv = data
    search = LatencySearch(QuantizedMLPClassifier(**dict(TINY, n_input_bits=6)),
                           max_accuracy_drop=0.1, param_space={"n_accum_bits": [6]},
                           n_repeats=1)
    objective = _Objective(search, (Xtr, ytr, Xv, yv), 0.9, None, tmp_path)
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert "n_accum_bits=6 is impossible" in trial.user_attrs["rejected"]
    assert trial.user_attrs["accumulator_floor"] == 8  # 3 * 32 needs 8 signed bits
    assert not list(tmp_path.glob("model-*.pkl")), "nothing may be trained"
    # non-negative inputs are quantized unsigned (up to 63): the floor knows, so an
    # 8-bit budget is rejected before training instead of failing inside it
    search.param_space = {"n_accum_bits": [8]}
    positive = (Xtr - Xtr.min(axis=0), ytr, Xv - Xtr.min(axis=0), yv)
    objective = _Objective(search, positive, 0.9, None, tmp_path)
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["accumulator_floor"] == 9  # 3 * 63 needs 9 signed bits
    assert not list(tmp_path.glob("model-*.pkl")), "nothing may be trained"


# ---------------------------------------------------------- multi-fidelity
def test_short_rung_params_and_median_rule():
    template = QuantizedMLPClassifier(max_epochs=200)
    assert short_params(template, {"lr": 0.01}) == {"lr": 0.01, "max_epochs": 25}
    assert short_params(template, {"max_epochs": 10})["max_epochs"] == 5
    assert promising(0.1, [0.9, 0.8], threshold=0.95)  # too few earlier trials
    assert not promising(0.5, [0.9, 0.8, 0.7, 0.6], threshold=0.95)
    assert not promising(0.75, [0.9, 0.8, 0.7, 0.6], threshold=0.95)  # median: not enough
    assert promising(0.81, [0.9, 0.8, 0.7, 0.6], threshold=0.95)  # top third
    assert promising(0.96, [0.99, 0.99, 0.99], threshold=0.95)  # meets the budget already


def test_trials_train_short_first(data, tmp_path):
    Xtr, ytr, _, _ = data
    s = LatencySearch(QuantizedMLPClassifier(**TINY), param_space={"n_w_bits": [3]},
                      max_accuracy_drop=0.1, reference_score=0.9, n_repeats=1, n_trials=1,
                      cost_model=None, holdout_fraction=0.0, random_state=0,
                      verbose=0, cache_dir=tmp_path).fit(Xtr, ytr)
    trial = s.study_.trials[0]
    assert 0.0 <= trial.user_attrs["short_score"] <= 1.0
    epochs = sorted(m.max_epochs for m in map(_load, tmp_path.glob("model-*.pkl")))
    assert epochs == [5, 30]  # the short rung, then the full training


def _load(path):  # type: ignore[no-untyped-def]
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)


# ------------------------------------------------------------------ seeding
def test_seed_configs_fit_the_space():
    seeds = seed_configs(DEFAULT_SPACE, QuantizedMLPClassifier())
    assert seeds[0]["width"] == 16 and seeds[0]["n_layers"] == 1
    assert seeds[0]["n_w_bits"] == 3 and seeds[0]["n_a_bits"] == 3
    assert seeds[0]["n_accum_bits"] is None and seeds[0]["pruning_ratio"] == 0.0
    assert all(set(s) == set(DEFAULT_SPACE) for s in seeds)
    # one seed is as wide as the float reference (scikit-learn's 100 hidden units)
    assert max(s["width"] for s in seeds) >= 100 and DEFAULT_SPACE["width"][2] >= 100
    narrow = {"n_w_bits": (2, 2), "width": ("log", 4, 8), "n_layers": (1, 1)}
    seeds = seed_configs(narrow, QuantizedMLPClassifier())
    assert seeds == [{"n_w_bits": 2, "width": 8, "n_layers": 1}]  # clipped, deduplicated


def test_search_starts_with_the_seeds(data):
    Xtr, ytr, _, _ = data
    space = {"n_w_bits": (2, 4), "width": ("log", 4, 32), "n_layers": (1, 2)}
    s = LatencySearch(QuantizedMLPClassifier(**TINY), param_space=space,
                      max_accuracy_drop=0.1, reference_score=0.9, n_repeats=1, n_trials=1,
                      cost_model=None, holdout_fraction=0.0, random_state=0,
                      verbose=0).fit(Xtr, ytr)
    first = s.study_.trials[0]
    assert first.user_attrs["seeded"] is True
    assert first.params == {"n_w_bits": 3, "width": 16, "n_layers": 1}


# ------------------------------------------------------- inner search bounds
def test_inner_search_never_rounds_wider_than_its_cap(data, model):
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**dict(TINY, n_input_bits=6, n_w_bits=4)).fit(Xtr, ytr)
    assert est.circuit_.report().max_tlu_input_bits > 3
    res = search_compile(est, Xv, yv, max_accuracy_drop=1.0, n_repeats=1, max_rounding_bits=3)
    assert res.max_bits == 3
    assert all(c.rounding_bits is None or c.rounding_bits <= 3 for c in res.candidates)
    # under a tiny latency cap, the cost model allows 1 bit only and nothing is simulated
    capped = search_compile(est, Xv, yv, max_accuracy_drop=1.0, n_repeats=1,
                            cost_model=model, latency_cap=1e-6)
    assert capped.max_bits == 1 and capped.latency_unit == "seconds"
    assert capped.best is None and all(c.dominated or c.error for c in capped.candidates)
    assert all(np.isnan(c.score) for c in capped.candidates)
    # the cap, not the budget, limited the roundings: the result says so (the study then
    # marks the trial "capped", which selection may reopen and the summary calls "slower")
    assert capped.capped_bits and not res.capped_bits


def test_summary_calls_capped_infeasible_trials_slower():
    from latentopt.search.results import summary_table

    rows = [{"trial": 0, "cost": 0.1, "score": 0.95, "feasible": True},
            {"trial": 1, "cost": 0.05, "score": 0.40, "feasible": False, "capped": True},
            {"trial": 2, "cost": 0.2, "score": 0.50, "feasible": False, "capped": False}]
    lines = summary_table(rows, rows[:1], []).splitlines()
    verdicts = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert verdicts == {"0": "True*", "1": "slower", "2": "False"}


# ------------------------------------------------------------ honest check
class _Fixed:
    def __init__(self, score: float) -> None:
        self.value = score


def test_check_on_holdout_takes_the_fastest_that_holds():
    rows = [{"trial": 0, "cost": 0.1, "score": 0.95}, {"trial": 1, "cost": 0.2, "score": 0.93},
            {"trial": 2, "cost": 0.3, "score": 0.97}]
    on_check = {0: [0.80, 0.80], 1: [0.91, 0.93], 2: [0.96, 0.96]}
    chosen, checked = check_on_holdout(rows, lambda r: on_check[r["trial"]], threshold=0.9)
    assert chosen is not None and chosen["trial"] == 1
    assert chosen["holdout_score"] == pytest.approx(0.92) and chosen["holdout_min"] == 0.91
    assert [r["trial"] for r in checked] == [0, 1]  # fastest first, stops at the first pass
    assert checked[0]["holdout_pass"] is False
    # every repeat must pass (TLU errors are random)
    none, _ = check_on_holdout(rows[1:2], lambda r: [0.95, 0.89], threshold=0.9)
    assert none is None
    none, checked = check_on_holdout(rows, lambda r: [0.5], 0.9, max_checks=2)
    assert none is None and len(checked) == 2
    # the last check goes to the most accurate row: the fastest sit on the budget's edge
    assert [r["trial"] for r in checked] == [0, 2]
    edge = [{"trial": i, "cost": 0.1 * (i + 1), "score": 0.905} for i in range(5)]
    safe = {"trial": 5, "cost": 0.9, "score": 0.97}
    chosen, checked = check_on_holdout(edge + [safe], lambda r: [0.96 if r["trial"] == 5
                                                                 else 0.88], 0.9, max_checks=3)
    assert chosen is not None and chosen["trial"] == 5
    assert [r["trial"] for r in checked] == [0, 1, 5]


def test_cv_folds_cover_every_row_once():
    y = np.array([0] * 10 + [1] * 5)
    folds = cv_folds(y, 3, classification=True, seed=0)
    assert folds is not None and len(folds) == 3
    held = np.concatenate([te for _, te in folds])
    assert sorted(held.tolist()) == list(range(15))
    assert all(set(tr).isdisjoint(te) for tr, te in folds)
    assert all(np.sum(y[te] == 1) >= 1 for _, te in folds)  # stratified
    assert cv_folds(np.array([0] * 10 + [1] * 2), 3, True, 0) is None  # a class too small
    assert len(cv_folds(np.linspace(0, 1, 12), 4, classification=False, seed=0) or []) == 4


def test_search_checks_its_choice_on_unseen_rows(data):
    Xtr, ytr, _, _ = data
    s = LatencySearch(QuantizedMLPClassifier(**TINY), param_space={"n_w_bits": [3]},
                      max_accuracy_drop=0.3, n_repeats=1, n_trials=1, cost_model=None,
                      holdout_fraction=0.25, check_folds=1, random_state=0,
                      verbose=0).fit(Xtr, ytr)
    check = s.holdout_
    assert check["method"] == "check split"
    assert check["n_samples"] == 40  # 25% of 160, never used by training or tuning
    # the float reference is scored on the same rows
    assert check["threshold"] == pytest.approx(check["reference_score"] - 0.3)
    assert check["checked"] and "holdout_score" in check["checked"][0]
    if s.best_trial_ is not None:  # the reported score is the honest one
        assert s.best_score_ == s.best_trial_["holdout_score"] >= check["threshold"]


def test_search_cross_validates_its_choice_without_the_validation_rows(data, tmp_path):
    """check_folds=3: the configuration is refitted on 3 folds of the training and check
    rows pooled (144 + 48 of 240; the 48 validation rows never count) and simulated on
    each fold; the float reference is refitted on the same folds."""
    from latentopt.search.selection import _cv_reference

    Xtr, ytr, Xv, yv = data
    X, y = np.concatenate([Xtr, Xv]), np.concatenate([ytr, yv])
    s = LatencySearch(QuantizedMLPClassifier(**TINY), param_space={"n_w_bits": [3]},
                      max_accuracy_drop=0.3, n_repeats=1, n_trials=1, cost_model=None,
                      holdout_fraction=0.2, validation_fraction=0.25, check_folds=3,
                      random_state=0, verbose=0, cache_dir=tmp_path).fit(X, y)
    check = s.holdout_
    assert check["method"] == "cross-validation" and check["folds"] == 3
    assert check["n_samples"] == 192  # 144 training + 48 check rows, not the 48 validation
    assert check["threshold"] == pytest.approx(check["reference_score"] - 0.3)
    assert 0.0 < check["reference_score"] <= 1.0
    assert check["checked"], "the feasible trial was cross-validated"
    # one model per fold was trained (plus the trial's short and full trainings)
    assert len(list(tmp_path.glob("model-*.pkl"))) == 2 + 3
    if s.best_trial_ is not None:
        assert s.best_score_ == s.best_trial_["holdout_score"] >= check["threshold"]
    # the reference is pooled over folds like the model: same folds, refitted
    folds = [(np.arange(0, 80), np.arange(80, 160)), (np.arange(80, 160), np.arange(0, 80))]
    ref = s.reference_estimator_
    expected = np.mean([clone_score(ref, X[:160], y[:160], tr, te) for tr, te in folds])
    assert _cv_reference(ref, X[:160], y[:160], folds) == pytest.approx(expected)


def _search_with_check(monkeypatch, threshold, **kw):
    """A search whose check (the real one: trial models simulated on the check split)
    demands ``threshold``."""
    import dataclasses

    import latentopt.search.latency_search as ls

    real = ls.make_check

    def shifted(*args):  # noqa: ANN002, ANN202 - test helper
        check = real(*args)
        return dataclasses.replace(check, threshold=threshold)

    monkeypatch.setattr(ls, "make_check", shifted)
    return LatencySearch(QuantizedMLPClassifier(**TINY), param_space={"n_w_bits": [2, 3]},
                         max_accuracy_drop=0.3, n_repeats=1, cost_model=None,
                         holdout_fraction=0.25, check_folds=1, random_state=0,
                         verbose=0, **kw)


def test_the_check_runs_during_the_study_and_refutes_lucky_trials(data, monkeypatch):
    """A trial that would become the fastest validation-feasible one is checked at
    once; refuted, it is infeasible for the sampler and sets no latency cap."""
    from latentopt.search.latency_search import BudgetNotMetWarning

    Xtr, ytr, _, _ = data
    s = _search_with_check(monkeypatch, threshold=1.01, n_trials=2)
    with pytest.warns(BudgetNotMetWarning, match="checked"):
        s.fit(Xtr, ytr)
    complete = [t for t in s.study_.trials if t.state.name == "COMPLETE"]
    refuted = [t for t in complete if t.user_attrs.get("refuted")]
    assert refuted, "the validation-feasible trials were refuted by the check"
    for t in refuted:
        assert t.user_attrs["constraint"][0] > 0  # infeasible for NSGA-II
        assert max(t.user_attrs["check_scores"]) < 1.01
    assert best_feasible_latency(complete) is None  # no cap from a refuted trial
    assert not s.budget_met_ and s.best_estimator_ is None
    during = [c for c in s.holdout_["checked"] if c.get("during_study")]
    assert {c["trial"] for c in during} == {t.number for t in refuted}
    assert s.outcome_.message.startswith("Budget NOT met on unseen rows")
    closest = max(s.holdout_["checked"], key=lambda c: c["holdout_min"])
    assert f"Closest: trial {closest['trial']} " in s.outcome_.message
    text = s.summary()
    assert "refuted" in text and "check_needed" in text.splitlines()[0]
    for t in refuted:  # each refuted row shows the check score it got and what it needed
        row = next(r for r in s.results_ if r["trial"] == t.number)
        assert row["holdout_min"] == min(t.user_attrs["check_scores"])
        assert row["holdout_threshold"] == t.user_attrs["check_threshold"] > row["holdout_min"]
    legend = [t.get_text() for t in s.plot_pareto().get_legend().get_texts()]
    assert "refuted by the check" in legend


def test_a_trial_confirmed_during_the_study_is_not_checked_again(data, monkeypatch,
                                                                  tmp_path):
    Xtr, ytr, _, _ = data
    s = _search_with_check(monkeypatch, threshold=-1.0, n_trials=2, cache_dir=tmp_path)
    s.fit(Xtr, ytr)
    assert s.budget_met_
    confirmed = s.study_.trials[s.best_trial_["trial"]]
    assert "check_scores" in confirmed.user_attrs and not confirmed.user_attrs.get("refuted")
    # the chosen score is the one recorded during the study
    assert s.best_score_ == pytest.approx(np.mean(confirmed.user_attrs["check_scores"]))


class _CheckByPError:
    """A check that refutes every point at ``p_error >= limit``, and the first
    ``refute_first`` points it is shown whatever they are, and passes the rest (its
    threshold grows by ``step`` with each configuration checked)."""

    threshold = 0.5

    def __init__(self, limit: float, step: float = 0.0, score: float = 1.0,
                 refute_first: int = 0) -> None:
        self.limit, self.step, self.score, self.calls = limit, step, score, []
        self.refute_first = refute_first

    def threshold_for(self, n: int) -> float:
        return self.threshold + self.step * (n - 1)

    def scores(self, objective, params, point):  # noqa: ANN001, ANN201 - test double
        self.calls.append(point)
        refuted = len(self.calls) <= self.refute_first or point["p_error"] >= self.limit
        return [0.0 if refuted else self.score]


def test_a_refuted_edge_point_falls_back_to_a_safer_point_of_the_same_trial(data, tmp_path):
    """The inner search drives a trial to the budget's edge; the check then tries the
    trial's next feasible (slower, safer) points before refuting the configuration."""
    Xtr, ytr, Xv, yv = data
    search = LatencySearch(QuantizedMLPClassifier(**TINY), max_accuracy_drop=0.9,
                           param_space={"n_w_bits": [3]}, n_repeats=1, cost_model=None)
    study = optuna.create_study(directions=["minimize", "maximize"])
    # the trial's fastest feasible point (whatever its p_error) is refuted
    check = _CheckByPError(limit=1.0, refute_first=1)
    objective = _Objective(search, (Xtr, ytr, Xv, yv), 0.9, None, tmp_path, check=check)
    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert not trial.user_attrs.get("refuted") and trial.user_attrs["constraint"][0] <= 0
    kept = trial.user_attrs["compile"]
    assert len(check.calls) == 2 and check.calls[-1] == kept != check.calls[0]
    assert [{k: v for k, v in p.items() if k not in ("check_scores", "latency")}
            for p in trial.user_attrs["check_points"]] == check.calls
    assert [p["check_scores"] for p in trial.user_attrs["check_points"]] == [[0.0], [1.0]]
    assert trial.user_attrs["check_scores"] == [1.0]
    # the point kept is the trial's next one, no faster than the refuted edge point, and
    # the trial reports its latency
    latencies = [p["latency"] for p in trial.user_attrs["check_points"]]
    assert latencies == sorted(latencies) and trial.values[0] == pytest.approx(latencies[-1])
    # nothing holds: refuted after at most CHECK_POINTS points, the edge point kept
    from latentopt.search.objective import CHECK_POINTS

    check = _CheckByPError(limit=0.0)
    objective = _Objective(search, (Xtr, ytr, Xv, yv), 0.9, None, tmp_path, check=check)
    study = optuna.create_study(directions=["minimize", "maximize"])  # no latency cap
    study.optimize(objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.user_attrs["refuted"] and trial.user_attrs["constraint"][0] > 0
    assert 1 <= len(check.calls) <= CHECK_POINTS
    assert trial.user_attrs["compile"] == check.calls[0]


def test_each_configuration_checked_must_beat_a_higher_threshold(data, tmp_path):
    """The winner's curse: the n-th configuration checked in a study is one more chance
    to pass by luck, so its threshold carries the margin for n checks.  A score that
    passes the first configuration's threshold refutes the second's."""
    Xtr, ytr, Xv, yv = data
    search = LatencySearch(QuantizedMLPClassifier(**TINY), max_accuracy_drop=0.9,
                           param_space={"n_w_bits": [3]}, n_repeats=1, cost_model=None)
    study = optuna.create_study(directions=["minimize", "maximize"])
    # every point scores 0.55: above 0.5 (1st configuration), below 0.6 (2nd)
    check = _CheckByPError(limit=1.0, step=0.1, score=0.55)
    objective = _Objective(search, (Xtr, ytr, Xv, yv), 0.9, None, tmp_path, check=check)
    study.optimize(objective, n_trials=1)
    first = study.trials[0]
    assert first.user_attrs["check_index"] == 1
    assert first.user_attrs["check_threshold"] == pytest.approx(0.5)
    assert not first.user_attrs.get("refuted")
    first_calls = len(check.calls)
    # a study where one configuration was checked (and refuted, so it sets no latency
    # cap): the next trial is the second configuration checked
    study2 = optuna.create_study(directions=["minimize", "maximize"])
    study2.add_trial(optuna.trial.create_trial(
        values=[1.0, 0.0], user_attrs={"check_index": 1, "check_threshold": 0.5,
                                       "check_scores": [0.1], "refuted": True}))
    study2.optimize(objective, n_trials=1)
    second = study2.trials[-1]
    assert second.user_attrs["check_index"] == 2
    assert second.user_attrs["check_threshold"] == pytest.approx(0.6)
    assert second.user_attrs["refuted"] and second.user_attrs["constraint"][0] > 0
    assert len(check.calls) > first_calls


def test_the_margin_grows_with_the_configurations_checked():
    from latentopt.search.objective import checks_done
    from latentopt.search.selection import Check

    X, y = np.zeros((630, 2)), np.zeros(630)
    check = Check(X, y, None, reference_score=0.887, threshold=0.877, n_repeats=1)
    assert check.margin(1) == 0.0 and check.threshold_for(1) == 0.877
    se = np.sqrt(0.877 * 0.123 / 630)
    # Bonferroni: the n-th configuration at the threshold passes with probability 1/(2n)
    assert check.margin(2) == pytest.approx(se * 0.6745, rel=1e-3)
    assert check.margin(13) == pytest.approx(se * 1.7688, rel=1e-3)
    # the measured case: the 13th configuration passed by 0.3 point and was 4.1 below
    # float on test; its margin is 2.3 points
    assert 0.02 < check.margin(13) < 0.025
    margins = [check.margin(n) for n in range(1, 30)]
    assert margins == sorted(margins)
    # more rows, smaller margin; R^2 (regression) has no binomial error: no margin
    big = Check(np.zeros((6300, 2)), np.zeros(6300), None, 0.887, 0.877, 1)
    assert big.margin(13) == pytest.approx(check.margin(13) / np.sqrt(10))
    reg = Check(X, y, None, 0.8, 0.79, 1, classification=False)
    assert reg.margin(13) == 0.0
    study = optuna.create_study(directions=["minimize", "maximize"])
    for attrs in ({"check_index": 1}, {}, {"check_index": 2}):
        study.add_trial(optuna.trial.create_trial(values=[1.0, 0.5], user_attrs=attrs))
    assert checks_done(study.trials) == 2
    assert checks_done(study.trials, exclude=2) == 1


def test_check_on_holdout_takes_a_threshold_per_row():
    rows = [{"trial": i, "cost": 0.1 * (i + 1), "score": 0.95} for i in range(3)]
    seen = []

    def threshold(row):  # noqa: ANN001, ANN202 - test helper
        seen.append(row["trial"])
        return 0.90 + 0.02 * len(seen)

    # thresholds 0.92, 0.94, 0.96 in the order checked: 0.93 would have passed the
    # first, not the second
    on_check = {0: [0.91], 1: [0.93], 2: [0.97]}
    chosen, checked = check_on_holdout(rows, lambda r: on_check[r["trial"]], threshold)
    assert chosen is not None and chosen["trial"] == 2
    assert [r["holdout_threshold"] for r in checked] == pytest.approx([0.92, 0.94, 0.96])
    assert seen == [0, 1, 2]


def clone_score(ref, X, y, tr, te):  # noqa: ANN001, ANN201 - test helper
    from sklearn.base import clone

    return clone(ref).fit(X[tr], y[tr]).score(X[te], y[te])


# -------------------------------------------------------------------- units
def test_complexity_is_never_labelled_latency(data, capsys):
    Xtr, ytr, _, _ = data
    s = LatencySearch(QuantizedMLPClassifier(**TINY), param_space={"n_w_bits": [3]},
                      max_accuracy_drop=0.3, reference_score=0.9, n_repeats=1, n_trials=1,
                      cost_model="complexity", holdout_fraction=0.0, random_state=0,
                      verbose=1).fit(Xtr, ytr)
    assert s.latency_unit_ == "complexity"
    out = capsys.readouterr()
    assert "complexity (unitless), not seconds" in out.out
    assert "latency" not in out.err.lower() and "complexity" in out.err  # progress bar
    row = s.results_[0]
    assert "complexity" in row and "seconds" not in row and "latency" not in row
    header = s.summary().splitlines()[0]
    assert "complexity" in header and "latency" not in header and "seconds" not in header
    assert "not seconds" in s.plot_pareto().get_xlabel()
    assert latency_label("seconds") == "predicted seconds per sample"


def test_search_ranks_by_seconds_with_a_cost_model(data, model):
    Xtr, ytr, _, _ = data
    s = LatencySearch(QuantizedMLPClassifier(**TINY), param_space={"n_w_bits": [3]},
                      max_accuracy_drop=0.3, reference_score=0.9, n_repeats=1, n_trials=1,
                      cost_model=model, holdout_fraction=0.0, random_state=0,
                      verbose=0).fit(Xtr, ytr)
    assert s.latency_unit_ == "seconds"
    row = s.results_[0]
    assert 1e-4 < row["seconds"] < 100  # seconds per sample, not a complexity (~1e8)
    assert "s/sample" in s.summary().splitlines()[0]  # seconds per sample


def test_auto_uses_the_cached_calibration(model, tmp_path, monkeypatch):
    from latentopt.search import cost

    monkeypatch.setenv("LATENTOPT_CACHE_DIR", str(tmp_path))
    model.save(tmp_path / "cost_model_quick.json")

    def no_timing(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a cached calibration must not be measured again")

    monkeypatch.setattr(cost, "measure_point", no_timing)
    loaded = resolve_cost_model("auto", verbose=0)
    assert loaded is not None and loaded.coefficients == model.coefficients
    assert resolve_cost_model("complexity", verbose=0) is None
    with pytest.raises(ValueError, match="cost_model"):
        resolve_cost_model("fast", verbose=0)


def test_auto_calibrates_once_when_nothing_is_cached(tmp_path, monkeypatch):
    from search.test_cost import synthetic_records  # type: ignore[import-not-found]

    from latentopt.search import cost

    monkeypatch.setenv("LATENTOPT_CACHE_DIR", str(tmp_path))
    calls: list = []
    records = synthetic_records()

    def fake(bits, p_error, width, n_features=8, **kw):  # type: ignore[no-untyped-def]
        calls.append(bits)
        return [r for r in records if r["bits"] == bits] or records[:3]

    monkeypatch.setattr(cost, "measure_point", fake)
    first = resolve_cost_model("auto", verbose=0)
    assert first is not None and calls and (tmp_path / "cost_model_quick.json").exists()
    calls.clear()
    again = resolve_cost_model("auto", verbose=0)
    assert not calls and again.coefficients == first.coefficients


def test_hopeless_model_is_not_compiled(data):
    """A model whose unrounded circuit misses the budget is compiled once, never simulated."""
    Xtr, ytr, Xv, yv = data
    est = QuantizedMLPClassifier(**TINY).fit(Xtr, ytr)
    res = search_compile(est, Xv, yv, reference_score=1.5, max_accuracy_drop=0.01)
    assert res.best is None and len(res.candidates) == 1  # compiled once, for its latency
    only = res.candidates[0]
    assert only.score == res.unrounded_score and 0.0 <= only.score <= 1.0
    assert only.pbs > 0 and np.isfinite(only.latency) and not only.feasible


def test_reopen_capped_searches_accurate_capped_trials_again(data, tmp_path):
    """When every checked trial fails, capped trials (points skipped as slower than a
    refuted one) get a full inner search: accurate ones first, inaccurate ones never."""
    from latentopt.search.selection import reopen_capped

    Xtr, ytr, Xv, yv = data
    search = LatencySearch(QuantizedMLPClassifier(**TINY), max_accuracy_drop=0.2,
                           n_repeats=1, cost_model=None)
    objective = _Objective(search, (Xtr, ytr, Xv, yv), 0.9, None, tmp_path)
    study = optuna.create_study(directions=["minimize", "maximize"])
    attrs = [({"n_w_bits": 3}, True, 0.95),   # capped and accurate: reopened
             ({"n_w_bits": 4}, True, 0.40),   # capped but hopeless: left alone
             ({"n_w_bits": 2}, False, 0.95)]  # not capped: its record is complete
    for params, capped, unrounded in attrs:
        study.add_trial(optuna.trial.create_trial(
            values=[1e-3, 0.5], user_attrs={"params": params, "capped": capped,
                                            "unrounded_score": unrounded}))
    search.study_, search.reference_score_, search.threshold_ = study, 0.9, 0.7
    rows = reopen_capped(search, objective, lambda r: {"n_w_bits": r["n_w_bits"]}, set())
    assert [r["trial"] for r in rows] == [0]
    row = rows[0]
    assert row["reopened"] and row["feasible"] and row["score"] >= 0.7
    assert {"rounding_bits", "rounding_method", "p_error"} <= set(row)
    assert reopen_capped(search, objective, lambda r: r, {0}) == []  # already checked

"""What a search reports: an unmet budget as an answer, the summary table, the plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_search import TINY  # noqa: E402

from latentopt import QuantizedMLPClassifier  # noqa: E402
from latentopt.search import LatencySearch  # noqa: E402
from latentopt.search.latency_search import BudgetNotMetWarning  # noqa: E402

SPACE = {"n_w_bits": [2, 3], "pruning_ratio": [0.0, 0.25], "width": ("log", 3, 8),
         "n_layers": (1, 1)}


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(160, 5)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


def _search(**kw):
    kw = {"max_accuracy_drop": 0.3, "reference_score": 0.9, "n_trials": 2, **kw}
    return LatencySearch(QuantizedMLPClassifier(**TINY), param_space=SPACE, n_repeats=1,
                         cost_model=None, random_state=0, verbose=0, **kw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")  # trained models shared by these searches


@pytest.fixture(scope="module")
def fitted(data, cache):
    return _search(cache_dir=cache).fit(*data)


def test_an_unmet_budget_is_an_answer(data, cache):
    X, y = data
    y = np.random.RandomState(1).permutation(y)  # labels no model can learn: never 1.0
    with pytest.warns(BudgetNotMetWarning, match="Budget NOT met"):
        s = _search(reference_score=1.0, max_accuracy_drop=0.0, n_trials=2,
                    cache_dir=cache).fit(X, y)
    assert s.best_estimator_ is None and s.budget_met_ is False  # no AttributeError
    assert s.best_params_ is None and s.pareto_front_ == []
    out = s.outcome_
    top = max(s.results_, key=lambda r: (r["score"], -r["cost"]))  # ties: the faster
    assert not out.budget_met and out.threshold == pytest.approx(1.0)
    assert out.best_score == pytest.approx(top["score"])
    assert out.best_score_trial == top["trial"]
    assert out.best_score_latency == pytest.approx(top["cost"])
    msg = out.message
    assert f"{top['score']:.4f}" in msg
    assert f"complexity {top['cost']:.4g} (no cost model: not seconds)" in msg
    # what to change, with the drop that would have accepted the best trial
    assert f"max_accuracy_drop >= {1.0 - top['score']:.3g}" in msg
    assert "n_trials above 2" in msg and "widen the search space" in msg
    assert msg in s.summary()
    with pytest.raises(RuntimeError, match="Budget NOT met"):
        s.predict(X)
    with pytest.raises(RuntimeError, match="Budget NOT met"):
        s.score(X, y)


def test_a_budget_met_only_on_validation_says_so():
    """Trials that pass on validation but not on the check split: the message says
    exactly that (not "none reached the budget") and what to change."""
    from latentopt.search.results import make_outcome

    rows = [{"trial": 0, "score": 0.85, "cost": 3.7, "feasible": True},
            {"trial": 1, "score": 0.80, "cost": 0.1, "feasible": False},
            # validation-feasible, refuted by the check during the study
            {"trial": 2, "score": 0.86, "cost": 0.2, "feasible": False, "refuted": True}]
    out = make_outcome(rows, [], None, reference_score=0.86, threshold=0.84,
                       max_accuracy_drop=0.02, n_trials=30,
                       held_out={"n_checked": 2, "n_samples": 225, "threshold": 0.8644,
                                 "reference_score": 0.8844})
    assert not out.budget_met and out.best_score == pytest.approx(0.86)
    first = out.message.splitlines()[0]
    assert first.startswith("Budget NOT met on unseen rows: 2 of the 3 evaluated trials")
    assert ("none of the 2 checked (each new fastest during the study, then the fastest "
            "and the most accurate) held on 225 held-out rows") in first
    assert "0.8644" in first and "0.8844" in first and "overfit" in first
    assert "holdout_fraction" in out.message and "n_trials above 30" in out.message
    assert "up to" not in first  # no margin named when every threshold was the plain one
    out = make_outcome(rows, [], None, reference_score=0.86, threshold=0.84,
                       max_accuracy_drop=0.02, n_trials=30,
                       held_out={"n_checked": 2, "n_samples": 225, "threshold": 0.8644,
                                 "max_threshold": 0.8811, "reference_score": 0.8844})
    assert "up to 0.8811 for the later ones" in out.message.splitlines()[0]
    assert "Closest" not in out.message  # no checked row given: no closest
    # the checked row with the best worst repeat is named, with the drop it would need
    closest = {"trial": 2, "cost": 0.2, "holdout_min": 0.8544}
    out = make_outcome(rows, [], None, reference_score=0.86, threshold=0.84,
                       max_accuracy_drop=0.02, n_trials=30,
                       held_out={"n_checked": 2, "n_samples": 225, "threshold": 0.8644,
                                 "reference_score": 0.8844, "closest": closest})
    lines = out.message.splitlines()
    assert lines[1] == ("Closest: trial 2 (0.2 s per sample (predicted)), worst check score "
                        "0.8544, 0.0300 below the float reference there.")
    assert "max_accuracy_drop >= 0.03 would have accepted trial 2" in lines[2]


def test_a_row_refuted_at_the_final_selection_is_not_shown_feasible():
    """Validation-feasible (feasible True) but failed the final check (refuted): the
    summary says refuted and the plot does not draw it as a feasible trial."""
    from latentopt.search.results import pareto_front, plot_front, summary_table

    rows = [{"trial": 0, "score": 0.9, "cost": 0.1, "feasible": True, "refuted": True},
            {"trial": 1, "score": 0.9, "cost": 0.2, "feasible": True}]
    # the refuted row dominated trial 1 and was the whole front
    assert [r["trial"] for r in pareto_front(rows)] == [1]
    lines = summary_table(rows, rows[1:], []).splitlines()
    assert lines[1].split()[-1] == "refuted" and lines[2].split()[-1] == "True*"
    ax = plot_front(rows, rows[1:], 0.85, "s")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "refuted by the check" in labels
    feasible = next(c for c in ax.collections if c.get_label() == "feasible trials")
    assert len(feasible.get_offsets()) == 1


def test_the_summary_shows_each_checked_rows_score_and_what_it_needed():
    """Why a row was refuted: its worst check score and the threshold it had to reach
    (the margin for its turn included) are columns; unchecked rows show '-'."""
    from latentopt.search.results import summary_table

    rows = [{"trial": 0, "score": 0.9, "cost": 0.1, "feasible": True, "refuted": True,
             "holdout_score": 0.96, "holdout_min": 0.955, "holdout_threshold": 0.9612},
            {"trial": 1, "score": 0.9, "cost": 0.2, "feasible": True,
             "holdout_score": 0.97, "holdout_min": 0.968, "holdout_threshold": 0.9650},
            {"trial": 2, "score": 0.9, "cost": 0.3, "feasible": True}]
    lines = summary_table(rows, rows[1:2], []).splitlines()
    header = lines[0].split()
    assert header[-3:] == ["check_score", "check_needed", "feasible"]
    assert "holdout_score" not in header
    assert lines[1].split()[-3:] == ["0.955", "0.9612", "refuted"]
    assert lines[2].split()[-3:] == ["0.968", "0.965", "True*"]
    assert lines[3].split()[-3:] == ["-", "-", "True"]
    # no row checked: no check columns
    plain = [{k: v for k, v in r.items() if not k.startswith("holdout")} for r in rows]
    assert "check_score" not in summary_table(plain, [], []).splitlines()[0]


def test_a_met_budget_says_so(fitted, data):
    assert fitted.budget_met_ and fitted.outcome_.budget_met
    assert fitted.best_estimator_ is not None
    assert fitted.outcome_.message.startswith("Budget met")
    assert f"trial {fitted.best_trial_['trial']}" in fitted.outcome_.message


def test_summary_shows_whole_column_names(fitted):
    text = fitted.summary()
    header = text.splitlines()[0].split()
    for name in ("hidden_layer_sizes", "pruning_ratio", "rounding_bits", "max_tlu_bits",
                 "score", "feasible"):
        assert name in header
    # without a cost model the column is what it holds: complexity, never "latency"
    assert "complexity" in header and "latency" not in header and "lr" not in header
    assert "not seconds" in text
    rows = text.splitlines()[1:1 + len(fitted.results_)]
    # every row lines up with the header (right-aligned columns of equal width)
    assert {len(r.rstrip("* ")) for r in rows} <= {len(text.splitlines()[0]),
                                                   len(text.splitlines()[0]) - 1}
    assert any(r.rstrip().endswith("*") for r in rows)  # Pareto points marked


def test_plot_keeps_labels_inside_and_legend_off_the_points(fitted, tmp_path):
    ax = fitted.plot_pareto()
    fig = ax.figure
    path = tmp_path / "pareto.png"
    fig.savefig(path, dpi=100)  # no bbox_inches="tight": the figure itself must fit
    assert path.stat().st_size > 5000
    renderer = fig.canvas.get_renderer()
    tight = fig.get_tightbbox(renderer)  # inches
    W, H = fig.get_size_inches()
    assert tight.x0 >= -1e-6 and tight.y0 >= -1e-6
    assert tight.x1 <= W + 1e-6 and tight.y1 <= H + 1e-6
    for label in (ax.xaxis.label, ax.yaxis.label):
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width
        assert box.y1 <= fig.bbox.height
    legend = ax.get_legend().get_window_extent(renderer)
    assert not legend.overlaps(ax.get_window_extent(renderer))  # outside the data area
    pts = ax.transData.transform([(r["cost"], r["score"]) for r in fitted.results_])
    assert not any(legend.contains(x, y) for x, y in pts)
    plt.close(fig)


def test_a_point_searched_again_at_refit_is_what_the_search_reports():
    """After the refit searched rounding and p_error again, ``best_compile_kwargs_``,
    the chosen row and the outcome described the trial's point (0.0011 s, rounding 1)
    while the delivered model ran at another (0.069 s, rounding 4)."""
    from types import SimpleNamespace

    from latentopt.search.inner import Candidate
    from latentopt.search.refit import _report_new_point
    from latentopt.search.results import Outcome

    outcome = Outcome(budget_met=True, threshold=0.9, reference_score=0.91, best_score=0.95,
                      best_score_latency=0.0011, best_score_trial=2, n_evaluated=3,
                      n_failed=0, message="Budget met: ... 0.0011 s per sample (predicted).")
    row = {"trial": 2, "cost": 0.0011, "seconds": 0.0011, "pbs": 0, "max_tlu_bits": 1,
           "rounding_bits": 1, "rounding_method": "approximate", "p_error": 0.1}
    search = SimpleNamespace(best_compile_kwargs_={"rounding_bits": 1, "p_error": 0.1,
                                                   "rounding_method": "approximate"},
                             best_trial_=row, outcome_=outcome, cost_model_=object())
    cand = Candidate(4, "approximate", 0.03, True, score=0.94, latency=0.069, pbs=8,
                     max_tlu_bits=4)
    _report_new_point(search, cand)
    assert search.best_compile_kwargs_ == {"rounding_bits": 4, "rounding_method": "approximate",
                                           "p_error": 0.03}
    chosen = search.best_trial_
    assert (chosen["seconds"], chosen["pbs"], chosen["rounding_bits"]) == (0.069, 8, 4)
    assert (chosen["trial_seconds"], chosen["trial_pbs"], chosen["trial_rounding_bits"]) == (
        0.0011, 0, 1)
    assert "searched again: rounding_bits=4, p_error=0.03, 0.069 s" in outcome.message


def test_a_retrained_model_at_the_trials_point_reports_its_own_cost():
    """The retrained model is another circuit at the same point: it was delivered at
    1.41 s per sample while best_trial_ and the outcome said 0.78 (the trial's)."""
    from types import SimpleNamespace

    from latentopt.search.refit import _report_delivered_cost
    from latentopt.search.results import Outcome

    outcome = Outcome(budget_met=True, threshold=0.9, reference_score=0.91, best_score=0.95,
                      best_score_latency=0.78, best_score_trial=1, n_evaluated=3,
                      n_failed=0, message="Budget met: ... 0.7777 s per sample (predicted).")
    row = {"trial": 1, "cost": 0.7777, "seconds": 0.7777, "pbs": 32, "max_tlu_bits": 5}
    search = SimpleNamespace(best_trial_=row, outcome_=outcome, cost_model_=object(),
                             refit_={})
    best = SimpleNamespace(fhe_circuit_="circuit", fhe_report_={
        "programmable_bootstrap_count": 32, "max_tlu_input_bits": 5})
    cost_model = SimpleNamespace(predict=lambda circuit: 1.4112)
    _report_delivered_cost(search, best, cost_model)
    chosen = search.best_trial_
    assert (chosen["seconds"], chosen["cost"], chosen["trial_seconds"]) == (
        1.4112, 1.4112, 0.7777)
    assert search.refit_["latency"] == 1.4112
    assert "delivered model's circuit costs 1.411 s per sample" in outcome.message
    assert "(the trial's: 0.7777 s" in outcome.message


def test_a_chosen_model_that_predicts_one_value_is_reported():
    """A budget at or below a constant predictor's score (max_accuracy_drop=1.0, or a
    reference that scores below zero R^2) was met by a 0-PBS circuit predicting one
    class for every row, and the outcome read like any other."""
    from types import SimpleNamespace

    from sklearn.dummy import DummyClassifier

    from latentopt.search.results import Outcome

    X = np.random.default_rng(0).normal(size=(30, 3))
    y = np.arange(30) % 3
    outcome = Outcome(budget_met=True, threshold=0.0, reference_score=1.0, best_score=0.33,
                      best_score_latency=0.001, best_score_trial=0, n_evaluated=1,
                      n_failed=0, message="Budget met.")
    fake = SimpleNamespace(best_estimator_=DummyClassifier().fit(X, y), threshold_=0.0,
                           outcome_=outcome)
    with pytest.warns(UserWarning, match="predicts the same value"):
        LatencySearch._warn_if_constant(fake, X)
    assert "predicts the same value" in outcome.message and "threshold 0.0000" in (
        outcome.message)
    fake.best_estimator_ = DummyClassifier(strategy="uniform", random_state=0).fit(X, y)
    fake.outcome_ = Outcome(**{**outcome.__dict__, "message": "Budget met."})
    LatencySearch._warn_if_constant(fake, X)  # varied predictions: nothing added
    assert fake.outcome_.message == "Budget met."


def test_a_trial_refused_by_the_margin_only_gets_advice_above_the_drop_in_use():
    """The advice named max_accuracy_drop >= 0.0034 (the gap to the reference) to a
    search already at 0.03, whose closest trial failed only the multiple-check margin."""
    from latentopt.search.results import make_outcome

    rows = [{"trial": 4, "score": 0.6429, "cost": 2.865, "feasible": False, "refuted": True}]
    closest = {"trial": 4, "cost": 2.865, "holdout_min": 0.6293, "holdout_threshold": 0.6392}
    out = make_outcome(rows, [], None, reference_score=0.5893, threshold=0.5593,
                       max_accuracy_drop=0.03, n_trials=5,
                       held_out={"n_checked": 5, "n_samples": 294, "threshold": 0.6027,
                                 "reference_score": 0.6327, "max_threshold": 0.6392,
                                 "closest": closest, "rows": "rows cross-validated"})
    assert "max_accuracy_drop >= 0.0034" not in out.message
    assert "only the margin" in out.message and "max_accuracy_drop >= 0.0399" in out.message


def test_a_closest_point_with_no_lookup_is_called_a_constant_predictor():
    """On an imbalanced set the not-met advice named a 0-PBS trial (every lookup rounded
    to a constant) as the one a larger drop would accept, without saying what it is."""
    from latentopt.search.results import make_outcome

    rows = [{"trial": 1, "score": 0.7778, "cost": 0.0025, "pbs": 0, "feasible": False,
             "refuted": True}]
    closest = {"trial": 1, "cost": 0.0025, "pbs": 0, "holdout_min": 0.70,
               "holdout_threshold": 0.72}
    out = make_outcome(rows, [], None, reference_score=0.733, threshold=0.683,
                       max_accuracy_drop=0.05, n_trials=5,
                       held_out={"n_checked": 2, "n_samples": 150, "threshold": 0.71,
                                 "reference_score": 0.76, "max_threshold": 0.72,
                                 "closest": closest})
    assert "0 PBS: it predicts one value for every row" in out.message
    plain = make_outcome(rows, [], None, reference_score=0.9, threshold=0.85,
                         max_accuracy_drop=0.05, n_trials=5)
    assert "0 PBS: it predicts one value" in plain.message


def test_the_refit_allows_the_loss_the_search_allowed_the_trial():
    """With a budget at a peer's score and max_accuracy_drop=0, the refit let no rounding
    loss through and re-searched the delivered model to 8-bit lookups (17.7 s per sample
    against the trial's 1.7 s, on MNIST)."""
    from types import SimpleNamespace

    from latentopt.search.refit import allowed_loss

    class Study:
        def get_trials(self, deepcopy=True):
            return [SimpleNamespace(number=n, user_attrs={"unrounded_score": u})
                    for n, u in ((0, 0.90), (1, 0.9455))]

    search = SimpleNamespace(max_accuracy_drop=0.0, threshold_=0.931, study_=Study(),
                             best_trial_={"trial": 1})
    assert allowed_loss(search) == pytest.approx(0.0145)
    search.max_accuracy_drop = 0.02  # never less than the budget's drop
    assert allowed_loss(search) == 0.02
    search.best_trial_ = {"trial": 0}  # a trial below the threshold unrounded: the drop
    assert allowed_loss(search) == 0.02
    search.best_trial_ = None
    assert allowed_loss(search) == 0.02

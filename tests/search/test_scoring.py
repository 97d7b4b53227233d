"""``LatencySearch(scoring=...)``: the budget in a scikit-learn scorer's units, used for
every score of the search (trials, the check, the refit, the float reference)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.metrics import balanced_accuracy_score
from test_search import SPACE, TINY

from latentopt import QuantizedMLPClassifier
from latentopt.search import LatencySearch
from latentopt.search.scoring import score_in_mode
from latentopt.search.trials import StudyMismatchError

FAST = dict(param_space=SPACE, n_trials=2, n_repeats=1, cost_model=None, random_state=0,
            verbose=0, check_folds=1)


@pytest.fixture(scope="module")
def imbalanced():
    """A generated set with 12% positives: always "negative" scores 0.88 accuracy."""
    X, y = make_classification(n_samples=500, n_features=6, n_informative=4,
                               weights=[0.88, 0.12], class_sep=1.5, random_state=3)
    return X, y


def test_every_score_of_the_search_goes_through_the_scorer(imbalanced, tmp_path):
    X, y = imbalanced
    seen: list[tuple[str, str]] = []

    def scorer(est, X_, y_):  # type: ignore[no-untyped-def]
        seen.append((type(est).__name__, getattr(est, "_mode", "none")))
        return balanced_accuracy_score(y_, est.predict(X_))

    s = LatencySearch(QuantizedMLPClassifier(**TINY), scoring=scorer, max_accuracy_drop=0.3,
                      cache_dir=tmp_path, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.fit(X, y)
    kinds = set(seen)
    # the float reference (no FHE modes), and the trials' circuits, unrounded and simulated
    assert any(mode == "none" for _, mode in kinds)
    assert ("_InMode", "disable") in kinds and ("_InMode", "simulate") in kinds
    if s.budget_met_:
        assert s.score(X, y) == pytest.approx(balanced_accuracy_score(y, s.predict(X)))


def test_a_weighted_metric_turns_away_the_majority_model(imbalanced, tmp_path):
    """Accuracy within 10 points of the float model is met by predicting the majority
    class; balanced accuracy within 10 points is not (it scores 0.5)."""
    X, y = imbalanced
    s = LatencySearch(QuantizedMLPClassifier(**TINY), scoring="balanced_accuracy",
                      max_accuracy_drop=0.1, cache_dir=tmp_path, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s.fit(X, y)
    ref = s.reference_estimator_
    assert s.reference_score_ > 0.7  # the float MLP's balanced accuracy on validation
    assert s.threshold_ == pytest.approx(s.reference_score_ - 0.1) and s.threshold_ > 0.5
    if s.budget_met_:
        pred = s.predict(X)
        assert len(np.unique(pred)) == 2 and balanced_accuracy_score(y, pred) > 0.5
    assert score_in_mode(ref, X, y, None, "balanced_accuracy") == pytest.approx(
        balanced_accuracy_score(y, ref.predict(X)))


def test_scoring_is_checked_and_part_of_the_study(imbalanced, tmp_path):
    X, y = imbalanced
    with pytest.raises(ValueError, match="not a scikit-learn scorer"):
        LatencySearch(QuantizedMLPClassifier(**TINY), scoring="balanced_acc",
                      **FAST).fit(X, y)
    with pytest.raises(TypeError, match="scoring must be"):
        LatencySearch(QuantizedMLPClassifier(**TINY), scoring=3, **FAST).fit(X, y)
    # a reference score outside [0, 1] is a mistake for accuracy, not for a loss
    from latentopt.search.validation import check_search_args

    check_search_args(LatencySearch(QuantizedMLPClassifier(**TINY), scoring="neg_log_loss",
                                    reference_score=-0.2, **FAST))
    with pytest.raises(ValueError, match="accuracy for a classifier"):
        check_search_args(LatencySearch(QuantizedMLPClassifier(**TINY),
                                        reference_score=-0.2, **FAST))
    storage = str(tmp_path / "s.journal")
    kw = dict(FAST, n_trials=1, storage=storage, study_name="one", cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LatencySearch(QuantizedMLPClassifier(**TINY), max_accuracy_drop=0.5, **kw).fit(X, y)
        with pytest.raises(StudyMismatchError, match=r"budget \(scoring\) differ"):
            LatencySearch(QuantizedMLPClassifier(**TINY), max_accuracy_drop=0.5,
                          scoring="f1_macro", **kw).fit(X, y)


def test_scorers_are_told_apart_the_same_in_every_process():
    """Two fbeta scorers, two lambdas and a partial got one identity (a resumed study mixed
    two metrics), or an identity holding a memory address (a partial never resumed)."""
    import functools
    import subprocess
    import sys

    from sklearn.metrics import fbeta_score, make_scorer

    from latentopt.search.scoring import scoring_name

    names = {scoring_name(make_scorer(fbeta_score, beta=0.5)),
             scoring_name(make_scorer(fbeta_score, beta=10)),
             scoring_name(lambda e, X, y: 1.0), scoring_name(lambda e, X, y: -2.0)}
    assert len(names) == 4
    code = ("import functools\n"
            "from sklearn.metrics import fbeta_score\n"
            "from latentopt.search.scoring import scoring_name\n"
            "print(scoring_name(functools.partial(fbeta_score, beta=2)))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)}
    assert len(runs) == 1 and "0x" not in runs.pop()
    assert "0x" not in scoring_name(functools.partial(fbeta_score, beta=2))


def test_a_scorer_of_the_other_task_or_range_is_refused_before_training():
    from latentopt import QuantizedMLPRegressor
    from latentopt.search.validation import check_search_args

    with pytest.raises(ValueError, match="'accuracy' is a classification metric"):
        check_search_args(LatencySearch(QuantizedMLPRegressor(**TINY), scoring="accuracy"))
    with pytest.raises(ValueError, match="is a regression metric"):
        check_search_args(LatencySearch(QuantizedMLPClassifier(**TINY),
                                        scoring="neg_mean_absolute_error"))
    with pytest.raises(ValueError, match=r"a balanced_accuracy score: in \[0, 1\], got 85"):
        check_search_args(LatencySearch(QuantizedMLPClassifier(**TINY),
                                        scoring="balanced_accuracy", reference_score=85))


def test_the_check_margin_of_balanced_accuracy_counts_the_rare_class():
    from latentopt.search.selection import Check

    y = np.array([0] * 90 + [1] * 10)
    X = np.zeros((100, 2))
    acc = Check(X, y, None, 0.8, 0.75, 1, classification=True)
    bal = Check(X, y, None, 0.8, 0.75, 1, classification=True, scoring="balanced_accuracy")
    # effective rows 4 / (1/90 + 1/10) = 36 instead of 100
    assert bal.margin(5) == pytest.approx(acc.margin(5) * np.sqrt(100 / 36))


def test_the_search_scores_quietly_on_rows_far_outside_the_input_range(imbalanced):
    """On heavy-tailed data a few validation rows lie far outside the input quantizer's
    range: every trial's every score repeated the warning; the estimator still warns."""
    X, y = imbalanced
    clf = QuantizedMLPClassifier(**TINY).fit(X, y)
    far = X.copy()
    far[:3, 0] = 1e3 * np.abs(X).max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score_in_mode(clf, far, y, "disable")
        score_in_mode(clf, far, y, "disable", "balanced_accuracy")
    with pytest.warns(UserWarning, match="3 of .* samples have features further"):
        clf.predict(far)

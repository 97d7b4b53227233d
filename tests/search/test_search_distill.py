"""LatencySearch with a teacher: fitted once, shared by trials, keyed in the model cache."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from latentopt import QuantizedMLPClassifier
from latentopt.search import LatencySearch
from latentopt.search.objective import _Objective

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=3, n_a_bits=3, n_input_bits=4, max_epochs=30,
            lr=1e-2, random_state=0, verbose=0)
# distill_alpha is an ordinary estimator parameter: it can be searched
SPACE = {"n_w_bits": (2, 3), "width": ("log", 3, 8), "n_layers": (1, 1),
         "distill_alpha": [0.3, 0.7]}

FITS: list[int] = []


class CountingTeacher(LogisticRegression):
    """Records every fit (in this process)."""

    def fit(self, X, y, sample_weight=None):
        FITS.append(len(X))
        return super().fit(X, y, sample_weight=sample_weight)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(200, 5)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


def _search(tmp_path, **kw):
    kw.setdefault("holdout_fraction", 0.0)  # all of X but validation trains the trials
    return LatencySearch(QuantizedMLPClassifier(**TINY), param_space=SPACE,
                         max_accuracy_drop=0.1, reference_score=0.9, n_repeats=1,
                         cost_model=None, random_state=0, verbose=0,
                         cache_dir=tmp_path / "models", **kw)


def test_search_fits_the_teacher_once_and_shares_it(data, tmp_path):
    X, y = data
    plain = _search(tmp_path, n_trials=1).fit(X, y)
    assert plain.teacher_ is None
    FITS.clear()
    s = _search(tmp_path, n_trials=2, refit=True, teacher=CountingTeacher()).fit(X, y)
    # one fit, on the search's training part (not per trial, not for the refit)
    n_train = len(X) - int(np.ceil(0.2 * len(X)))
    assert FITS == [n_train]
    assert hasattr(s.teacher_, "coef_") and not hasattr(s.teacher, "coef_")
    # (the refit, or the trial's cached model if the refit misses the budget)
    np.testing.assert_array_equal(s.best_estimator_.teacher_.coef_, s.teacher_.coef_)
    assert {r["distill_alpha"] for r in s.results_} <= {0.3, 0.7}
    assert "distill_alph" in s.summary()  # a searched dimension gets a column
    # the model cache is keyed by the teacher: the first trial samples the same
    # parameters as the teacher-less search's, yet is trained anew
    t0 = s.study_.trials[0]
    assert t0.user_attrs["params"] == plain.study_.trials[0].user_attrs["params"]
    assert t0.user_attrs["cached_model"] is False
    assert "teacher" in s.study_.study_name
    # the fitted search pickles with its teacher
    p = pickle.loads(pickle.dumps(s))
    np.testing.assert_array_equal(p.teacher_.coef_, s.teacher_.coef_)


def test_estimator_teacher_is_used_and_objective_pickles(data, tmp_path):
    X, y = data
    FITS.clear()
    est = QuantizedMLPClassifier(**TINY, teacher=CountingTeacher())
    s = LatencySearch(est, param_space={"n_w_bits": [3]}, n_trials=1, reference_score=0.9,
                      max_accuracy_drop=0.2, n_repeats=1, cost_model=None, random_state=0,
                      verbose=0, cache_dir=tmp_path)
    split = (X[:150], y[:150], X[150:], y[150:])
    trial_teacher, key = s._prepare_teacher(est.teacher, split[0], split[1], None)
    assert FITS == [150] and len(key) == 12 and s.teacher_ is trial_teacher
    # what worker processes receive: the objective, fitted teacher included
    obj = _Objective(s, split, 0.9, None, tmp_path, teacher=trial_teacher, teacher_key=key)
    back = pickle.loads(pickle.dumps(obj))
    np.testing.assert_array_equal(back.teacher.predict_proba(X), trial_teacher.predict_proba(X))
    model, cached = back._fit({"n_w_bits": 3})
    assert not cached and FITS == [150]  # the trial did not refit the teacher
    assert model.teacher_.coef_.tolist() == trial_teacher.coef_.tolist()
    # an estimator without a teacher parameter cannot be distilled
    from sklearn.neural_network import MLPClassifier

    with pytest.raises(ValueError, match="no 'teacher' parameter"):
        LatencySearch(MLPClassifier(), teacher=LogisticRegression())._prepare_teacher(
            LogisticRegression(), split[0], split[1], None)


def test_array_teacher_is_split_with_the_data(data, tmp_path):
    X, y = data
    proba = np.column_stack([1 - y, y]) * 0.8 + 0.1  # a confident "teacher"
    s = _search(tmp_path, n_trials=1, teacher=proba, refit=False).fit(X, y)
    assert s.teacher_.shape == (len(X), 2)
    # the trial's model: trained on the training part, with its rows of the teacher
    assert s.best_estimator_.teacher_.shape[0] == len(X) - int(np.ceil(0.2 * len(X)))
    # refit=True: retrained on all of X, with the whole teacher array
    r = _search(tmp_path, n_trials=1, teacher=proba, refit=True).fit(X, y)
    assert r.best_estimator_ is not None and r.refit_ is not None
    if not r.refit_.get("kept_trial_model"):
        assert r.best_estimator_.teacher_.shape[0] == len(X)


def test_a_dataframes_teacher_selects_its_columns_by_name_in_trials_refit_and_prune(
        data, tmp_path):
    """A teacher pipeline that selects DataFrame columns by name works in the
    estimators' fit; the search (trials and refit) and prune handed it arrays and it
    failed ("Specifying the columns using strings is only supported for dataframes")."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline

    X, y = data
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    teacher = make_pipeline(ColumnTransformer([("keep", "passthrough", ["f0", "f1"])]),
                            LogisticRegression())
    s = LatencySearch(QuantizedMLPClassifier(**TINY), teacher=teacher,
                      param_space={"n_w_bits": [3], "width": [6], "n_layers": [1]},
                      n_trials=1, cost_model=None, check_folds=1, multi_fidelity=False,
                      random_state=0, verbose=0, max_accuracy_drop=0.5,
                      storage=str(tmp_path / "s.journal")).fit(df, y)
    assert s.best_estimator_ is not None and s.teacher_.estimator_ is not None
    assert list(s.teacher_.columns) == list(df.columns)
    # the wrapped teacher computes what the pipeline computes on the DataFrame
    fitted = s.teacher_.estimator_
    np.testing.assert_array_equal(s.teacher_.predict_proba(X), fitted.predict_proba(df))
    clf = QuantizedMLPClassifier(**TINY, teacher=teacher).fit(df, y)
    assert clf.prune(df, y, ratio=0.5).score(df, y) > 0.5

"""The search on a real PostgreSQL server: plain URL, two worker processes, a resume."""

from __future__ import annotations

import importlib.util

import numpy as np
import optuna
import pytest
from test_search import SPACE, TINY

from latentopt import QuantizedMLPClassifier
from latentopt.search import LatencySearch
from latentopt.search.storage import make_storage, normalize_url


def test_plain_postgresql_url_names_the_installed_driver():
    url = "postgresql://u:p@127.0.0.1:5432/db"
    has_pg2 = importlib.util.find_spec("psycopg2") is not None
    expected = url if has_pg2 else "postgresql+psycopg://u:p@127.0.0.1:5432/db"
    assert normalize_url(url) == expected
    assert normalize_url("postgres://u@h/db").startswith("postgresql")
    assert normalize_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_search_on_postgresql_two_workers_and_resume(postgres_url, tmp_path):
    # the plain postgresql:// URL works out of the box (psycopg 3 through the extra)
    storage = make_storage(postgres_url)
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert storage.get_heartbeat_interval() is not None  # dead trials are recovered

    rng = np.random.RandomState(1)
    X = rng.randn(160, 5)
    y = (X[:, 0] - X[:, 2] > 0).astype(int)

    def search(n_trials, n_jobs):
        return LatencySearch(QuantizedMLPClassifier(**TINY), param_space=SPACE,
                             max_accuracy_drop=0.2, reference_score=0.9, n_repeats=1,
                             cost_model=None, random_state=0, verbose=0, n_trials=n_trials,
                             n_jobs=n_jobs, storage=postgres_url, study_name="pg",
                             cache_dir=tmp_path)

    first = search(3, 2).fit(X, y)
    done = [t for t in first.study_.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both processes ran trials
    second = search(4, 1).fit(X, y)  # a resume on the same server
    done2 = [t for t in second.study_.trials
             if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done2) == 4
    assert {t.number for t in done} < {t.number for t in done2}
    assert len({tuple(sorted(t.params.items())) for t in done2}) == 4  # no repeats
    assert second.best_estimator_ is not None
    # a search with another template on the same study is refused, not resumed
    other = search(4, 1).set_params(estimator=QuantizedMLPClassifier(**{**TINY, "lr": 0.1}))
    with pytest.raises(ValueError, match="estimator"):
        other.fit(X, y)

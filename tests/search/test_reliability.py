"""Reliable studies: identity, model cache, no repeats, exact counts, dead trials,
argument checks, failing trials, the __main__ guard."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from test_search import SPACE, TINY

from latentopt import QuantizedMLPClassifier
from latentopt.search import LatencySearch
from latentopt.search.objective import _Objective
from latentopt.search.storage import make_storage
from latentopt.search.trials import (
    StudyMismatchError,
    _has_main_guard,
    model_key,
    n_evaluated,
    run_trials,
)

ROOT = Path(__file__).resolve().parents[2]
COMPLETE, FAIL, RUNNING = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                           optuna.trial.TrialState.RUNNING)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randn(160, 5)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


def _search(**kw):
    kw.setdefault("n_trials", 1)
    kw.setdefault("param_space", SPACE)
    est = kw.pop("estimator", QuantizedMLPClassifier(**TINY))
    # check_folds=1: these tests are about the study, not the (slower) cross-validated check
    kw = {"max_accuracy_drop": 0.2, "reference_score": 0.9, "n_repeats": 1, "check_folds": 1,
          "cost_model": None, "random_state": 0, "verbose": 0, **kw}
    return LatencySearch(est, **kw)


class Stub:
    """A cheap objective (no training): values from the sampled parameters."""

    def __init__(self, fail_on: int | None = None, sleep: float = 0.0) -> None:
        self.fail_on, self.sleep, self.calls = fail_on, sleep, 0

    def sample(self, trial):
        return {"a": trial.suggest_int("a", 0, 3), "b": trial.suggest_categorical("b", [0, 1])}

    def __call__(self, trial):
        p = self.sample(trial)
        self.calls += 1
        time.sleep(self.sleep)
        if p["a"] == self.fail_on:
            raise FloatingPointError("overflow in training")
        return float(p["a"] + 1), float(p["b"])


def _study(storage=None, seed=0):
    return optuna.create_study(storage=storage, directions=["minimize", "maximize"],
                               sampler=optuna.samplers.RandomSampler(seed=seed))


# ------------------------------------------------------------------------- identity
def test_resume_with_another_template_space_or_budget_is_an_error(data, tmp_path):
    X, y = data
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _search(storage=storage, study_name="s").fit(X, y)
    changes = [
        ("estimator", dict(estimator=QuantizedMLPClassifier(**{**TINY, "activation": "sigmoid"}))),
        ("estimator", dict(estimator=QuantizedMLPClassifier(**{**TINY, "max_epochs": 7}))),
        ("space", dict(param_space={**SPACE, "n_w_bits": (2, 4)})),
        ("budget", dict(max_accuracy_drop=0.05)),
        # the check's verdicts are stored in the trials: a resume with another check
        # reported 1-fold scores as 3-fold ones
        ("evaluation", dict(check_folds=2)),
    ]
    for what, change in changes:
        s = _search(storage=storage, study_name="s")
        s.set_params(**change)
        with pytest.raises(StudyMismatchError, match=what):
            s.fit(X, y)
    with pytest.raises(StudyMismatchError, match="data"):
        _search(storage=storage, study_name="s").fit(X[:150], y[:150])
    # without a study name each search gets its own study: no error, no mixing
    a = _search(storage=storage).fit(X, y)
    b = _search(storage=storage, max_accuracy_drop=0.05).fit(X, y)
    assert a.study_.study_name != b.study_.study_name
    # the original settings resume fine (verbosity is not part of the identity)
    _search(storage=storage, study_name="s", n_trials=1).set_params(verbose=0).fit(X, y)


def test_model_cache_keys_on_every_effective_parameter(data, tmp_path):
    X, y = data
    base = QuantizedMLPClassifier(**TINY)
    keys = {model_key(e, "d") for e in (
        base, QuantizedMLPClassifier(**{**TINY, "activation": "sigmoid"}),
        QuantizedMLPClassifier(**{**TINY, "max_epochs": 7}))}
    assert len(keys) == 3
    assert model_key(base, "d") != model_key(base, "other data")
    assert model_key(base, "d") == model_key(QuantizedMLPClassifier(**{**TINY, "verbose": 2}), "d")
    # through the trial objective: a model trained with another fixed max_epochs (same
    # sampled parameters) is not reused; the same settings are
    split = (X[:120], y[:120], X[120:], y[120:])
    obj = _Objective(_search(), split, 0.9, None, tmp_path)
    model, cached = obj._fit({"n_w_bits": 2})
    assert not cached and obj._fit({"n_w_bits": 2})[1] is True
    other = _Objective(_search(estimator=QuantizedMLPClassifier(**{**TINY, "max_epochs": 7})),
                       split, 0.9, None, tmp_path)
    model7, cached7 = other._fit({"n_w_bits": 2})
    assert not cached7 and model7.max_epochs == 7 and model.max_epochs == TINY["max_epochs"]


# ------------------------------------------------------------ repeats, counts, failures
def test_resumed_and_seeded_runs_never_repeat_and_counts_are_exact(tmp_path):
    study = _study(f"sqlite:///{tmp_path / 's.db'}", seed=0)
    run_trials(study, Stub(), 3)
    # a second run with the *same* seed replays the same random stream: it is skipped
    again = optuna.load_study(study_name=study.study_name, storage=study._storage,
                              sampler=optuna.samplers.RandomSampler(seed=0))
    obj = Stub()
    run_trials(again, obj, 6)
    done = [t for t in again.trials if t.state == COMPLETE]
    assert len(done) == 6 and obj.calls == 3
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6
    skipped = [t for t in again.trials if "skipped" in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in skipped)
    # 8 configurations in all: asking for 20 stops at 8 with a warning, never repeats
    with pytest.warns(UserWarning, match="exhausted"):
        run_trials(again, Stub(), 20)
    assert sum(t.state == COMPLETE for t in again.trials) == 8


def test_a_failing_trial_is_recorded_and_the_search_goes_on():
    study = _study(seed=3)
    run_trials(study, Stub(fail_on=1), 8)
    failed = [t for t in study.trials if t.state == FAIL]
    assert failed and all(t.params["a"] == 1 for t in failed)
    assert all(t.user_attrs["error"].startswith("FloatingPointError: overflow") for t in failed)
    assert n_evaluated(study) == 8  # failures count; their configurations are not retried


class FailsWhileSampling(Stub):
    """Samples ``a`` as a float where earlier trials stored an int distribution."""

    def sample(self, trial):
        return {"a": trial.suggest_float("a", 0.0, 3.0)}


def test_a_trial_failing_while_sampled_counts():
    """A failure in the presampling (an Optuna distribution clash) was a FAIL without an
    error record, never counted: the loop started new trials forever."""
    study = _study(seed=1)
    run_trials(study, Stub(), 2)
    run_trials(study, FailsWhileSampling(), 4)
    failed = [t for t in study.trials if t.state == FAIL]
    assert n_evaluated(study) == 4 and len(failed) == 2
    assert all("error" in t.user_attrs for t in failed)


def test_ranges_and_choices_are_different_studies(data, tmp_path):
    """``[2, 3]`` and ``(2, 3)`` had one identity: a resume failed every trial, forever."""
    X, y = data
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _search(storage=storage, study_name="s", param_space={"n_w_bits": [2, 3]}).fit(X, y)
    with pytest.raises(StudyMismatchError, match="space"):
        _search(storage=storage, study_name="s", param_space={"n_w_bits": (2, 3)}).fit(X, y)


class Rejecting(Stub):
    """Prunes a == 0 (as a cost-based early rejection would)."""

    def __call__(self, trial):
        if self.sample(trial)["a"] == 0:
            self.calls += 1
            raise optuna.TrialPruned("too slow")
        return super().__call__(trial)


def test_a_pruned_configuration_is_not_tried_again():
    study = _study(seed=5)
    obj = Rejecting()
    with pytest.warns(UserWarning, match="exhausted"):
        run_trials(study, obj, 8)  # 6 configurations can complete
    assert sum(t.state == COMPLETE for t in study.trials) == 6
    rejected = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED
                and "skipped" not in t.user_attrs]
    assert len(rejected) == len({tuple(sorted(t.params.items())) for t in rejected}) <= 2
    assert obj.calls == 6 + len(rejected)


class FlakyClassifier(QuantizedMLPClassifier):
    """Training diverges (FloatingPointError) at 2-bit weights."""

    def fit(self, X, y):
        if self.n_w_bits == 2:
            raise FloatingPointError("loss is NaN")
        return super().fit(X, y)


def test_failing_trial_in_a_search_is_a_result(data):
    X, y = data
    # a wide budget: FHE simulation is random, and this test is about the failure
    s = _search(estimator=FlakyClassifier(**TINY), param_space={"n_w_bits": [2, 3]},
                n_trials=2, max_accuracy_drop=0.4).fit(X, y)
    assert len(s.results_) == 1 and len(s.failures_) == 1
    assert s.failures_[0]["n_w_bits"] == 2 and "loss is NaN" in s.failures_[0]["error"]
    assert s.best_estimator_ is not None and s.best_params_["n_w_bits"] == 3
    assert "FloatingPointError: loss is NaN" in s.summary()


# ------------------------------------------------------------------------ dead trials
_KILLED = """
import sys, time, optuna
from latentopt.search.storage import make_storage
storage = make_storage(sys.argv[1], heartbeat_interval=1, grace_period=2)
study = optuna.load_study(study_name="dead", storage=storage)
def objective(trial):
    trial.suggest_int("a", 0, 3); trial.suggest_categorical("b", [0, 1])
    print("running", flush=True)
    time.sleep(600)
study.optimize(objective, n_trials=1)
"""


def _study_with_a_killed_trial(url: str, storage: object, beats: float) -> object:
    """The study "dead" on ``storage``, whose trial 0 ran in a process killed (SIGKILL)
    ``beats`` seconds after it started: left RUNNING."""
    optuna.create_study(study_name="dead", storage=storage,
                        directions=["minimize", "maximize"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, url], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(beats)
    finally:
        proc.send_signal(signal.SIGKILL)  # our own child, by its pid
        proc.wait()
    return optuna.load_study(study_name="dead", storage=storage)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_killed_trial_is_recovered_and_retried(tmp_path, kind):
    url = (str(tmp_path / "s.journal") if kind == "journal"
           else f"sqlite:///{tmp_path / 's.db'}")
    storage = make_storage(url, heartbeat_interval=1, grace_period=2)
    study = _study_with_a_killed_trial(url, storage, beats=1.5)  # a heartbeat or two
    dead = study.trials[0]
    assert dead.state == RUNNING  # nobody noticed yet
    time.sleep(3)  # past the grace period
    run_trials(study, Stub(), 2)
    trials = study.trials
    assert trials[0].state == FAIL  # failed as stale ...
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == COMPLETE  # ... and its config retried
    assert retried[0].params == dead.params
    assert not [t for t in trials if t.state == RUNNING]
    assert sum(t.state == COMPLETE for t in trials) == 2


def test_a_resume_right_after_a_kill_waits_for_the_dead_trial(tmp_path):
    """Resumed before the dead trial's grace period ran out, the search counted it as
    claimed and returned with fewer evaluated trials than n_trials, without a word."""
    url = str(tmp_path / "s.journal")
    storage = make_storage(url, heartbeat_interval=1, grace_period=2)
    study = _study_with_a_killed_trial(url, storage, beats=0.0)
    assert study.trials[0].state == RUNNING
    run_trials(study, Stub(), 2)  # at once: the dead trial is not stale yet
    trials = study.trials
    assert trials[0].state == FAIL and not [t for t in trials if t.state == RUNNING]
    assert sum(t.state == COMPLETE for t in trials) == 2


# ---------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("kw, match", [
    (dict(max_accuracy_drop=-1), "max_accuracy_drop"),
    (dict(max_accuracy_drop=math.nan), "max_accuracy_drop"),
    (dict(max_accuracy_drop=math.inf), "max_accuracy_drop"),
    (dict(max_accuracy_drop="0.1"), "max_accuracy_drop"),
    (dict(n_trials=0), "n_trials"),
    (dict(n_trials=2.5), "n_trials"),
    (dict(n_trials=True), "n_trials"),
    (dict(n_jobs=0), "n_jobs"),
    (dict(timeout=-1), "timeout"),
    (dict(timeout=math.nan), "timeout"),
    (dict(n_repeats=0), "n_repeats"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(reference_score=math.nan), "reference_score"),
    (dict(param_space={"n_w_bits": (1, 3)}), "binary weights"),
    (dict(param_space={"n_a_bits": [0, 2]}), "n_a_bits"),
    (dict(param_space={"pruning_ratio": [0.0, 1.5]}), "pruning_ratio"),
    (dict(param_space={"lr": ("log", 0.0, 0.1)}), "log"),
    (dict(param_space={"width": (0, 4), "n_layers": (1, 2)}), "width"),
    (dict(estimator=QuantizedMLPClassifier(n_w_bits=1)), "binary weights"),
    (dict(storage="no-such-kind-of-storage"), "storage"),
    # accepted, then every trial failed while it was sampled, uncounted: fit never ended
    (dict(param_space={"activation": ("relu", "tanh")}), "a tuple is a range"),
    (dict(param_space={"lr": ("step", 0.001, 0.01, 0.0)}), "step > 0"),
    # accepted, then every trial failed in training
    (dict(param_space={"activation": ["relu", "bogus"]}), "unknown activation 'bogus'"),
])
def test_every_argument_is_checked_before_any_training(data, kw, match, tmp_path):
    X, y = data
    with pytest.raises(ValueError, match=match):
        _search(cache_dir=tmp_path, **kw).fit(X, y)
    assert not list(tmp_path.glob("model-*"))  # no trial trained a model


# ---------------------------------------------------------------------- __main__ guard
def test_main_guard_detection():
    assert _has_main_guard("import x\nif __name__ == '__main__':\n    x.run()\n")
    assert _has_main_guard('if "__main__" == __name__:\n    pass\n')
    assert not _has_main_guard("import x\nx.run()\n")


def test_script_without_main_guard_gets_a_clear_error(tmp_path):
    script = tmp_path / "search_script.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        from latentopt import QuantizedMLPClassifier
        from latentopt.search import LatencySearch
        X = np.random.RandomState(0).randn(60, 3); y = (X[:, 0] > 0).astype(int)
        LatencySearch(QuantizedMLPClassifier(max_epochs=2), n_jobs=2, n_trials=2,
                      reference_score=0.9, verbose=0).fit(X, y)
        print("ran")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode != 0 and "ran" not in out.stdout
    assert "RuntimeError" in out.stderr
    assert 'if __name__ == "__main__":' in out.stderr
    assert "n_jobs=1" in out.stderr

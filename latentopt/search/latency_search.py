"""Outer search: what needs retraining, multi-objective, on Optuna.

:class:`LatencySearch` is a scikit-learn meta-estimator.  Each Optuna trial samples
bit-widths, depth/width and pruning from a search space, trains a clone of the
estimator, then runs the inner search (rounding bits and ``p_error`` with FHE
simulation, :func:`~latentopt.search.inner.search_compile`) to find the fastest compiled
circuit of that model within the accuracy budget.  The two objectives are latency
(predicted by the cost model, or concrete's complexity) and the validation metric;
the budget is an Optuna constraint (NSGA-II).

Studies persist to any Optuna storage (``"sqlite:///search.db"``, a PostgreSQL URL for
several machines, or a path ending in ``.journal`` for a file journal that several local
processes share safely) and resume: finished trials are never redone, and trained
models are cached on disk by parameters so that repeated configurations and the final
refit reuse them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone, is_classifier
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from .inner import score_under, search_compile
from .objective import _NO_LATENCY, _data_key, _Objective
from .screening import seed_configs
from .selection import check_on_holdout
from .space import DEFAULT_SPACE, validate_space
from .units import latency_label

__all__ = ["LatencySearch", "make_storage"]


def make_storage(storage: Any) -> Any:
    """An Optuna storage from a URL, a ``.journal`` path, a storage object or None."""
    import optuna

    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    s = os.fspath(storage)
    if s.endswith(".journal") or s.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        path = s[len("journal:///"):] if s.startswith("journal:///") else s
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    return s


def _local_storage_dir(storage: Any) -> Path | None:
    """Directory of a file-backed storage (sqlite URL, journal path), else None."""
    if not isinstance(storage, (str, os.PathLike)):
        return None
    s = os.fspath(storage)
    for prefix in ("sqlite:///", "journal:///"):
        if s.startswith(prefix):
            return Path(s[len(prefix):]).parent
    return None if "://" in s else Path(s).parent  # a server URL has no local directory


def _is_array_teacher(teacher: Any) -> bool:
    from ..nn.distill import teacher_kind

    return teacher_kind(teacher) == "array"


def _worker(study_name: str, storage: Any, objective: _Objective, n_trials: int,
            timeout: float | None, seed: int | None) -> None:  # pragma: no cover - subprocess
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed)
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage),
                              sampler=sampler)
    study.optimize(objective, timeout=timeout, callbacks=[optuna.study.MaxTrialsCallback(
        n_trials, states=(optuna.trial.TrialState.COMPLETE,))])


class LatencySearch(MetaEstimatorMixin, BaseEstimator):
    """Find the fastest encrypted model within an accuracy budget, and the Pareto front.

    Parameters
    ----------
    estimator : QuantizedMLPClassifier or QuantizedMLPRegressor
        Template; sampled parameters are set on clones.
    param_space : dict, optional
        See :mod:`latentopt.search.space`; default :data:`~latentopt.search.space.DEFAULT_SPACE`.
        ``distill_alpha`` / ``distill_temperature`` may be searched too (with a teacher).
    teacher : estimator, torch.nn.Module or array-like, optional
        Distil every trial's model from this teacher (see the estimators' ``teacher``);
        default: the estimator's own ``teacher`` parameter.  It is fitted *once*, on the
        training part of ``X`` (unless already fitted), kept as ``teacher_`` and shared
        by every trial (and worker process, by pickling) and by the refit; an array
        teacher has one row per sample of ``X`` and is split with it.  Trained models
        are cached per teacher (keyed by its outputs), and the default study name
        includes that key.
    max_accuracy_drop : float, default=0.01
        Allowed drop of the validation metric below the reference.
    reference_score : float, optional
        Default: a float scikit-learn MLP's validation score (same split).
    n_trials : int, default=20
        Completed trials the study should hold (a resumed study runs only the rest).
    timeout : float, optional
        Seconds after which no new trial starts.
    storage : str or optuna storage, optional
        Persist/resume/share the study (see module docstring).
    study_name : str, optional
        Default: derived from the data and the settings.
    n_jobs : int, default=1
        Worker processes (>1 needs, or creates, a storage they share).
    validation_fraction : float, default=0.2
        Held-out share of ``X`` for the metric.
    n_repeats : int, default=3
        FHE simulations per inner-search candidate.
    holdout_fraction : float, default=0.2
        Share of ``X`` kept out of the search entirely (the *check* split): the fastest
        validation-feasible trials are re-scored there, against the float reference
        scored on the same rows, and the chosen model is the fastest that passes there
        too (:mod:`latentopt.search.selection`); ``best_score_`` is that honest score.
        0 selects on the validation split alone (which overfits it).
    multi_fidelity : bool, default=True
        Train each trial briefly first and train in full only the promising ones
        (:mod:`latentopt.search.screening`).
    cost_model : CostModel, "auto", "complexity" or None
        Latency predictor, in seconds per sample.  "auto": this machine's cached
        calibration, or a quick one made now (about 30 s, once per machine, cached).
        "complexity" or None: rank by concrete's complexity, a unitless estimate that
        is never reported as seconds (``latency_unit_`` says which unit was used).
    cache_dir : path, optional
        Where trained models are cached (default: a temporary directory, or one next
        to a file storage).
    refit : bool, default=False
        ``False``: ``best_estimator_`` is the fastest feasible trial's own model (trained
        on the training part, validated on the rest), compiled at its chosen point.
        ``True``: retrain that configuration on all of ``X`` and search its rounding /
        p_error again (a retrained model needs its own compile point: copying the
        trial's gave 0.89 test accuracy instead of 0.96 on breast_cancer).
    random_state : int, optional
    verbose : int, default=1
    """

    def __init__(self, estimator: Any, *, param_space: Mapping[str, Any] | None = None,
                 teacher: Any = None, max_accuracy_drop: float = 0.01,
                 reference_score: float | None = None,
                 n_trials: int = 20, timeout: float | None = None, storage: Any = None,
                 study_name: str | None = None, n_jobs: int = 1,
                 validation_fraction: float = 0.2, n_repeats: int = 3,
                 holdout_fraction: float = 0.2, multi_fidelity: bool = True,
                 cost_model: Any = "auto", cache_dir: Any = None, refit: bool = False,
                 random_state: int | None = None, verbose: int = 1) -> None:
        self.estimator = estimator
        self.param_space = param_space
        self.teacher = teacher
        self.max_accuracy_drop = max_accuracy_drop
        self.reference_score = reference_score
        self.n_trials = n_trials
        self.timeout = timeout
        self.storage = storage
        self.study_name = study_name
        self.n_jobs = n_jobs
        self.validation_fraction = validation_fraction
        self.n_repeats = n_repeats
        self.holdout_fraction = holdout_fraction
        self.multi_fidelity = multi_fidelity
        self.cost_model = cost_model
        self.cache_dir = cache_dir
        self.refit = refit
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- helpers
    def _reference(self, X_tr: np.ndarray, y_tr: np.ndarray, X_val: np.ndarray,
                   y_val: np.ndarray) -> float:
        if self.reference_score is not None:
            return float(self.reference_score)
        from sklearn.neural_network import MLPClassifier, MLPRegressor

        cls = MLPClassifier if is_classifier(self.estimator) else MLPRegressor
        self.reference_estimator_ = cls(max_iter=1000,
                                        random_state=self.random_state).fit(X_tr, y_tr)
        return float(self.reference_estimator_.score(X_val, y_val))

    def _resolve_cost_model(self) -> Any:
        """The cost model in seconds (calibrated now if needed), or None (complexity)."""
        from .units import resolve_cost_model

        return resolve_cost_model(self.cost_model, self.verbose)

    # --------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any) -> LatencySearch:
        """Run (or resume) the search; refit the fastest feasible point."""
        import optuna
        from sklearn.utils.validation import check_X_y

        X, y = check_X_y(X, y, dtype=np.float64, y_numeric=not is_classifier(self.estimator))
        if self.param_space is not None:
            validate_space(self.param_space, self.estimator)
        if self.n_trials < 1 or self.n_jobs < 1:
            raise ValueError("n_trials and n_jobs must be >= 1")
        strat = y if is_classifier(self.estimator) else None
        teacher = self.teacher
        if teacher is None:
            teacher = self.estimator.get_params().get("teacher")
        is_array = teacher is not None and _is_array_teacher(teacher)
        arrays = [X, y, *([np.asarray(teacher)] if is_array else [])]
        check: tuple[np.ndarray, np.ndarray] | None = None
        if self.holdout_fraction:  # the check split: never seen by training or tuning
            split = train_test_split(*arrays, test_size=self.holdout_fraction,
                                     stratify=strat, random_state=self.random_state)
            arrays, check = split[::2], (split[1], split[3])
            strat = arrays[1] if strat is not None else None
        parts = train_test_split(
            *arrays, test_size=self.validation_fraction, stratify=strat,
            random_state=self.random_state,
        )
        X_tr, X_val, y_tr, y_val = parts[:4]
        trial_teacher, teacher_key = self._prepare_teacher(
            teacher, X_tr, y_tr, parts[4] if is_array else None)
        self.reference_estimator_ = None
        self.reference_score_ = self._reference(X_tr, y_tr, X_val, y_val)
        self.threshold_ = self.reference_score_ - self.max_accuracy_drop
        cost_model = self._resolve_cost_model()
        self.latency_unit_ = "seconds" if cost_model is not None else "complexity"
        storage = self.storage
        if self.n_jobs > 1 and storage is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="latentopt-search-")
            storage = os.path.join(self._tmp.name, "study.journal")
        if self.cache_dir is not None:
            cache: Path | None = Path(self.cache_dir)
        else:
            local = _local_storage_dir(storage)
            cache = None if local is None else local / "latentopt-models"
        if cache is None:
            self._tmp_cache = tempfile.TemporaryDirectory(prefix="latentopt-models-")
            cache = Path(self._tmp_cache.name)
        cache.mkdir(parents=True, exist_ok=True)
        name = self.study_name or f"latentopt-{_data_key(X, y)}-{self.max_accuracy_drop}"
        if teacher_key and not self.study_name:
            name += f"-teacher-{teacher_key}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.NSGAIISampler(seed=self.random_state)
        study = optuna.create_study(
            study_name=name, storage=make_storage(storage), sampler=sampler,
            directions=["minimize", "maximize"], load_if_exists=True,
        )
        if not study.trials:  # a seeded start: where fast, accurate circuits usually are
            for seed in seed_configs(self.param_space or DEFAULT_SPACE, self.estimator):
                study.enqueue_trial(seed, user_attrs={"seeded": True}, skip_if_exists=True)
        objective = _Objective(self, (X_tr, y_tr, X_val, y_val), self.reference_score_,
                               cost_model, cache, teacher=trial_teacher,
                               teacher_key=teacher_key)
        self._optimize(study, objective, storage, name)
        self.study_ = study
        self._collect(study)
        self._check_holdout(objective, check)
        if self.best_trial_ is not None:
            self.best_estimator_ = self._best_estimator(objective, X, y)
        return self

    def _prepare_teacher(self, teacher: Any, X_tr: np.ndarray, y_tr: np.ndarray,
                         array_tr: np.ndarray | None) -> tuple[Any, str]:
        """Fit the teacher once (sets ``teacher_``); the trials' teacher and its key."""
        self.teacher_ = None
        if teacher is None:
            return None, ""
        if "teacher" not in self.estimator.get_params():
            raise ValueError(f"{type(self.estimator).__name__} has no 'teacher' parameter: "
                             "it cannot be distilled")
        from ..nn.distill import fit_teacher, teacher_targets

        trial_teacher = array_tr if array_tr is not None else fit_teacher(teacher, X_tr, y_tr)
        self.teacher_ = np.asarray(teacher) if array_tr is not None else trial_teacher
        # validates the teacher now (not in every trial) and keys the model cache
        if is_classifier(self.estimator):
            out = teacher_targets(trial_teacher, X_tr, classes=np.unique(y_tr))
        else:
            out = teacher_targets(trial_teacher, X_tr,
                                  n_outputs=1 if y_tr.ndim == 1 else y_tr.shape[1])
        key = hashlib.sha256(np.ascontiguousarray(out, dtype=np.float32).tobytes())
        return trial_teacher, key.hexdigest()[:12]

    def _best_estimator(self, objective: _Objective, X: np.ndarray, y: np.ndarray) -> Any:
        """The chosen model, compiled at a point validated for *that* model.

        ``refit=False``: the fastest feasible trial's own model (trained on the training
        part of ``X``, validated on the rest), from the model cache.  ``refit=True``: the
        same hyper-parameters retrained on all of ``X``; a retrained model is a different
        model, so its rounding / p_error are searched again (on the validation part,
        which it has now seen) rather than copied from the trial.
        """
        params = self.best_params_
        if not self.refit:
            est, _ = objective._fit({k: v for k, v in params.items()})
            est.compile(**self.best_compile_kwargs_, verbose=0)
            return est
        best = clone(self.estimator).set_params(**params)
        if objective.teacher is not None:
            best.set_params(teacher=self.teacher_)
        if self.verbose <= 1:
            best.set_params(verbose=0)
        best.fit(X, y)
        inner = search_compile(best, objective.data[2], objective.data[3],
                               max_accuracy_drop=self.max_accuracy_drop,
                               reference_score=self.reference_score_, n_repeats=self.n_repeats,
                               cost_model=objective.cost_model)
        if inner.best is None:  # the retrained model misses the budget: keep the trial's
            est, _ = objective._fit(dict(params))
            est.compile(**self.best_compile_kwargs_, verbose=0)
            return est
        return best.compile(**inner.compile_kwargs, verbose=0)

    def _check_holdout(self, objective: _Objective,
                       check: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Choose among validation-feasible trials on the check split (honest selection).

        Sets ``holdout_`` (reference, threshold and the rows checked there) and
        ``best_score_``: the chosen model's simulated score on the check split (without
        a check split, its validation score).  If no checked trial passes there, there
        is no best trial.
        """
        self.holdout_ = None
        best = self.best_trial_
        self.best_score_ = None if best is None else best["score"]
        if check is None or best is None:
            return
        X_chk, y_chk = check
        reference = (float(self.reference_score) if self.reference_score is not None
                     else float(self.reference_estimator_.score(X_chk, y_chk)))
        threshold = reference - self.max_accuracy_drop
        feasible = [r for r in self.results_ if r["feasible"] and r["cost"] < _NO_LATENCY]

        def load(row: dict[str, Any]) -> Any:
            est, _ = objective._fit(self._trial_params(row["trial"]))
            return est.compile(**self.study_.trials[row["trial"]].user_attrs["compile"],
                               verbose=0)

        chosen, checked = check_on_holdout(
            feasible, load, X_chk, y_chk, threshold,
            lambda e, X, y: score_under(e, X, y, "simulate"), n_repeats=self.n_repeats)
        self.holdout_ = {"reference_score": reference, "threshold": threshold,
                         "n_samples": int(len(y_chk)), "checked": checked}
        scores = {r["trial"]: r for r in checked}
        for row in self.results_:
            if row["trial"] in scores:
                row["holdout_score"] = scores[row["trial"]]["holdout_score"]
        if chosen is None:  # nothing holds on unseen data: no feasible answer
            self.best_trial_ = self.best_params_ = self.best_compile_kwargs_ = None
            self.best_score_ = None
            return
        self.best_trial_ = chosen
        self.best_params_ = self._trial_params(chosen["trial"])
        self.best_compile_kwargs_ = dict(self.study_.trials[chosen["trial"]].user_attrs["compile"])
        self.best_score_ = chosen["holdout_score"]

    def _trial_params(self, number: int) -> dict[str, Any]:
        params = dict(self.study_.trials[number].user_attrs["params"])
        if "hidden_layer_sizes" in params:
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        return params

    def _optimize(self, study: Any, objective: _Objective, storage: Any, name: str) -> None:
        import optuna
        from tqdm.auto import tqdm

        done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        remaining = max(0, self.n_trials - done)
        bar = tqdm(total=remaining, desc=f"search ({latency_label(self.latency_unit_, True)})",
                   unit="trial",
                   disable=self.verbose <= 0 or remaining == 0)
        threshold = self.threshold_

        pruned = [0]

        def progress(study: Any, trial: Any) -> None:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                bar.update(1)
            else:  # rejected by the cost bound or after short training: not counted
                pruned[0] += 1
            ok = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                  and t.user_attrs.get("constraint", [1])[0] <= 0]
            if ok:
                best = min(ok, key=lambda t: t.values[0])
                bar.set_postfix({f"best_{self.latency_unit_}": f"{best.values[0]:.4g}",
                                 "score": f"{best.values[1]:.4f}",
                                 "threshold": f"{threshold:.4f}",
                                 "screened_out": pruned[0]})

        stop = optuna.study.MaxTrialsCallback(self.n_trials,
                                              states=(optuna.trial.TrialState.COMPLETE,))
        procs = []
        if self.n_jobs > 1 and remaining > 0:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            for i in range(self.n_jobs - 1):
                seed = None if self.random_state is None else self.random_state + 1 + i
                p = ctx.Process(target=_worker, args=(name, storage, objective, self.n_trials,
                                                      self.timeout, seed))
                p.start()
                procs.append(p)
        try:
            if remaining > 0:
                study.optimize(objective, timeout=self.timeout, callbacks=[stop, progress])
        finally:
            for p in procs:
                p.join()
            bar.close()

    def _collect(self, study: Any) -> None:
        import optuna

        rows = []
        for t in study.trials:
            if t.state != optuna.trial.TrialState.COMPLETE:
                continue
            rows.append({
                "trial": t.number, **t.user_attrs.get("params", {}),
                # "cost" sorts; the unit's own key names it ("seconds" or "complexity")
                "cost": t.values[0], self.latency_unit_: t.values[0], "score": t.values[1],
                "feasible": t.user_attrs.get("constraint", [1])[0] <= 0,
                "pbs": t.user_attrs.get("pbs"), "max_tlu_bits": t.user_attrs.get("max_tlu_bits"),
                "tlus": t.user_attrs.get("tlus"), **(t.user_attrs.get("compile") or {}),
            })
        self.results_ = rows
        feasible = [r for r in rows if r["feasible"] and r["cost"] < _NO_LATENCY]
        self.pareto_front_ = sorted(
            [r for r in feasible if not any(
                o["cost"] <= r["cost"] and o["score"] >= r["score"]
                and (o["cost"] < r["cost"] or o["score"] > r["score"]) for o in feasible)],
            key=lambda r: r["cost"])
        best = min(feasible, key=lambda r: (r["cost"], -r["score"])) if feasible else None
        self.best_trial_ = best
        if best is None:
            self.best_params_ = None
            self.best_compile_kwargs_ = None
            return
        trial = study.trials[best["trial"]]
        params = dict(trial.user_attrs["params"])
        if "hidden_layer_sizes" in params:
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
        self.best_params_ = params
        self.best_compile_kwargs_ = dict(trial.user_attrs["compile"])

    # ------------------------------------------------------------ use and show
    def predict(self, X: Any, fhe: str | None = None) -> np.ndarray:
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X, fhe=fhe)

    def score(self, X: Any, y: Any) -> float:
        check_is_fitted(self, "best_estimator_")
        return float(self.best_estimator_.score(X, y))

    def summary(self) -> str:
        """The results table: every trial, Pareto points marked with ``*``."""
        check_is_fitted(self, "results_")
        front = {r["trial"] for r in self.pareto_front_}
        keys = ["trial", "hidden_layer_sizes", "n_w_bits", "n_a_bits", "pruning_ratio", "lr",
                "rounding_bits", "p_error", "pbs", "max_tlu_bits", self.latency_unit_, "score"]
        if any("distill_alpha" in r for r in self.results_):  # searched
            keys.insert(keys.index("lr") + 1, "distill_alpha")
        lines = [" ".join(f"{k[:12]:>12s}" for k in keys) + "  feasible"]
        for r in sorted(self.results_, key=lambda r: r["cost"]):
            cells = []
            for k in keys:
                v = r.get(k)
                cells.append(f"{v:12.4g}" if isinstance(v, float) else f"{str(v):>12s}")
            mark = "*" if r["trial"] in front else " "
            lines.append(" ".join(cells) + f"  {r['feasible']}{mark}")
        lines.append(f"reference score {self.reference_score_:.4f}, threshold "
                     f"{self.threshold_:.4f}; * = Pareto front")
        return "\n".join(lines)

    def plot_pareto(self, ax: Any = None) -> Any:
        """Matplotlib scatter of every trial, the Pareto front and the threshold."""
        import matplotlib.pyplot as plt

        check_is_fitted(self, "results_")
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ok = [r for r in self.results_ if r["cost"] < _NO_LATENCY]
        ax.scatter([r["cost"] for r in ok], [r["score"] for r in ok],
                   c=["tab:blue" if r["feasible"] else "tab:gray" for r in ok], s=18,
                   label="trials")
        front = self.pareto_front_
        ax.plot([r["cost"] for r in front], [r["score"] for r in front], "o-",
                color="tab:red", label="Pareto front")
        ax.axhline(self.threshold_, ls="--", color="k", lw=0.8, label="accuracy budget")
        ax.set_xscale("log")
        ax.set_xlabel(latency_label(self.latency_unit_))
        ax.set_ylabel("validation score")
        ax.legend(loc="lower right")
        return ax

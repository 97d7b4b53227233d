"""Outer search: what needs retraining, multi-objective, on Optuna.

:class:`LatencySearch` is a scikit-learn meta-estimator.  Each Optuna trial samples
bit-widths, depth/width and pruning from a search space, trains a clone of the
estimator, then runs the inner search (rounding bits and ``p_error`` with FHE
simulation, :func:`~latentopt.search.inner.search_compile`) to find the fastest compiled
circuit of that model within the accuracy budget.  The two objectives are latency
(predicted by the cost model, or concrete's complexity) and the validation metric;
the budget is an Optuna constraint (NSGA-II).

Studies persist to any Optuna storage (:mod:`latentopt.search.storage`:
``"sqlite:///search.db"``, ``"postgresql://..."`` for several machines, or a path
ending in ``.journal`` for a file journal that several local processes share) and
resume: a study records what it searches and refuses a resume by another search,
evaluated configurations are never redone, dead trials are recovered, and trained
models are cached on disk by every parameter (:mod:`latentopt.search.trials`).  When no
configuration meets the budget, the search says so (:attr:`LatencySearch.outcome_`,
:mod:`latentopt.search.results`) instead of failing.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, is_classifier
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from .objective import _NO_LATENCY, _data_key, _Objective, trial_params
from .reference import fit_reference
from .refit import final_estimator
from .results import (
    Outcome,
    collect,
    make_outcome,
    pareto_front,
    plot_front,
    summary_footer,
    summary_table,
)
from .scoring import score_in_mode
from .screening import seed_configs
from .selection import make_check, select_on_check
from .space import search_space
from .storage import local_storage_dir, make_storage, recover_stale_trials
from .teacher import framed, is_array_teacher, prepare_teacher, search_teacher
from .trials import (
    bind_identity,
    check_main_guard,
    fingerprint,
    make_sampler,
    n_evaluated,
    optimize,
    study_identity,
)
from .units import latency_label, resolve_cost_model
from .validation import check_search_args, split_error

__all__ = ["BudgetNotMetWarning", "LatencySearch", "make_storage"]


class BudgetNotMetWarning(UserWarning):
    """No configuration met the accuracy budget (see ``LatencySearch.outcome_``)."""


class LatencySearch(MetaEstimatorMixin, BaseEstimator):
    """Find the fastest encrypted model within an accuracy budget, and the Pareto front.

    Parameters
    ----------
    estimator : QuantizedMLPClassifier, QuantizedMLPRegressor, QuantizedTorchClassifier, ...
        Template; sampled parameters are set on clones.  A torch estimator starts every
        trial from its float ``module`` (QAT fine-tuning, channel pruning); ``X`` may
        then be image-shaped, ``(n_samples, *input_shape)``.
    param_space : dict, optional
        See :mod:`latentopt.search.space`; default :data:`~latentopt.search.space.DEFAULT_SPACE`
        (:data:`~latentopt.search.space.TORCH_SPACE` for torch estimators).
        ``distill_alpha`` / ``distill_temperature`` may be searched too (with a teacher).
    teacher : estimator, torch.nn.Module or array-like, optional
        Distil every trial's model from this teacher (see the estimators' ``teacher``);
        default: the estimator's own ``teacher`` parameter.  It is fitted *once*, on the
        training part of ``X`` (unless already fitted), kept as ``teacher_`` and shared
        by every trial (and worker process, by pickling) and by the refit; an array
        teacher has one row per sample of ``X`` and is split with it.  With a DataFrame
        ``X``, a scikit-learn teacher sees DataFrames of its columns (wrapped in
        :class:`~latentopt.search.teacher.FramedTeacher`), as in the estimators' ``fit``.
        Trained models
        are cached per teacher (keyed by its outputs), and the default study name
        includes that key.
    max_accuracy_drop : float, default=0.01
        Allowed drop of the validation metric below the reference.
    reference_score : float, optional
        Default: a float scikit-learn MLP's validation score (same split); for a torch
        estimator, its float ``module``'s score (a module factory: the MLP's, on the
        flattened samples).
    scoring : str or callable, optional
        The metric of the budget: a scikit-learn scorer name (``"balanced_accuracy"``,
        ``"f1_macro"``, ``"roc_auc"``, ``"neg_mean_absolute_error"``, ...) or a callable
        ``scorer(estimator, X, y)``, higher is better.  Default: the estimator's
        ``score`` (accuracy, R^2).  On imbalanced classes accuracy is met by a model that
        predicts the majority class: weigh the classes (:mod:`~latentopt.search.scoring`).
        ``max_accuracy_drop`` and ``reference_score`` are in its units.
    n_trials : int, default=20
        Evaluated trials (completed, or failed with a recorded error) the study should
        hold, counted across all workers (a resumed study runs only the rest).  Trials
        repeating an evaluated or running configuration are skipped, not counted.
    timeout : float, optional
        Seconds after which no new trial starts.
    storage : str or optuna storage, optional
        Persist/resume/share the study (:func:`~latentopt.search.storage.make_storage`).
    study_name : str, optional
        Default: derived from the study's identity (template, space, data, budget).
        Resuming a named study with another identity raises
        :class:`~latentopt.search.trials.StudyMismatchError`.
    n_jobs : int, default=1
        Worker processes (>1 needs, or creates, a storage they share).  Workers are
        spawned: a script must call ``fit`` under ``if __name__ == "__main__":``
        (checked).
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
    check_folds : int, default=3
        How the check is made.  1: each trial's own model is scored on the check split.
        ``k > 1``: the configuration is cross-validated in ``k`` folds over the training
        and check rows pooled (never the validation rows), each fold trained without its
        rows, compiled at the trial's point and simulated; the float reference is refitted
        on the same folds.  Several times more rows decide than the check split alone
        (which is noisy: about 2.5 points of standard error on 225 rows), at ``k``
        trainings per re-checked trial (at most 3 trials).
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
    refit : bool, default=True
        ``True``: retrain the chosen configuration on all of ``X`` (the trials train on
        64% of it) and compile it at the point the check validated, verified on the
        retrained model and searched again if rounding costs it more there than the
        search allowed the trial (:mod:`latentopt.search.refit`).  ``False``:
        ``best_estimator_`` is the fastest checked trial's own model, compiled at its
        chosen point.
    random_state : int, optional
        Seeds the split, the reference and the samplers (each worker and each resume
        gets its own stream derived from it).
    verbose : int, default=1

    Attributes
    ----------
    best_estimator_ : estimator or None
        The fastest model within the budget, compiled; None when the budget was not met.
    budget_met_ : bool
    outcome_ : :class:`~latentopt.search.results.Outcome`
        Whether the budget was met; if not, the best validation score reached, its
        latency and what to change (also in :meth:`summary`).
    results_, failures_ : list of dict
        Completed trials, and trials that failed with their ``error``.
    pareto_front_ : list of dict
    best_trial_, best_params_, best_compile_kwargs_ : dict or None
    reference_score_, threshold_ : float
    refit_ : dict or None
        With ``refit=True`` and a chosen model: the retrained model's unrounded and
        simulated scores on the rows that verified its compile point, the loss allowed
        there, the point, and whether it was searched again.
    study_ : optuna.Study
    """

    def __init__(self, estimator: Any, *, param_space: Mapping[str, Any] | None = None,
                 teacher: Any = None, max_accuracy_drop: float = 0.01,
                 reference_score: float | None = None, scoring: Any = None,
                 n_trials: int = 20, timeout: float | None = None, storage: Any = None,
                 study_name: str | None = None, n_jobs: int = 1,
                 validation_fraction: float = 0.2, n_repeats: int = 3,
                 holdout_fraction: float = 0.2, check_folds: int = 3,
                 multi_fidelity: bool = True,
                 cost_model: Any = "auto", cache_dir: Any = None, refit: bool = True,
                 random_state: int | None = None, verbose: int = 1) -> None:
        self.estimator = estimator
        self.param_space = param_space
        self.teacher = teacher
        self.max_accuracy_drop = max_accuracy_drop
        self.reference_score = reference_score
        self.scoring = scoring
        self.n_trials = n_trials
        self.timeout = timeout
        self.storage = storage
        self.study_name = study_name
        self.n_jobs = n_jobs
        self.validation_fraction = validation_fraction
        self.n_repeats = n_repeats
        self.holdout_fraction = holdout_fraction
        self.check_folds = check_folds
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
        self.reference_estimator_ = fit_reference(self.estimator, X_tr, y_tr,
                                                  self.random_state)
        return score_in_mode(self.reference_estimator_, X_val, y_val, None, self.scoring)

    def _resolve_cost_model(self) -> Any:
        """The cost model in seconds (calibrated now if needed), or None (complexity)."""
        return resolve_cost_model(self.cost_model, self.verbose)

    # --------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any) -> LatencySearch:
        """Run (or resume) the search; keep the fastest feasible point.

        Every argument is checked before any training.  When no configuration meets
        the budget, ``best_estimator_`` is None, ``budget_met_`` False and
        ``outcome_`` says what was reached and what to change (a
        :class:`BudgetNotMetWarning` carries the same message).
        """
        import optuna
        from sklearn.utils.validation import validate_data

        check_search_args(self)
        if self.n_jobs > 1:
            check_main_guard()
        classifier = is_classifier(self.estimator)
        teacher = framed(search_teacher(self), X)  # a DataFrame's teacher sees its columns
        # validate_data keeps a DataFrame's column names (feature_names_in_), checked at
        # predict: reordered columns were accepted and changed 78 of 300 predictions
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=not classifier,
                             multi_output=not classifier,
                             allow_nd=hasattr(self.estimator, "_float_reference"))
        if classifier and len(np.unique(y)) < 2:
            raise ValueError(f"y holds a single class ({np.unique(y)[0]!r}): a classifier "
                             f"needs at least 2")
        spec = self.storage
        if self.n_jobs > 1 and spec is None:
            self._tmp = self._fresh_tmp("_tmp", "latentopt-search-")
            spec = os.path.join(self._tmp.name, "study.journal")
        storage = make_storage(spec)  # a malformed URL fails here, before any training
        strat = y if is_classifier(self.estimator) else None
        is_array = is_array_teacher(teacher)
        arrays = [X, y, *([np.asarray(teacher)] if is_array else [])]
        check: tuple[np.ndarray, np.ndarray] | None = None
        try:
            if self.holdout_fraction:  # the check split: never seen by training or tuning
                what = "check"
                split = train_test_split(*arrays, test_size=self.holdout_fraction,
                                         stratify=strat, random_state=self.random_state)
                arrays, check = split[::2], (split[1], split[3])
                strat = arrays[1] if strat is not None else None
            what = "validation"
            parts = train_test_split(*arrays, test_size=self.validation_fraction,
                                     stratify=strat, random_state=self.random_state)
        except ValueError as exc:
            if strat is None or "least populated class" not in str(exc):
                raise
            raise split_error(exc, strat, what) from exc
        X_tr, X_val, y_tr, y_val = parts[:4]
        trial_teacher, teacher_key = self._prepare_teacher(
            teacher, X_tr, y_tr, parts[4] if is_array else None)
        self.reference_estimator_ = None
        self.reference_score_ = self._reference(X_tr, y_tr, X_val, y_val)
        self.threshold_ = self.reference_score_ - self.max_accuracy_drop
        self.cost_model_ = self._resolve_cost_model()
        self.latency_unit_ = "seconds" if self.cost_model_ is not None else "complexity"
        cache = self._cache_dir(spec if isinstance(spec, (str, os.PathLike)) else storage)
        identity = study_identity(self, _data_key(X, y), teacher_key)
        name = self.study_name or f"latentopt-{fingerprint(identity)}"
        if teacher_key and not self.study_name:
            name += f"-teacher-{teacher_key}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=make_sampler(self.random_state),
            directions=["minimize", "maximize"], load_if_exists=True,
        )
        bind_identity(study, identity)
        if not study.trials:  # a seeded start: where fast, accurate circuits usually are
            space = search_space(self.param_space, self.estimator)
            for seed in seed_configs(space, self.estimator, X_tr[:1]):
                study.enqueue_trial(seed, user_attrs={"seeded": True}, skip_if_exists=True)
        study.sampler = make_sampler(self.random_state, 0, len(study.get_trials(deepcopy=False)))
        check_spec = make_check(self, X_tr, y_tr, check, trial_teacher)
        objective = _Objective(self, (X_tr, y_tr, X_val, y_val), self.reference_score_,
                               self.cost_model_, cache, teacher=trial_teacher,
                               teacher_key=teacher_key, check=check_spec)
        self._optimize(study, objective, spec if spec is not None else storage)
        self._objective = objective
        self.study_ = study
        self._collect(study)
        select_on_check(self, objective, check_spec)
        if not self.budget_met_:
            warnings.warn(self.outcome_.message, BudgetNotMetWarning, stacklevel=2)
        self.refit_ = None
        self.best_estimator_ = (self._best_estimator(objective, X, y)
                                if self.best_trial_ is not None else None)
        if self.best_estimator_ is not None and hasattr(self, "feature_names_in_"):
            # trained on the same columns, as an array: it checks a DataFrame's names too
            self.best_estimator_.feature_names_in_ = self.feature_names_in_
        if self.best_estimator_ is not None:
            self._warn_if_constant(X)
        return self

    def _warn_if_constant(self, X: np.ndarray) -> None:
        """A budget at or below a constant predictor's score is met by a circuit whose
        lookups all round to constants (0 PBS): say so where it happens."""
        best: Any = self.best_estimator_
        with warnings.catch_warnings():  # X is the validated array of a DataFrame's rows
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            out = np.asarray(best.predict(X[:2000]))
        if len(out) < 2 or not np.all(out == out[:1]):
            return
        msg = (f" The chosen model predicts the same value ({out[0]!r}) for every row of X: "
               f"the threshold {self.threshold_:.4f} is at or below what a constant "
               f"predictor scores.  Lower max_accuracy_drop or check reference_score"
               + (", or weigh the classes: scoring='balanced_accuracy'." if
                  is_classifier(best) and getattr(self, "scoring", None) is None else "."))
        self.outcome_.message += msg
        warnings.warn(msg.strip(), UserWarning, stacklevel=3)

    def _fresh_tmp(self, attr: str, prefix: str) -> tempfile.TemporaryDirectory[str]:
        """A new temporary directory; a previous fit's is removed now (left to the
        garbage collector, it warned "Implicitly cleaning up" on a second fit)."""
        old = self.__dict__.pop(attr, None)
        if old is not None:
            old.cleanup()
        return tempfile.TemporaryDirectory(prefix=prefix)

    def _cache_dir(self, storage: Any) -> Path:
        if self.cache_dir is not None:
            cache = Path(self.cache_dir)
        else:
            local = local_storage_dir(storage)
            if local is None:
                self._tmp_cache = self._fresh_tmp("_tmp_cache", "latentopt-models-")
                cache = Path(self._tmp_cache.name)
            else:
                cache = local / "latentopt-models"
        cache.mkdir(parents=True, exist_ok=True)
        return cache

    def _prepare_teacher(self, teacher: Any, X_tr: np.ndarray, y_tr: np.ndarray,
                         array_tr: np.ndarray | None) -> tuple[Any, str]:
        """Fit the teacher once (sets ``teacher_``); the trials' teacher and its key
        (:func:`~latentopt.search.teacher.prepare_teacher`)."""
        self.teacher_ = None
        trial_teacher, self.teacher_, key = prepare_teacher(self.estimator, teacher, X_tr,
                                                            y_tr, array_tr)
        return trial_teacher, key

    def _best_estimator(self, objective: _Objective, X: np.ndarray, y: np.ndarray) -> Any:
        """The chosen model, compiled (:func:`~latentopt.search.refit.final_estimator`)."""
        return final_estimator(self, objective, X, y)

    def _optimize(self, study: Any, objective: _Objective, storage: Any) -> None:
        from tqdm.auto import tqdm

        recover_stale_trials(study)
        done = n_evaluated(study)
        remaining = max(0, self.n_trials - done)
        bar = tqdm(total=remaining, desc=f"search ({latency_label(self.latency_unit_, True)})",
                   unit="trial", disable=self.verbose <= 0 or remaining == 0)
        threshold = self.threshold_

        def progress(study: Any, trial: Any) -> None:
            bar.update(max(0, min(remaining, n_evaluated(study) - done) - bar.n))
            ok = [r for r in collect(study)[0] if r["feasible"] and r["cost"] < _NO_LATENCY]
            if ok:
                best = min(ok, key=lambda r: r["cost"])
                bar.set_postfix({f"best_{self.latency_unit_}": f"{best['cost']:.4g}",
                                 "score": f"{best['score']:.4f}",
                                 "threshold": f"{threshold:.4f}"})

        try:
            optimize(study, objective, self.n_trials, n_jobs=self.n_jobs, storage=storage,
                     timeout=self.timeout, seed=self.random_state, callbacks=[progress])
        finally:
            bar.close()

    def _collect(self, study: Any) -> None:
        rows, failures = collect(study, self.latency_unit_)
        self.results_ = rows
        self.failures_ = failures
        self.pareto_front_ = pareto_front(rows)
        feasible = [r for r in rows if r["feasible"] and r["cost"] < _NO_LATENCY]
        best = min(feasible, key=lambda r: (r["cost"], -r["score"])) if feasible else None
        self.best_trial_ = best
        self.budget_met_ = best is not None
        self.outcome_: Outcome = make_outcome(
            rows, failures, best, reference_score=self.reference_score_,
            threshold=self.threshold_, max_accuracy_drop=self.max_accuracy_drop,
            n_trials=self.n_trials, seconds=self.cost_model_ is not None,
            torch=hasattr(self.estimator, "_float_reference"))
        if best is None:
            self.best_params_ = None
            self.best_compile_kwargs_ = None
            return
        trial = study.trials[best["trial"]]
        self.best_params_ = trial_params(trial)
        self.best_compile_kwargs_ = dict(trial.user_attrs["compile"])

    # ------------------------------------------------------------ use and show
    def _chosen(self) -> Any:
        check_is_fitted(self, "outcome_")
        if self.best_estimator_ is None:
            raise RuntimeError("no model to use: " + self.outcome_.message)
        return self.best_estimator_

    def trial_estimator(self, trial: int) -> Any:
        """The model trial number ``trial`` trained (from the model cache, no retraining
        unless evicted), compiled at the point the trial chose: e.g. to measure every
        point of ``pareto_front_``."""
        check_is_fitted(self, "results_")
        n = len(self.study_.trials)
        if not 0 <= int(trial) < n:
            raise ValueError(f"no trial {trial}: the study has trials 0 to {n - 1}")
        record = self.study_.trials[int(trial)]
        if "compile" not in record.user_attrs:
            raise ValueError(f"trial {trial} has no compiled point")
        return self._objective.compiled(trial_params(record), record.user_attrs["compile"])

    def predict(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Predictions of ``best_estimator_`` (RuntimeError if the budget was not met);
        a DataFrame must have the columns the search was fitted on, in that order."""
        return np.asarray(self._chosen().predict(X, fhe=fhe))

    def score(self, X: Any, y: Any) -> float:
        """Score of ``best_estimator_`` (``scoring``, else its own ``score``;
        RuntimeError if the budget was not met)."""
        return score_in_mode(self._chosen(), X, y, "disable", self.scoring)

    def predict_proba(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Class probabilities of ``best_estimator_`` (a classifier search only)."""
        chosen = self._chosen()
        if not hasattr(chosen, "predict_proba"):
            raise AttributeError("predict_proba: the searched estimator is not a classifier")
        return np.asarray(chosen.predict_proba(X, fhe=fhe))

    @property
    def classes_(self) -> np.ndarray:
        """The chosen classifier's classes (as ``GridSearchCV.classes_``); an
        AttributeError (so ``hasattr`` is False) before fit or without a chosen model."""
        try:
            return np.asarray(self._chosen().classes_)
        except RuntimeError as exc:
            raise AttributeError(str(exc)) from None

    def summary(self) -> str:
        """The results table: every trial, Pareto points marked with ``*``; the outcome."""
        check_is_fitted(self, "results_")
        seconds = self.cost_model_ is not None
        footer = summary_footer(self.results_, self.failures_, self.outcome_.message,
                                self.reference_score_, self.threshold_, seconds,
                                getattr(self, "holdout_", None))
        return summary_table(self.results_, self.pareto_front_, footer, seconds)

    def plot_pareto(self, ax: Any = None) -> Any:
        """Matplotlib scatter of every trial, the Pareto front and the threshold.

        The legend sits above the axes (never on the points); a new figure uses
        matplotlib's constrained layout, so the axis labels stay inside it.
        """
        check_is_fitted(self, "results_")
        xlabel = latency_label(self.latency_unit_)
        return plot_front(self.results_, self.pareto_front_, self.threshold_, xlabel, ax)

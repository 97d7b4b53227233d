"""Honest selection: the budget is checked on data the search never tuned on.

The trials tune everything (architecture, bits, rounding, ``p_error``) on one validation
split; picking the fastest of dozens of configurations that pass on a few hundred rows
overfits that split (measured: 1 point on validation, 5.8 below float on test).  So the
search keeps a second held-out split, the *check* split, never used by the trials.

How the fastest validation-feasible trials are re-checked (``check_folds``):

* ``check_folds=1``: each trial's own model is scored on the check split with FHE
  simulation, against the float reference scored on the same rows.
* ``check_folds=k > 1`` (default 3): the check split alone is small (a 2-point budget is
  a handful of rows on a few hundred, and the standard error of an accuracy on 225 rows
  is about 2.5 points), so the configuration is *cross-validated* instead, on the
  training and check rows pooled (never the validation rows the trials were selected
  on): ``k`` folds, each trained without its fold, compiled at the trial's rounding and
  ``p_error``, and scored under simulation on its fold; the float reference is refitted
  and scored on the same folds.  Every pooled row counts once, so the verdict rests on
  all the training and check rows instead of the check split alone.  It costs ``k``
  trainings per re-checked trial, at most :data:`MAX_CV_CHECKS` trials.

The chosen model is the fastest that passes; its reported accuracy is the checked one.

Every configuration checked is one more chance for a model below the budget to pass
by luck, and the search checks a dozen on hard data (the winner's curse): measured on
a generated 2-class set, the 13th configuration checked passed at 0.880 against a
threshold of 0.877 and scored 4.1 points below float on test, whatever its training
seed.  So the ``n``-th configuration checked in a search must beat the threshold by
:meth:`Check.margin`, ``se * z(1 - 1/(2n))``, where ``se`` is the standard error of an
accuracy at the threshold on the check's rows and ``z`` the normal quantile: a
configuration exactly at the threshold passes the first check half of the time, and the
``n``-th with probability ``1/(2n)`` (Bonferroni over the configurations checked so
far).  Zero for the first; 1.77 standard errors for the 13th (2.3 points there).  The
expected maximum of ``n`` independent scores, ``se * sqrt(2 ln n)``, was tried first
and measured too strict: on breast_cancer (358 cross-validated rows, a 2-point budget)
it refused the 3rd and 4th configurations checked, 1.2 and 0.6 points above the plain
threshold, and the search chose a model 1.6 times slower; the checks share their rows
and reference, so their errors are far from independent.  Regressors (R^2 has no
binomial standard error) get no margin.

The check also runs *during* the study (:class:`Check`, built once per fit and handed to
the trial objective): a trial that would become the fastest validation-feasible one is
checked at once, and if the check refutes it, it is recorded as infeasible (constraint
violated by the check's shortfall, ``refuted`` user attribute).  Without that, one lucky
validation score made a small model look feasible, its latency became the cap, and the
cost bound then rejected every larger configuration before training: on a generated
3-class set a (16,) 3-bit model scored 0.883 on validation (float 0.861) and 0.80 in the
check, and the study ended with 10 completed trials of 62 and no model.

During the study, compiled points slower than the best validation-feasible point are
not simulated (``latency_cap``): such trials record only their fast, inaccurate points.
When the check then refutes every validation-feasible trial, the cap came from a lucky
point, so :func:`reopen_capped` runs the inner search again *without* the cap on the
most accurate capped models (unrounded validation score within the budget, at most
:data:`MAX_REOPEN`), and their fastest feasible points go through the same check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .reference import quiet_targets
from .scoring import ACCURACY_LIKE, score_in_mode

__all__ = ["MAX_CHECKS", "MAX_CV_CHECKS", "MAX_REOPEN", "Check", "check_on_holdout",
           "cv_folds", "make_check", "reopen_capped", "select_on_check"]

#: Feasible trials re-scored on the check split, fastest first.
MAX_CHECKS = 6
#: Feasible trials cross-validated (``check_folds`` trainings each), fastest first.
MAX_CV_CHECKS = 3
#: Capped trials searched again without the cap when every checked trial failed.
MAX_REOPEN = 3
#: Compile keys of a result row (the trial's chosen point).
POINT_KEYS = ("rounding_bits", "rounding_method", "p_error")


def _verdict(row: dict[str, Any], values: Sequence[float], threshold: float) -> dict[str, Any]:
    """``row`` with its check scores: ``holdout_score`` (mean over repeats),
    ``holdout_min``, ``holdout_threshold`` (``threshold``, the margin included) and
    ``holdout_pass`` (every repeat meets ``threshold``).

    Every repeat, not the mean: the check walks up to a dozen candidates that sit at the
    budget's edge and takes the first that passes, so a verdict on the mean lets the
    luckiest marginal one through.  Measured (15-minute searches, 1-point budget): with
    the mean, gen_2c_10f chose a model that passed by 0.2 point (0.879 against 0.877)
    and scored 4.1 points below float on test, and gen_5c_40f one that passed by 0.02
    point and scored 3.0 below; with every repeat, the first found no model and the
    second chose one 2.1 below.
    """
    values = [float(v) for v in values]
    return dict(row, holdout_score=float(np.mean(values)), holdout_min=float(min(values)),
                holdout_threshold=float(threshold),
                holdout_pass=bool(min(values) >= threshold))


def check_on_holdout(rows: Sequence[dict[str, Any]],
                     scores: Callable[[dict[str, Any]], Sequence[float]],
                     threshold: float | Callable[[dict[str, Any]], float],
                     max_checks: int = MAX_CHECKS,
                     key: str = "cost") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The fastest row (trial) that also meets ``threshold`` on unseen rows.

    Parameters
    ----------
    rows : result rows of validation-feasible trials (each with ``key``, its latency)
    scores : row -> its simulated scores on unseen rows, one per repeat (all must pass:
        TLU errors are random)
    threshold : the budget on those rows (the reference scored there minus the drop),
        or row -> its threshold (called once per row checked, in order: the margin
        grows with the configurations checked)
    max_checks : rows tried: the fastest ``max_checks - 1``, then the most accurate of the
        rest (on validation).  The search drives the fastest rows to the edge of the
        budget, where the check refutes many (the validation split's luck); the most
        accurate row is the one most likely to hold, and without it a search whose
        fastest rows all sit on the edge would end with nothing.

    Returns
    -------
    tuple
        The chosen row (or None), and the checked rows: copies with ``holdout_score``
        (mean over repeats), ``holdout_min`` and ``holdout_pass`` added.
    """
    checked: list[dict[str, Any]] = []
    order = sorted(rows, key=lambda r: (r[key], -r.get("score", 0.0)))
    if len(order) > max_checks >= 2:
        rest = order[max_checks - 1:]
        order = order[: max_checks - 1] + [max(rest, key=lambda r: (r.get("score", 0.0),
                                                                    -r[key]))]
    for row in order[:max_checks]:
        out = _verdict(row, scores(row), threshold(row) if callable(threshold) else threshold)
        checked.append(out)
        if out["holdout_pass"]:
            return out, checked
    return None, checked


def cv_folds(y: np.ndarray, k: int, classification: bool,
             seed: int | None) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """``k`` shuffled folds (stratified for classification), or None when some class
    has fewer than ``k`` rows (then the plain check split is used)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if classification:
        if np.unique(y, return_counts=True)[1].min() < k:
            return None
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(y, y))
    return list(KFold(k, shuffle=True, random_state=seed).split(y))


def _cv_reference(reference: Any, X: np.ndarray, y: np.ndarray,
                  folds: list[tuple[np.ndarray, np.ndarray]], scoring: Any = None) -> float:
    """The float reference refitted and scored on every fold, pooled over the rows."""
    from sklearn.base import clone

    total = 0.0
    for tr, te in folds:
        with quiet_targets():
            ref = clone(reference).fit(X[tr], y[tr])
        total += score_in_mode(ref, X[te], y[te], None, scoring) * len(te)
    return total / len(y)


def _cv_scores(fit: Callable[[dict[str, Any], np.ndarray, np.ndarray], Any],
               params: dict[str, Any], point: dict[str, Any], X: np.ndarray, y: np.ndarray,
               folds: list[tuple[np.ndarray, np.ndarray]], n_repeats: int,
               score: Callable[[Any, np.ndarray, np.ndarray], float]) -> list[float]:
    """A configuration's simulated score pooled over the folds, one per repeat."""
    totals = np.zeros(max(1, n_repeats))
    for tr, te in folds:
        est = fit(params, X[tr], y[tr]).compile(**point, verbose=0)
        totals += np.array([score(est, X[te], y[te]) for _ in totals]) * len(te)
    return list(totals / len(y))


def reopen_capped(search: Any, objective: Any, params: Callable[[dict[str, Any]], dict],
                  exclude: set[int]) -> list[dict[str, Any]]:
    """Validation-feasible rows of capped trials, searched again without the cap.

    Candidates: completed trials whose inner search skipped points as slower than the
    best feasible one, whose unrounded validation score meets the threshold, most
    accurate first (at most :data:`MAX_REOPEN`).  Each one's model (from the model
    cache) gets a full inner search; the rows returned carry its fastest feasible point.
    """
    from .inner import scorer_of, search_compile

    pool = [t for t in search.study_.trials
            if t.state.name == "COMPLETE" and t.user_attrs.get("capped")
            and t.number not in exclude
            and t.user_attrs.get("unrounded_score", -np.inf) >= search.threshold_]
    pool.sort(key=lambda t: -t.user_attrs["unrounded_score"])
    rows = []
    for t in pool[:MAX_REOPEN]:
        row = {"trial": t.number, **t.user_attrs["params"]}
        est, _ = objective._fit(params(row))
        inner = search_compile(est, objective.data[2], objective.data[3],
                               max_accuracy_drop=search.max_accuracy_drop,
                               reference_score=search.reference_score_,
                               n_repeats=search.n_repeats, cost_model=objective.cost_model,
                               scorer=scorer_of(getattr(search, "scoring", None)))
        if inner.best is not None:
            rows.append(dict(row, cost=inner.best.latency, score=inner.best.score,
                             feasible=True, pbs=inner.best.pbs, reopened=True,
                             max_tlu_bits=inner.best.max_tlu_bits, **inner.compile_kwargs))
    return rows


def _simulate(est: Any, X: np.ndarray, y: np.ndarray, scoring: Any = None) -> float:
    from .inner import score_under

    return score_under(est, X, y, "simulate", scoring)


@dataclass
class Check:
    """How a configuration is checked on rows the trials never tuned on.

    ``folds`` given: cross-validation over ``X, y`` (the training and check rows
    pooled); else ``X, y`` is the check split, scored with the trial's own model.
    Picklable (worker processes run it inside trials).
    """

    X: np.ndarray
    y: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] | None
    reference_score: float
    threshold: float
    n_repeats: int
    #: accuracy (a binomial standard error, so a margin) or R^2 (no margin)
    classification: bool = True
    #: the search's ``scoring`` (None: the estimators' own score)
    scoring: Any = None

    def margin(self, n: int) -> float:
        """What the ``n``-th configuration checked in a search must beat the threshold
        by: ``se * z(1 - 1/(2n))``, ``se = sqrt(t (1 - t) / N)`` at the threshold ``t`` on
        the ``N`` rows checked, ``z`` the standard normal quantile (zero for the first,
        and for regressors)."""
        if not self.classification or n <= 1 or len(self.y) == 0:
            return 0.0
        t = min(max(float(self.threshold), 0.0), 1.0)
        z = NormalDist().inv_cdf(1.0 - 0.5 / n)
        rows = float(len(self.y))
        if self.scoring == "balanced_accuracy":  # a mean of per-class recalls: the rare
            counts = np.unique(self.y, return_counts=True)[1]  # classes' rows count most
            rows = float(len(counts) ** 2 / np.sum(1.0 / counts))
        return float(np.sqrt(t * (1.0 - t) / rows) * z)

    def threshold_for(self, n: int) -> float:
        """The threshold of the ``n``-th configuration checked, its margin included."""
        return self.threshold + self.margin(n)

    @property
    def method(self) -> str:
        return "cross-validation" if self.folds is not None else "check split"

    @property
    def max_checks(self) -> int:
        return MAX_CV_CHECKS if self.folds is not None else MAX_CHECKS

    def scores(self, objective: Any, params: dict[str, Any],
               point: dict[str, Any]) -> list[float]:
        """Simulated scores of configuration ``params`` compiled at ``point``, one per
        repeat (``objective._fit`` trains, or loads from the model cache)."""
        if self.folds is not None:
            def fit(p: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Any:
                return objective._fit(p, X, y)[0]

            return _cv_scores(fit, params, point, self.X, self.y, self.folds,
                              self.n_repeats, functools.partial(_simulate,
                                                                scoring=self.scoring))
        est = objective.compiled(params, point)
        return [_simulate(est, self.X, self.y, self.scoring)
                for _ in range(max(1, self.n_repeats))]

    def describe(self) -> dict[str, Any]:
        return {"reference_score": self.reference_score, "threshold": self.threshold,
                "n_samples": len(self.y), "method": self.method,
                "folds": len(self.folds) if self.folds is not None else 1}


def make_check(search: Any, X_tr: np.ndarray, y_tr: np.ndarray,
               check: tuple[np.ndarray, np.ndarray] | None, teacher: Any) -> Check | None:
    """The check of a search about to run (None without a check split).

    ``check_folds > 1`` (and no array teacher, which follows rows): cross-validation on
    the training and check rows pooled, against the float reference refitted on the
    same folds (``search.reference_estimator_``) unless the user fixed
    ``reference_score``; otherwise the check split, against the reference scored there.
    """
    from sklearn.base import is_classifier

    if check is None:
        return None
    X_chk, y_chk = check
    k = int(getattr(search, "check_folds", 1) or 1)
    folds = None
    if k > 1 and not isinstance(teacher, np.ndarray):
        X_pool, y_pool = np.concatenate([X_tr, X_chk]), np.concatenate([y_tr, y_chk])
        folds = cv_folds(y_pool, k, is_classifier(search.estimator), search.random_state)
        if folds is None:
            import warnings

            counts = np.unique(y_pool, return_counts=True)[1]
            warnings.warn(
                f"check_folds={k}: a class has only {counts.min()} of the training and "
                f"check rows, too few for {k} stratified folds; the budget is checked on "
                f"the check split alone ({len(y_chk)} rows, a noisier verdict)",
                UserWarning, stacklevel=3)
    fixed, scoring = search.reference_score, getattr(search, "scoring", None)
    if folds is not None:
        reference = (float(fixed) if fixed is not None
                     else _cv_reference(search.reference_estimator_, X_pool, y_pool, folds,
                                        scoring))
        X_c, y_c = X_pool, y_pool
    else:
        reference = (float(fixed) if fixed is not None
                     else score_in_mode(search.reference_estimator_, X_chk, y_chk, None,
                                        scoring))
        X_c, y_c = X_chk, y_chk
    # the binomial margin is for shares of rows right (accuracy), not F1 or a loss
    accuracy_like = is_classifier(search.estimator) and scoring in ACCURACY_LIKE
    return Check(X_c, y_c, folds, reference, reference - search.max_accuracy_drop,
                 int(search.n_repeats), classification=accuracy_like, scoring=scoring)


def refuted_rows(search: Any, threshold: float) -> list[dict[str, Any]]:
    """Rows of trials the check refuted during the study, as checked rows."""
    return [_verdict({"trial": t.number, "score": t.values[1], "cost": t.values[0],
                      "during_study": True}, t.user_attrs["check_scores"],
                     t.user_attrs.get("check_threshold", threshold))
            for t in search.study_.trials
            if t.state.name == "COMPLETE" and t.user_attrs.get("refuted")]


def select_on_check(search: Any, objective: Any, check: Check | None) -> None:
    """Choose among a finished search's validation-feasible trials with ``check``.

    Sets ``search.holdout_`` (the check's reference score, threshold, size and every row
    checked, during the study or now) and ``search.best_score_`` (the chosen model's
    checked score; without a check, its validation score), and moves ``best_trial_`` /
    ``best_params_`` / ``best_compile_kwargs_`` to the fastest trial that passes.  A
    trial checked during the study keeps its scores (``check_scores``).  If none passes,
    there is no best trial (``budget_met_`` False, ``outcome_`` says so).
    """
    from .objective import _NO_LATENCY, checks_done, trial_params
    from .results import make_outcome, pareto_front

    search.holdout_ = None
    best = search.best_trial_
    search.best_score_ = None if best is None else best["score"]
    if check is None:
        return
    refuted = refuted_rows(search, check.threshold)
    if best is None and not refuted:  # nothing reached the budget on validation
        return
    trials = search.study_.trials
    feasible = [r for r in search.results_ if r["feasible"] and r["cost"] < _NO_LATENCY]

    def params(row: dict[str, Any]) -> dict[str, Any]:
        return trial_params(trials[row["trial"]])

    def point(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in POINT_KEYS}

    def scores(row: dict[str, Any]) -> list[float]:
        cached = trials[row["trial"]].user_attrs.get("check_scores")
        return list(cached) if cached else check.scores(objective, params(row), point(row))

    n_checked = checks_done(trials)

    def threshold(row: dict[str, Any]) -> float:
        """A trial checked during the study keeps its threshold; each new one counts."""
        nonlocal n_checked
        if "check_threshold" in trials[row["trial"]].user_attrs:
            return float(trials[row["trial"]].user_attrs["check_threshold"])
        n_checked += 1
        return check.threshold_for(n_checked)

    chosen, checked = check_on_holdout(feasible, scores, threshold,
                                       max_checks=check.max_checks)
    reopened: list[dict[str, Any]] = []
    if chosen is None:  # the cap came from points the check refutes: look past it
        done = {r["trial"] for r in checked} | {r["trial"] for r in refuted}
        reopened = reopen_capped(search, objective, params, done)
        chosen, more = check_on_holdout(reopened, scores, threshold,
                                        max_checks=check.max_checks)
        checked += more
    checked = refuted + checked
    search.holdout_ = dict(check.describe(), checked=checked,
                           reopened=[r["trial"] for r in reopened])
    by_trial = {r["trial"]: r for r in checked}
    for t in trials:  # checked during the study but not walked at the selection
        if (t.number not in by_trial and t.state.name == "COMPLETE"
                and t.user_attrs.get("check_scores")):
            by_trial[t.number] = _verdict({"trial": t.number}, t.user_attrs["check_scores"],
                                          t.user_attrs.get("check_threshold", check.threshold))
    for row in search.results_:
        if row["trial"] in by_trial:
            for key in ("holdout_score", "holdout_min", "holdout_threshold"):
                row[key] = by_trial[row["trial"]][key]
            # refuted at the selection too: summary() and the plot must not call it feasible
            row["refuted"] = row.get("refuted", False) or not by_trial[row["trial"]][
                "holdout_pass"]
    search.pareto_front_ = pareto_front(search.results_)  # without the refuted rows
    search.outcome_ = make_outcome(
        search.results_, search.failures_, chosen, reference_score=search.reference_score_,
        threshold=search.threshold_, max_accuracy_drop=search.max_accuracy_drop,
        n_trials=search.n_trials, seconds=search.cost_model_ is not None,
        torch=hasattr(search.estimator, "_float_reference"),
        held_out={"n_checked": len(checked), "n_samples": len(check.y),
                  "threshold": check.threshold, "reference_score": check.reference_score,
                  "max_threshold": max((r["holdout_threshold"] for r in checked),
                                       default=check.threshold),
                  "n_refuted_during_study": len(refuted),
                  "closest": max(checked, key=lambda r: r["holdout_min"], default=None),
                  "rows": (f"rows cross-validated in {len(check.folds)} folds"
                           if check.folds is not None else "held-out rows")})
    if chosen is None:  # nothing holds on unseen rows: the budget is not met
        search.best_trial_ = search.best_params_ = search.best_compile_kwargs_ = None
        search.best_score_ = None
        search.budget_met_ = False
        return
    search.best_trial_ = chosen
    search.best_params_ = params(chosen)
    search.best_compile_kwargs_ = point(chosen)
    search.best_score_ = chosen["holdout_score"]
    search.budget_met_ = True

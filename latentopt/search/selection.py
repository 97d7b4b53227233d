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

During the study, compiled points slower than the best validation-feasible point are
not simulated (``latency_cap``): such trials record only their fast, inaccurate points.
When the check then refutes every validation-feasible trial, the cap came from a lucky
point, so :func:`reopen_capped` runs the inner search again *without* the cap on the
most accurate capped models (unrounded validation score within the budget, at most
:data:`MAX_REOPEN`), and their fastest feasible points go through the same check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_CHECKS", "MAX_CV_CHECKS", "MAX_REOPEN", "check_on_holdout", "cv_folds",
           "reopen_capped", "select_on_check"]

#: Feasible trials re-scored on the check split, fastest first.
MAX_CHECKS = 6
#: Feasible trials cross-validated (``check_folds`` trainings each), fastest first.
MAX_CV_CHECKS = 3
#: Capped trials searched again without the cap when every checked trial failed.
MAX_REOPEN = 3
#: Compile keys of a result row (the trial's chosen point).
POINT_KEYS = ("rounding_bits", "rounding_method", "p_error")


def check_on_holdout(rows: Sequence[dict[str, Any]],
                     scores: Callable[[dict[str, Any]], Sequence[float]], threshold: float,
                     max_checks: int = MAX_CHECKS,
                     key: str = "cost") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The fastest row (trial) that also meets ``threshold`` on unseen rows.

    Parameters
    ----------
    rows : result rows of validation-feasible trials (each with ``key``, its latency)
    scores : row -> its simulated scores on unseen rows, one per repeat (all must pass:
        TLU errors are random)
    threshold : the budget on those rows (the reference scored there minus the drop)
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
        values = [float(v) for v in scores(row)]
        out = dict(row, holdout_score=float(np.mean(values)), holdout_min=float(min(values)),
                   holdout_pass=bool(min(values) >= threshold))
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
                  folds: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The float reference refitted and scored on every fold, pooled over the rows."""
    from sklearn.base import clone

    total = 0.0
    for tr, te in folds:
        total += float(clone(reference).fit(X[tr], y[tr]).score(X[te], y[te])) * len(te)
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
    from .inner import search_compile

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
                               n_repeats=search.n_repeats, cost_model=objective.cost_model)
        if inner.best is not None:
            rows.append(dict(row, cost=inner.best.latency, score=inner.best.score,
                             feasible=True, pbs=inner.best.pbs, reopened=True,
                             max_tlu_bits=inner.best.max_tlu_bits, **inner.compile_kwargs))
    return rows


def select_on_check(search: Any, objective: Any,
                    check: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Choose among a finished search's validation-feasible trials on the check split.

    Sets ``search.holdout_`` (the check's reference score, threshold, size and every row
    checked) and ``search.best_score_`` (the chosen model's check-split score; without a
    check split, its validation score), and moves ``best_trial_`` / ``best_params_`` /
    ``best_compile_kwargs_`` to the fastest trial that passes there.  If none passes,
    there is no best trial (``budget_met_`` False, ``outcome_`` says so).
    """
    from sklearn.base import is_classifier

    from .inner import score_under
    from .objective import _NO_LATENCY, trial_params

    search.holdout_ = None
    best = search.best_trial_
    search.best_score_ = None if best is None else best["score"]
    if check is None or best is None:
        return
    X_chk, y_chk = check
    trials = search.study_.trials
    feasible = [r for r in search.results_ if r["feasible"] and r["cost"] < _NO_LATENCY]

    def params(row: dict[str, Any]) -> dict[str, Any]:
        return trial_params(trials[row["trial"]])

    def point(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] for k in POINT_KEYS}

    def simulate(e: Any, X: np.ndarray, y: np.ndarray) -> float:
        return score_under(e, X, y, "simulate")

    k = int(getattr(search, "check_folds", 1) or 1)
    folds = None
    if k > 1 and not isinstance(objective.teacher, np.ndarray):  # array teachers: by row
        X_pool = np.concatenate([objective.data[0], X_chk])
        y_pool = np.concatenate([objective.data[1], y_chk])
        folds = cv_folds(y_pool, k, is_classifier(search.estimator), search.random_state)
    if folds is not None:
        reference = (float(search.reference_score) if search.reference_score is not None
                     else _cv_reference(search.reference_estimator_, X_pool, y_pool, folds))
        n_samples, max_checks = len(y_pool), MAX_CV_CHECKS

        def fit(p: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Any:
            return objective._fit(p, X, y)[0]

        def scores(row: dict[str, Any]) -> list[float]:
            return _cv_scores(fit, params(row), point(row), X_pool, y_pool, folds,
                              search.n_repeats, simulate)
    else:
        reference = (float(search.reference_score) if search.reference_score is not None
                     else float(search.reference_estimator_.score(X_chk, y_chk)))
        n_samples, max_checks = len(y_chk), MAX_CHECKS

        def scores(row: dict[str, Any]) -> list[float]:
            est = objective._fit(params(row))[0].compile(**point(row), verbose=0)
            return [simulate(est, X_chk, y_chk) for _ in range(max(1, search.n_repeats))]
    threshold = reference - search.max_accuracy_drop
    chosen, checked = check_on_holdout(feasible, scores, threshold, max_checks=max_checks)
    reopened: list[dict[str, Any]] = []
    if chosen is None:  # the cap came from points the check refutes: look past it
        reopened = reopen_capped(search, objective, params, {r["trial"] for r in checked})
        chosen, more = check_on_holdout(reopened, scores, threshold, max_checks=max_checks)
        checked += more
    search.holdout_ = {"reference_score": reference, "threshold": threshold,
                       "n_samples": int(n_samples), "checked": checked,
                       "method": "cross-validation" if folds is not None else "check split",
                       "folds": len(folds) if folds is not None else 1,
                       "reopened": [r["trial"] for r in reopened]}
    by_trial = {r["trial"]: r for r in checked}
    for row in search.results_:
        if row["trial"] in by_trial:
            row["holdout_score"] = by_trial[row["trial"]]["holdout_score"]
    from .results import make_outcome

    search.outcome_ = make_outcome(
        search.results_, search.failures_, chosen, reference_score=search.reference_score_,
        threshold=search.threshold_, max_accuracy_drop=search.max_accuracy_drop,
        n_trials=search.n_trials, seconds=search.cost_model_ is not None,
        held_out={"n_checked": len(checked), "n_samples": int(n_samples),
                  "threshold": threshold, "reference_score": reference,
                  "rows": (f"rows cross-validated in {len(folds)} folds"
                           if folds is not None else "held-out rows")})
    if chosen is None:  # nothing holds on unseen rows: the budget is not met
        search.best_trial_ = search.best_params_ = search.best_compile_kwargs_ = None
        search.best_score_ = None
        search.budget_met_ = False
        return
    search.best_trial_ = chosen
    search.best_params_ = params(chosen)
    search.best_compile_kwargs_ = point(chosen)
    search.best_score_ = chosen["holdout_score"]

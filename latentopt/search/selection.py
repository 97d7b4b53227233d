"""Honest selection: the budget is checked on data the search never tuned on.

The trials tune everything (architecture, bits, rounding, ``p_error``) on one validation
split; picking the fastest of dozens of configurations that pass on a few hundred rows
overfits that split (measured: 1 point on validation, 5.8 below float on test).  So the
search keeps a second held-out split, the *check* split, and :func:`check_on_holdout`
re-scores the fastest validation-feasible trials there with FHE simulation, against the
float reference scored on the same rows.  The chosen model is the fastest that also
passes there, and its reported accuracy is the check-split one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_CHECKS", "check_on_holdout", "select_on_check"]

#: Feasible trials re-scored on the check split, fastest first.
MAX_CHECKS = 6


def check_on_holdout(rows: Sequence[dict[str, Any]], load: Callable[[dict[str, Any]], Any],
                     X_check: np.ndarray, y_check: np.ndarray, threshold: float,
                     score: Callable[[Any, np.ndarray, np.ndarray], float],
                     n_repeats: int = 3, max_checks: int = MAX_CHECKS,
                     key: str = "cost") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The fastest row (trial) whose model also meets ``threshold`` on the check split.

    Parameters
    ----------
    rows : result rows of validation-feasible trials (each with ``key``, its latency)
    load : row -> the trial's estimator, compiled at its chosen point
    X_check, y_check : the check split (never seen by training or the inner search)
    threshold : the budget on the check split (reference score there minus the drop)
    score : (estimator, X, y) -> one simulated score
    n_repeats : simulations per model (all must pass: TLU errors are random)
    max_checks : rows tried, fastest first

    Returns
    -------
    tuple
        The chosen row (or None), and the checked rows: copies with ``holdout_score``
        (mean over repeats), ``holdout_min`` and ``holdout_pass`` added.
    """
    checked: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda r: (r[key], -r.get("score", 0.0)))[:max_checks]:
        est = load(row)
        scores = [float(score(est, X_check, y_check)) for _ in range(max(1, n_repeats))]
        out = dict(row, holdout_score=float(np.mean(scores)), holdout_min=float(min(scores)),
                   holdout_pass=bool(min(scores) >= threshold))
        checked.append(out)
        if out["holdout_pass"]:
            return out, checked
    return None, checked


def select_on_check(search: Any, objective: Any,
                    check: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Choose among a finished search's validation-feasible trials on the check split.

    Sets ``search.holdout_`` (the check's reference score, threshold, size and every row
    checked) and ``search.best_score_`` (the chosen model's check-split score; without a
    check split, its validation score), and moves ``best_trial_`` / ``best_params_`` /
    ``best_compile_kwargs_`` to the fastest trial that passes there.  If none passes,
    there is no best trial (``budget_met_`` False, ``outcome_`` says so).
    """
    from .inner import score_under
    from .objective import _NO_LATENCY

    search.holdout_ = None
    best = search.best_trial_
    search.best_score_ = None if best is None else best["score"]
    if check is None or best is None:
        return
    X_chk, y_chk = check
    reference = (float(search.reference_score) if search.reference_score is not None
                 else float(search.reference_estimator_.score(X_chk, y_chk)))
    threshold = reference - search.max_accuracy_drop
    trials = search.study_.trials
    feasible = [r for r in search.results_ if r["feasible"] and r["cost"] < _NO_LATENCY]

    def params(row: dict[str, Any]) -> dict[str, Any]:
        p = dict(trials[row["trial"]].user_attrs["params"])
        if "hidden_layer_sizes" in p:
            p["hidden_layer_sizes"] = tuple(p["hidden_layer_sizes"])
        return p

    def load(row: dict[str, Any]) -> Any:
        est, _ = objective._fit(params(row))
        return est.compile(**trials[row["trial"]].user_attrs["compile"], verbose=0)

    chosen, checked = check_on_holdout(
        feasible, load, X_chk, y_chk, threshold,
        lambda e, X, y: score_under(e, X, y, "simulate"), n_repeats=search.n_repeats)
    search.holdout_ = {"reference_score": reference, "threshold": threshold,
                       "n_samples": int(len(y_chk)), "checked": checked}
    by_trial = {r["trial"]: r for r in checked}
    for row in search.results_:
        if row["trial"] in by_trial:
            row["holdout_score"] = by_trial[row["trial"]]["holdout_score"]
    if chosen is None:  # nothing holds on unseen rows: the budget is not met
        search.best_trial_ = search.best_params_ = search.best_compile_kwargs_ = None
        search.best_score_ = None
        search.budget_met_ = False
        from .results import make_outcome

        search.outcome_ = make_outcome(
            search.results_, search.failures_, None, reference_score=search.reference_score_,
            threshold=search.threshold_, max_accuracy_drop=search.max_accuracy_drop,
            n_trials=search.n_trials, seconds=search.cost_model_ is not None,
            held_out={"n_checked": len(checked), "n_samples": int(len(y_chk)),
                      "threshold": threshold, "reference_score": reference})
        return
    search.best_trial_ = chosen
    search.best_params_ = params(chosen)
    search.best_compile_kwargs_ = dict(trials[chosen["trial"]].user_attrs["compile"])
    search.best_score_ = chosen["holdout_score"]

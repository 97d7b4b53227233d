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

__all__ = ["MAX_CHECKS", "check_on_holdout"]

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

    Returns the chosen row (or None) and the checked rows, each with ``holdout_score``
    (mean over repeats), ``holdout_min`` and ``holdout_pass`` added (copies).
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

"""The trial objective of :class:`~latentopt.search.latency_search.LatencySearch`.

One Optuna trial: sample the parameters, train a clone of the template (or load it from
the on-disk model cache), run the inner search (rounding bits and ``p_error``) and
return ``(latency, validation score)`` with the accuracy budget as a constraint.
The objective is picklable: worker processes run it too.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import clone

from .inner import search_compile
from .space import DEFAULT_SPACE, sample_params

if TYPE_CHECKING:
    from .latency_search import LatencySearch

#: Objective value of trials with no compilable point (Optuna rejects inf).
_NO_LATENCY = 1e30


def _data_key(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class _Objective:
    """Picklable trial objective (workers in other processes run it too)."""

    def __init__(self, search: LatencySearch, data: tuple, reference: float,
                 cost_model: Any, cache_dir: Path, teacher: Any = None,
                 teacher_key: str = "") -> None:
        self.search = search
        self.data = data
        self.reference = reference
        self.cost_model = cost_model
        self.cache_dir = cache_dir
        self.data_key = _data_key(data[0], data[1])
        # the fitted teacher (or the training rows of an array teacher), shared by trials
        self.teacher = teacher
        self.teacher_key = teacher_key

    def _fit(self, params: dict[str, Any]) -> tuple[Any, bool]:
        X_tr, y_tr = self.data[0], self.data[1]
        est = clone(self.search.estimator).set_params(**params, verbose=0)
        if self.teacher is not None:
            est.set_params(teacher=self.teacher)  # after clone: stays fitted, not refitted
        key = hashlib.sha256(repr((sorted(params.items()), self.data_key,
                                   est.get_params().get("random_state"),
                                   self.teacher_key)).encode()).hexdigest()
        path = self.cache_dir / f"model-{key[:20]}.pkl"
        if path.exists():
            try:
                with open(path, "rb") as fh:
                    return pickle.load(fh), True
            except Exception:  # a corrupt cache entry is retrained
                path.unlink(missing_ok=True)
        est.fit(X_tr, y_tr)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(est, fh)
        os.replace(tmp, path)
        return est, False

    def __call__(self, trial: Any) -> tuple[float, float]:
        s = self.search
        params = sample_params(trial, s.param_space or DEFAULT_SPACE)
        trial.set_user_attr("params", {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in params.items()})
        est, cached = self._fit(params)
        trial.set_user_attr("cached_model", cached)
        trial.set_user_attr("pid", os.getpid())
        inner = search_compile(
            est, self.data[2], self.data[3], max_accuracy_drop=s.max_accuracy_drop,
            reference_score=self.reference, n_repeats=s.n_repeats, cost_model=self.cost_model,
        )
        compiled = [c for c in inner.candidates if c.error is None]
        point = inner.best or (max(compiled, key=lambda c: c.score) if compiled else None)
        score = point.score if point is not None else float(est.score(self.data[2], self.data[3]))
        latency = point.latency if point is not None else _NO_LATENCY
        violation = float(inner.threshold - score)
        trial.set_user_attr("constraint", [violation])
        trial.set_constraint("accuracy_budget", violation)  # <= 0: feasible (NSGA-II)
        if point is not None:
            trial.set_user_attr("compile", {"rounding_bits": point.rounding_bits,
                                            "rounding_method": point.rounding_method,
                                            "p_error": point.p_error})
            trial.set_user_attr("pbs", point.pbs)
            trial.set_user_attr("max_tlu_bits", point.max_tlu_bits)
        trial.set_user_attr("tlus", int(est.report().tlu_count))
        return float(latency), float(score)

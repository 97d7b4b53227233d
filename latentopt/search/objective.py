"""The trial objective of :class:`~latentopt.search.latency_search.LatencySearch`.

One Optuna trial: sample the parameters, train a clone of the template (or load it from
the on-disk model cache), run the inner search (rounding bits and ``p_error``) and
return ``(latency, validation score)`` with the accuracy budget as a constraint.
The objective is picklable: worker processes run it too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from .inner import score_under, scorer_of, search_compile
from .screening import (
    accumulator_floor,
    best_feasible_latency,
    lower_bound_seconds,
    promising,
    short_params,
)
from .space import sample_params, search_space
from .trials import ModelCache, model_key

#: Objective value of trials with no compilable point (Optuna rejects inf).
_NO_LATENCY = 1e30
#: Feasible points of a trial the check tries during the study, fastest first.
CHECK_POINTS = 3


def _data_key(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def trial_params(trial: Any) -> dict[str, Any]:
    """The estimator parameters a trial recorded (user attribute ``params``), with
    ``hidden_layer_sizes`` back as a tuple (the storage keeps JSON lists)."""
    params = dict(trial.user_attrs["params"])
    if "hidden_layer_sizes" in params:
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    return params


def checks_done(trials: Sequence[Any], exclude: int | None = None) -> int:
    """How many configurations the check has tested during the study (trials with a
    ``check_index``: :meth:`_Objective._confirm`), ``exclude`` (a trial number) aside."""
    return sum(1 for t in trials
               if "check_index" in t.user_attrs and t.number != exclude)


class _Objective:
    """Picklable trial objective (workers in other processes run it too)."""

    # ``search`` is the LatencySearch running the study (typed Any: importing
    # latency_search here would make the two modules import each other)
    def __init__(self, search: Any, data: tuple, reference: float,
                 cost_model: Any, cache_dir: Path, teacher: Any = None,
                 teacher_key: str = "", check: Any = None) -> None:
        self.search = search
        self.data = data
        self.reference = reference
        self.cost_model = cost_model
        self.cache_dir = cache_dir
        self.data_key = _data_key(data[0], data[1])
        # the fitted teacher (or the training rows of an array teacher), shared by trials
        self.teacher = teacher
        self.teacher_key = teacher_key
        # the selection's check (selection.Check), run on each new fastest feasible trial
        self.check = check

    def _fit(self, params: dict[str, Any], X: np.ndarray | None = None,
             y: np.ndarray | None = None) -> tuple[Any, bool]:
        """The model of ``params`` trained on the training split (or on ``X, y``), from
        the model cache if it holds it; and whether it came from there."""
        X_tr, y_tr = (self.data[0], self.data[1]) if X is None or y is None else (X, y)
        data_key = self.data_key if X is None or y is None else _data_key(X, y)
        est = clone(self.search.estimator).set_params(**params, verbose=0)
        if self.teacher is not None:
            est.set_params(teacher=self.teacher)  # after clone: stays fitted, not refitted
        # keyed by every effective parameter (the template's fixed ones included)
        cache, key = ModelCache(self.cache_dir), model_key(est, data_key, self.teacher_key)
        cached = cache.load(key)
        if cached is not None:
            return cached, True
        est.fit(X_tr, y_tr)
        cache.store(key, est)
        return est, False

    def compiled(self, params: dict[str, Any], point: dict[str, Any]) -> Any:
        """The model of ``params`` (trained on the training split, or from the model
        cache) compiled at ``point`` (``rounding_bits``, ``rounding_method``, ``p_error``)."""
        return self._fit(params)[0].compile(**point, verbose=0)

    def _prune(self, trial: Any, reason: str) -> None:
        import optuna

        trial.set_user_attr("rejected", reason)
        raise optuna.TrialPruned(reason)

    def _screen(self, trial: Any, params: dict[str, Any], cap: float | None) -> None:
        """Reject before training what can never work: an accumulator budget below one
        product, or what the cost model proves slower than ``cap``."""
        from ..nn.mlp import signed_inputs  # the rule the MLP estimators train with

        floor = accumulator_floor(self.search.estimator, params,
                                  int(np.prod(self.data[0].shape[1:])),
                                  input_signed=signed_inputs(self.data[0]))
        budget = dict(self.search.estimator.get_params(), **params).get("n_accum_bits")
        if floor is not None and budget is not None and floor > int(budget):
            trial.set_user_attr("accumulator_floor", floor)
            self._prune(trial, f"n_accum_bits={budget} is impossible at these bit-widths: "
                               f"one product max|w| * max|x| needs {floor} bits")
        if self.cost_model is None or cap is None:
            return
        bound = lower_bound_seconds(self.cost_model, params,
                                    int(np.prod(self.data[0].shape[1:])))
        trial.set_user_attr("lower_bound_seconds", bound)
        if bound > cap:
            self._prune(trial, f"cost bound {bound:.3g} s > best feasible {cap:.3g} s")

    def _short_rung(self, trial: Any, params: dict[str, Any], threshold: float) -> None:
        """Short training first; full training only if the short score is promising."""
        if not getattr(self.search, "multi_fidelity", True):
            return
        short, _ = self._fit(short_params(self.search.estimator, params))
        score = score_under(short, self.data[2], self.data[3], "disable",
                            getattr(self.search, "scoring", None))
        trial.set_user_attr("short_score", score)
        if trial.user_attrs.get("seeded"):  # a seeded configuration: always full
            return
        previous = [t.user_attrs["short_score"] for t in trial.study.get_trials(deepcopy=False)
                    if "short_score" in t.user_attrs and t.number != trial.number]
        if not promising(score, previous, threshold):
            self._prune(trial, f"short-training score {score:.4f} not in the top third of "
                               f"{len(previous)} earlier trials")

    def _confirm(self, trial: Any, params: dict[str, Any], inner: Any,
                 cap: float | None) -> tuple[float, Any]:
        """Check a trial about to become the fastest feasible one on unseen rows
        (:class:`~latentopt.search.selection.Check`).

        The trial is the ``n``-th configuration checked in the study, so it must beat
        the check's threshold by the margin for ``n`` checks.  It is tried at its
        fastest feasible point and, if refuted there, at its next feasible points
        (slower, safer: more rounding bits or a lower ``p_error``; at most
        :data:`CHECK_POINTS`, all under ``cap``): the inner search drives a trial to the
        budget's edge on validation, where an independent simulation refutes it about
        half of the time although a safer point of the same model holds.  Returns the
        constraint violation (a refuted trial's is the check's smallest shortfall, so it
        neither counts as feasible nor caps the latency of later trials) and the point
        the trial keeps."""
        n = checks_done(trial.study.get_trials(deepcopy=False), exclude=trial.number) + 1
        threshold = self.check.threshold_for(n)
        trial.set_user_attr("check_index", n)
        trial.set_user_attr("check_threshold", threshold)
        feasible = sorted((c for c in inner.candidates
                           if c.feasible and c.error is None and not c.dominated
                           and (cap is None or c.latency < cap)),
                          key=lambda c: (c.latency, -c.score)) or [inner.best]
        shortfall, tried = np.inf, []
        for c in feasible[:CHECK_POINTS]:
            point = c.compile_kwargs
            scores = [float(v) for v in self.check.scores(self, params, point)]
            tried.append(dict(point, check_scores=scores, latency=float(c.latency)))
            shortfall = min(shortfall, threshold - min(scores))
            if min(scores) >= threshold:
                trial.set_user_attr("check_scores", scores)
                if len(tried) > 1:  # the edge point was refuted, a safer one holds
                    trial.set_user_attr("check_points", tried)
                return float(inner.threshold - c.score), c
        trial.set_user_attr("check_scores", tried[0]["check_scores"] if tried else [])
        trial.set_user_attr("check_points", tried)
        trial.set_user_attr("refuted", True)
        return max(float(shortfall), 1e-9), inner.best

    def __call__(self, trial: Any) -> tuple[float, float]:
        import optuna

        s = self.search
        params = sample_params(trial, search_space(s.param_space, s.estimator), s.estimator)
        trial.set_user_attr("params", {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in params.items()})
        trial.set_user_attr("pid", os.getpid())
        threshold = self.reference - s.max_accuracy_drop
        cap = best_feasible_latency(trial.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        self._screen(trial, params, cap)
        self._short_rung(trial, params, threshold)
        est, cached = self._fit(params)
        trial.set_user_attr("cached_model", cached)
        inner = search_compile(
            est, self.data[2], self.data[3], max_accuracy_drop=s.max_accuracy_drop,
            reference_score=self.reference, n_repeats=s.n_repeats, cost_model=self.cost_model,
            latency_cap=cap, scorer=scorer_of(getattr(s, "scoring", None)),
        )
        trial.set_user_attr("latency_unit", inner.latency_unit)
        if inner.unrounded_score is not None:
            trial.set_user_attr("unrounded_score", float(inner.unrounded_score))
        # points skipped (or roundings not tried) as slower than the best feasible one:
        # if that one fails the final check, selection reopens this trial
        # (selection.reopen_capped)
        dominated = any(c.dominated for c in inner.candidates)
        trial.set_user_attr("capped", inner.capped_bits or dominated)
        compiled = [c for c in inner.candidates if c.error is None and not c.dominated]
        if inner.best is None and not compiled and dominated:
            self._prune(trial, "every compiled point is slower than the best feasible one")
        point = inner.best or (max(compiled, key=lambda c: c.score) if compiled else None)
        score = (point.score if point is not None else inner.unrounded_score
                 if inner.unrounded_score is not None
                 else score_under(est, self.data[2], self.data[3], "disable",
                                  getattr(s, "scoring", None)))
        latency = point.latency if point is not None else _NO_LATENCY
        violation = float(inner.threshold - score)
        if (violation <= 0 and inner.best is not None and self.check is not None
                and (cap is None or latency < cap)):
            violation, point = self._confirm(trial, params, inner, cap)
            score, latency = point.score, point.latency
        trial.set_user_attr("constraint", [violation])
        trial.set_constraint("accuracy_budget", violation)  # <= 0: feasible (NSGA-II)
        if point is not None:
            trial.set_user_attr("compile", point.compile_kwargs)
            trial.set_user_attr("pbs", point.pbs)
            trial.set_user_attr("max_tlu_bits", point.max_tlu_bits)
        trial.set_user_attr("tlus", int(est.bit_width_report().tlu_count))
        return float(latency), float(score)

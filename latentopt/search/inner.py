"""Inner search: the cheap knobs of a fitted model (no retraining).

Chooses per-layer rounding bits and the TLU error probability ``p_error`` that make the
compiled circuit fastest while its metric on held-out data, measured with FHE
simulation (repeated, since TLU errors are random), stays within the user's budget.

:func:`search_compile` never changes the estimator it is given: candidates are compiled
on a working copy, and the result (:class:`InnerResult`) says how to compile the chosen
point (``est.compile(**result.compile_kwargs)``).

Latency is judged by the cost model (:mod:`latentopt.search.cost`, seconds per sample)
when one is given, else by concrete's ``complexity`` (a unitless estimate, useful for
ranking only: :attr:`InnerResult.latency_unit` says which).  Compiler failures (no
parameters found, lookups over 16 bits) are infeasible points, not crashes.

Strategy (each evaluation = one compile + ``n_repeats`` simulations):

0. a model whose unrounded integer circuit already misses the budget (by more than
   :data:`UNROUNDED_SLACK`) is compiled once (for its latency) and never simulated:
   rounding does not add accuracy;

1. bits: with approximate rounding latency decreases with fewer bits and accuracy
   (roughly) increases with more, so binary-search the fewest bits that stay feasible.
   The search never goes above ``max_rounding_bits`` (default :data:`MAX_ROUNDING_BITS`;
   wider lookups are never fast) nor, with a cost model and a ``latency_cap``, above the
   widest lookup whose PBS could still beat the cap.  It starts at
   :data:`START_BITS` (at ``p_error`` :data:`PROBE_P_ERROR`): where good models land.
2. a compiled candidate whose predicted latency is above ``latency_cap`` (the best
   point found elsewhere, e.g. by earlier trials) is not simulated: it cannot win, and
   every wider rounding is slower still;
3. ``p_error``: walk up a log-spaced ladder while the metric stays feasible;
4. with exact rounding (adds PBS per removed bit, so latency is not monotone) every
   candidate is costed explicitly and the fastest feasible one wins.

Candidates are compiled with concrete's default crypto-parameter partitions
(``parameter_strategy="precision"``, one compile each); the chosen point is compiled
once more with ``"auto"`` (what ``est.compile`` does by default) when two of its lookup
layers share a width, so that its latency is the one the user will get.  Ranking
under ``"precision"`` is conservative: per-norm partitions only ever lower a circuit's
cost, by 0-16% where measured.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.fhe_diagnostics import shares_lookup_width
from .scoring import score_in_mode

__all__ = ["InnerResult", "compile_searched", "score_under", "scorer_of", "search_compile"]

#: p_error ladder walked upwards (larger p_error -> smaller crypto parameters -> faster).
P_ERROR_LADDER = (1e-5, 1e-3, 1e-2, 3e-2, 1e-1)
#: p_error of the rounding-bits search (the seeded start: what fast circuits use).
PROBE_P_ERROR = 1e-2
#: p_error tried once at the widest allowed rounding when nothing passes at the probe.
SAFE_P_ERROR = 1e-4
#: TLU input bits beyond which the inner search never looks (each lookup >~ 0.1 s).
MAX_ROUNDING_BITS = 8
#: First rounding tried (then the binary search moves down or up).
START_BITS = 6
#: Rounding never makes a model more accurate than its unrounded circuit by more than
#: noise: a model whose unrounded score is below the threshold by more than this is
#: not compiled at all.
UNROUNDED_SLACK = 0.005

Scorer = Callable[[Any, np.ndarray, np.ndarray, str], float]


@dataclass
class Candidate:
    rounding_bits: int | None
    rounding_method: str
    p_error: float
    feasible: bool
    score: float = float("nan")
    score_std: float = float("nan")
    latency: float = float("inf")
    pbs: int = 0
    max_tlu_bits: int = 0
    error: str | None = None
    #: compiled but not simulated: its predicted latency is above the cap
    dominated: bool = False
    #: two of its lookup layers have one width (per-norm partitions may be cheaper)
    shared_width: bool = False

    @property
    def compile_kwargs(self) -> dict[str, Any]:
        """Arguments that reproduce this point with ``est.compile``."""
        return {"rounding_bits": self.rounding_bits, "rounding_method": self.rounding_method,
                "p_error": self.p_error}


@dataclass
class InnerResult:
    """Outcome of :func:`search_compile`."""

    best: Candidate | None
    reference_score: float
    threshold: float
    candidates: list[Candidate] = field(default_factory=list)
    #: "seconds" (cost model: seconds per sample) or "complexity" (concrete's estimate)
    latency_unit: str = "complexity"
    #: the widest rounding the search allowed itself
    max_bits: int | None = None
    #: the unrounded (integer) circuit's score, when the search computed it
    unrounded_score: float | None = None
    #: ``latency_cap`` narrowed the roundings tried (wider ones could not beat it), so
    #: an infeasible result says "not within the cap", not "not within the budget"
    capped_bits: bool = False

    @property
    def compile_kwargs(self) -> dict[str, Any]:
        """Arguments that reproduce the chosen point with ``est.compile``."""
        if self.best is None:
            raise RuntimeError("no feasible rounding / p_error point was found")
        return self.best.compile_kwargs

    def table(self) -> str:
        unit = "seconds" if self.latency_unit == "seconds" else "complexity"
        lines = [f"{'bits':>5s} {'method':>11s} {'p_error':>8s} {'score':>7s} {unit:>10s} "
                 f"{'PBS':>5s} feasible"]
        for c in self.candidates:
            note = c.error or ("slower than the cap, not simulated" if c.dominated else None)
            lines.append(
                f"{str(c.rounding_bits):>5s} {c.rounding_method:>11s} {c.p_error:8.0e} "
                f"{c.score:7.4f} {c.latency:10.4g} {c.pbs:5d} {c.feasible}"
                + (f" ({note})" if note else "")
            )
        return "\n".join(lines)


def score_under(est: Any, X: np.ndarray, y: np.ndarray, mode: str,
                scoring: Any = None) -> float:
    """The estimator's metric (accuracy or R^2, or ``scoring``) on ``(X, y)`` under FHE
    ``mode``.

    Every score of the search goes through this one function
    (:func:`~latentopt.search.scoring.score_in_mode`).
    """
    return score_in_mode(est, X, y, mode, scoring)


def scorer_of(scoring: Any) -> Scorer | None:
    """The :data:`Scorer` of a search's ``scoring`` (None: the estimators' own score)."""
    return None if scoring is None else functools.partial(score_under, scoring=scoring)


def _working_copy(est: Any) -> Any:
    """A shallow copy of a fitted estimator that candidates are compiled on.

    It shares the fitted circuit and module (read only); compiling it sets its own
    compiled attributes, never the original's.  Its ``rounded_circuit_`` starts unset,
    so it predicts with the unrounded circuit until compiled.
    """
    work = object.__new__(type(est))
    work.__dict__.update(est.__dict__)
    work._forget_compilation()
    return work


def _latency(est: Any, cost_model: Any) -> float:
    if cost_model is not None:
        return float(cost_model.predict(est.fhe_circuit_))
    return float(est.fhe_report_["complexity"])


def bits_cap(est: Any, cost_model: Any = None, latency_cap: float | None = None,
             max_rounding_bits: int | None = None) -> int:
    """The widest rounding worth trying for ``est``'s circuit.

    At most its widest TLU input, ``max_rounding_bits`` (default
    :data:`MAX_ROUNDING_BITS`) and, with a cost model and a ``latency_cap`` in seconds,
    the widest lookup whose PBS could still run within the cap
    (:meth:`CostModel.max_useful_bits`).
    """
    report = est.circuit_.report()
    cap = min(int(report.max_tlu_input_bits), 16,
              MAX_ROUNDING_BITS if max_rounding_bits is None else int(max_rounding_bits))
    if cost_model is not None and latency_cap is not None and np.isfinite(latency_cap):
        n_pbs = int(report.tlu_count)
        cap = min(cap, cost_model.max_useful_bits(n_pbs, float(latency_cap), limit=cap))
    return max(1, cap)


def search_compile(
    est: Any,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    max_accuracy_drop: float = 0.01,
    reference_score: float | None = None,
    rounding_bits: int | Sequence[int] | str | None = "auto",
    p_error: float | str = "auto",
    rounding_method: str = "approximate",
    n_repeats: int = 3,
    cost_model: Any = None,
    scorer: Scorer | None = None,
    X_calib: np.ndarray | None = None,
    max_rounding_bits: int | None = None,
    latency_cap: float | None = None,
    verbose: int = 0,
    equalize: bool = True,
) -> InnerResult:
    """Find the fastest (rounding, p_error) of a fitted estimator within an accuracy budget.

    Parameters
    ----------
    est : fitted latentopt estimator
        Left unchanged (candidates are compiled on a copy); compile the chosen point
        with ``est.compile(X_calib, **result.compile_kwargs)``.
    X_val, y_val : arrays
        Held-out data on which the metric is simulated.
    max_accuracy_drop : float
        Allowed drop of the metric below ``reference_score``.
    reference_score : float, optional
        Default: the estimator's score on ``X_val`` with the unrounded integer circuit.
    rounding_bits, p_error : "auto" or fixed values
        Which knobs to search; fixed values are used as given.
    rounding_method : {"approximate", "exact"}
    n_repeats : int
        Simulations per candidate (TLU errors are random); all must meet the budget.
    cost_model : CostModel, optional
        Predicts seconds per sample; default ranks by concrete's complexity.
    max_rounding_bits : int, optional
        Widest rounding tried (default :data:`MAX_ROUNDING_BITS`).
    latency_cap : float, optional
        Latency (in the cost model's seconds, or complexity without one) already
        reached elsewhere: slower candidates are not simulated, and with a cost model
        roundings that cannot beat it are not compiled.
    equalize : bool
        Compile candidates with per-channel gains before rounded lookups (``compile``'s
        ``equalize``, the default there too).
    """
    if not max_accuracy_drop >= 0:  # also rejects NaN
        raise ValueError("max_accuracy_drop must be >= 0")
    score_fn = scorer or score_under
    work = _working_copy(est)
    unrounded = score_fn(work, X_val, y_val, "disable")  # the unrounded integer circuit
    if reference_score is None:
        reference_score = unrounded
    threshold = reference_score - max_accuracy_drop
    result = InnerResult(None, float(reference_score), float(threshold),
                         latency_unit="seconds" if cost_model is not None else "complexity",
                         unrounded_score=float(unrounded))
    seen: dict[tuple, Candidate] = {}
    cap_latency = float("inf") if latency_cap is None else float(latency_cap)

    def evaluate(bits: Any, perr: float, simulate: bool = True) -> Candidate:
        key = (tuple(bits) if isinstance(bits, (list, tuple)) else bits, perr)
        if key in seen:
            return seen[key]
        cand = Candidate(bits, rounding_method, perr, feasible=False)
        try:
            work.compile(X_calib, rounding_bits=bits, rounding_method=rounding_method,
                         p_error=perr, verbose=0, parameter_strategy="precision",
                         equalize=equalize)
        except ValueError as exc:  # FHECompilationError and friends: infeasible
            cand.error = type(exc).__name__
        else:
            cand.latency = _latency(work, cost_model)
            cand.pbs = int(work.fhe_report_["programmable_bootstrap_count"])
            cand.max_tlu_bits = int(work.fhe_report_["max_tlu_input_bits"])
            cand.shared_width = shares_lookup_width(work.fhe_report_["layers"])
            if not simulate:  # known hopeless: its unrounded score bounds it
                cand.score = float(unrounded)
            elif cand.latency > cap_latency:
                cand.dominated = True
            else:
                scores = [score_fn(work, X_val, y_val, "simulate")
                          for _ in range(max(1, n_repeats))]
                cand.score, cand.score_std = float(np.mean(scores)), float(np.std(scores))
                # conservative: every repetition must meet the budget (TLU errors are
                # random, and a lucky draw at a large p_error must not pass)
                cand.feasible = min(scores) >= threshold
        seen[key] = cand
        result.candidates.append(cand)
        if verbose:
            state = ("slower than the cap" if cand.dominated
                     else "ok" if cand.feasible else "infeasible")
            print(f"[latentopt] inner search: bits={bits} p_error={perr:.0e} "
                  f"score={cand.score:.4f} {result.latency_unit}={cand.latency:.4g} {state}",
                  flush=True)
        return cand

    # --- rounding bits -------------------------------------------------------------
    probe_p = PROBE_P_ERROR if p_error == "auto" else float(p_error)  # type: ignore[arg-type]
    widest = bits_cap(est, None, None, max_rounding_bits)  # before any latency cap
    if rounding_bits == "auto" and unrounded < threshold - UNROUNDED_SLACK:
        # no rounding can rescue it: one compile, no simulation, says how fast it would be
        evaluate(min(START_BITS, widest), probe_p, simulate=False)
        return result
    if rounding_bits == "auto":
        top = bits_cap(est, cost_model if latency_cap is not None else None, latency_cap,
                       widest)
        result.max_bits = top
        result.capped_bits = top < widest
        bit_choices: list[Any] = _search_bits(evaluate, top, probe_p, rounding_method)
        if not bit_choices and p_error == "auto":  # more accuracy from a smaller p_error
            if evaluate(top, SAFE_P_ERROR).feasible:
                bit_choices, probe_p = [top], SAFE_P_ERROR
    else:
        bit_choices = [rounding_bits]
        evaluate(rounding_bits, probe_p)

    # --- p_error --------------------------------------------------------------------
    if p_error == "auto" and bit_choices:
        for perr in P_ERROR_LADDER:  # the fewest feasible bits only
            if perr <= probe_p:
                continue
            cand = evaluate(bit_choices[0], perr)
            if not cand.feasible:
                break

    feasible = [c for c in result.candidates if c.feasible]
    if feasible:
        result.best = min(feasible, key=lambda c: (c.latency, -c.score))
        _cost_as_compiled(work, X_calib, result.best, cost_model, equalize)
    return result


def _cost_as_compiled(work: Any, X_calib: Any, best: Candidate, cost_model: Any,
                      equalize: bool = True) -> None:
    """``best``'s latency under ``compile``'s default ``parameter_strategy="auto"``,
    which can differ from the ranking compile only when lookup layers share a width."""
    if not best.shared_width:
        return
    work.compile(X_calib, rounding_bits=best.rounding_bits,
                 rounding_method=best.rounding_method, p_error=best.p_error, verbose=0,
                 equalize=equalize)
    best.latency = _latency(work, cost_model)


def _search_bits(evaluate: Callable[[Any, float], Candidate], top: int, probe_p: float,
                 method: str) -> list[int]:
    """Feasible rounding bits in ``[1, top]``, fewest first (see module docstring)."""
    if method != "approximate":  # exact rounding: latency not monotone in bits, cost all
        return [b for b in range(1, top + 1) if evaluate(b, probe_p).feasible]

    def useful(c: Candidate) -> bool:  # feasible, or too slow: either way go narrower
        return c.feasible or c.dominated

    found: list[int] = []
    start = min(START_BITS, top)
    first = evaluate(start, probe_p)
    if useful(first):
        lo, hi = 1, start
        if first.feasible:
            found.append(start)
    elif start < top and useful(evaluate(top, probe_p)):
        lo, hi = start + 1, top
        if evaluate(top, probe_p).feasible:  # memoised
            found.append(top)
    else:
        return []
    while lo < hi:  # the fewest useful bits
        mid = (lo + hi) // 2
        c = evaluate(mid, probe_p)
        if useful(c):
            hi = mid
            if c.feasible:
                found.append(mid)
        else:
            lo = mid + 1
    return sorted(set(found))


def compile_searched(est: Any, X: Any, y: Any, *, rounding_bits: Any, rounding_method: str,
                     p_error: Any, max_accuracy_drop: float, cost_model: Any,
                     verbose: int | None, equalize: bool, **compile_options: Any) -> Any:
    """An estimator's ``compile`` with ``rounding_bits`` and/or ``p_error`` ``"auto"``:
    :func:`search_compile` on the held-out ``(X, y)`` (kept in ``inner_search_``), then
    an ordinary ``compile`` of the chosen point with ``compile_options``.  Raises
    ``ValueError`` (with the search's table) when no point meets the budget."""
    import warnings

    X_val = est._validate_X(X, reset=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = search_compile(
            est, X_val, np.asarray(y), max_accuracy_drop=max_accuracy_drop,
            rounding_bits=rounding_bits, rounding_method=rounding_method,
            p_error=1e-3 if p_error is None else p_error, cost_model=cost_model,
            verbose=int(est.verbose if verbose is None else verbose), equalize=bool(equalize))
    _reissue_once(caught)
    est.inner_search_ = result
    if result.best is None:
        raise ValueError(
            f"no rounding / p_error point keeps the score within "
            f"{max_accuracy_drop} of {result.reference_score:.4f}; allow a larger "
            f"max_accuracy_drop or retrain with more bits\n{result.table()}"
        )
    # the search returns its choice; compiling it is an ordinary compile.  Where the user
    # left p_error unset, the search scored the rounding at p_error 1e-3 per lookup (more
    # error than the default), and the circuit is compiled at the default error rate.
    chosen = dict(result.compile_kwargs)
    if p_error is None:
        chosen["p_error"] = None
    return est.compile(**chosen, verbose=verbose, equalize=equalize, **compile_options)


def _reissue_once(caught: Sequence[Any]) -> None:
    """The warnings of a search's candidates, each distinct one once (the overflow warning
    of the held-out rows came once per candidate, 15 times), without scikit-learn's
    "X does not have valid feature names": the candidates score the user's DataFrame
    after validation, as an array."""
    import warnings

    seen: set[tuple[type, str]] = set()
    for w in caught:
        text = str(w.message)
        if "does not have valid feature names" in text or (w.category, text) in seen:
            continue
        seen.add((w.category, text))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

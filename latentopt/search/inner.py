"""Inner search: the cheap knobs of a fitted model (no retraining).

Chooses per-layer rounding bits and the TLU error probability ``p_error`` that make the
compiled circuit fastest while its metric on held-out data, measured with FHE
simulation (repeated, since TLU errors are random), stays within the user's budget.

Latency is judged by the cost model (:mod:`latentopt.search.cost`) when one is given,
else by concrete's ``complexity`` (proportional to latency on a machine, useful for
ranking).  Compiler failures (no parameters found, lookups over 16 bits) are infeasible
points, not crashes.

Strategy (each evaluation = one compile + ``n_repeats`` simulations):

1. bits: with approximate rounding latency decreases with fewer bits and accuracy
   (roughly) increases with more, so binary-search the fewest bits that stay feasible
   (at a moderate ``p_error``);
2. ``p_error``: walk up a log-spaced ladder while the metric stays feasible;
3. with exact rounding (adds PBS per removed bit, so latency is not monotone) every
   candidate is costed explicitly and the fastest feasible one wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["InnerResult", "search_compile"]

#: p_error ladder walked upwards (larger p_error -> smaller crypto parameters -> faster).
P_ERROR_LADDER = (1e-5, 1e-3, 1e-2, 3e-2, 1e-1)


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


@dataclass
class InnerResult:
    """Outcome of :func:`search_compile`."""

    best: Candidate | None
    reference_score: float
    threshold: float
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def compile_kwargs(self) -> dict[str, Any]:
        """Arguments that reproduce the chosen point with ``est.compile``."""
        if self.best is None:
            raise RuntimeError("no feasible rounding / p_error point was found")
        return {"rounding_bits": self.best.rounding_bits,
                "rounding_method": self.best.rounding_method, "p_error": self.best.p_error}

    def table(self) -> str:
        lines = [f"{'bits':>5s} {'method':>11s} {'p_error':>8s} {'score':>7s} {'latency':>9s} "
                 f"{'PBS':>5s} feasible"]
        for c in self.candidates:
            lines.append(
                f"{str(c.rounding_bits):>5s} {c.rounding_method:>11s} {c.p_error:8.0e} "
                f"{c.score:7.4f} {c.latency:9.4g} {c.pbs:5d} {c.feasible}"
                + (f" ({c.error})" if c.error else "")
            )
        return "\n".join(lines)


def _latency(est: Any, cost_model: Any) -> float:
    if cost_model is not None:
        return float(cost_model.predict(est.fhe_circuit_))
    return float(est.compiled_report_["complexity"])


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
    scorer: Callable[[Any, np.ndarray, np.ndarray, str], float] | None = None,
    X_calib: np.ndarray | None = None,
    verbose: int = 0,
) -> InnerResult:
    """Find the fastest (rounding, p_error) of a fitted estimator within an accuracy budget.

    Parameters
    ----------
    est : fitted latentopt estimator
        Compiled in place; on return it is compiled at the chosen point (if any).
    X_val, y_val : arrays
        Held-out data on which the metric is simulated.
    max_accuracy_drop : float
        Allowed drop of the metric (``est.score``) below ``reference_score``.
    reference_score : float, optional
        Default: the estimator's score on ``X_val`` with the unrounded integer circuit.
    rounding_bits, p_error : "auto" or fixed values
        Which knobs to search; fixed values are used as given.
    rounding_method : {"approximate", "exact"}
    n_repeats : int
        Simulations per candidate (TLU errors are random); the mean is compared.
    cost_model : CostModel, optional
        Predicts seconds per sample; default ranks by concrete's complexity.
    """
    if max_accuracy_drop < 0:
        raise ValueError("max_accuracy_drop must be >= 0")
    score_fn = scorer or (lambda e, X, y, mode: float(e.score(X, y) if mode == "disable"
                                                       else _score_mode(e, X, y, mode)))
    if reference_score is None:
        est.compiled_circuit_ = None  # score the unrounded circuit
        est._backend = None
        reference_score = score_fn(est, X_val, y_val, "disable")
    threshold = reference_score - max_accuracy_drop
    result = InnerResult(None, float(reference_score), float(threshold))
    seen: dict[tuple, Candidate] = {}

    def evaluate(bits: int | None, perr: float) -> Candidate:
        key = (bits, perr)
        if key in seen:
            return seen[key]
        cand = Candidate(bits, rounding_method, perr, feasible=False)
        try:
            est.compile(X_calib, rounding_bits=bits, rounding_method=rounding_method,
                        p_error=perr, verbose=0)
        except ValueError as exc:  # FHECompilationError and friends: infeasible
            cand.error = type(exc).__name__
        else:
            scores = [score_fn(est, X_val, y_val, "simulate") for _ in range(max(1, n_repeats))]
            cand.score, cand.score_std = float(np.mean(scores)), float(np.std(scores))
            cand.latency = _latency(est, cost_model)
            cand.pbs = int(est.compiled_report_["programmable_bootstrap_count"])
            cand.max_tlu_bits = int(est.compiled_report_["max_tlu_input_bits"])
            # conservative: every repetition must meet the budget (TLU errors are random,
            # and a lucky draw at a large p_error must not pass)
            cand.feasible = min(scores) >= threshold
        seen[key] = cand
        result.candidates.append(cand)
        if verbose:
            print(f"[latentopt] inner search: bits={bits} p_error={perr:.0e} "
                  f"score={cand.score:.4f} latency={cand.latency:.4g} "
                  f"{'ok' if cand.feasible else 'infeasible'}", flush=True)
        return cand

    # --- rounding bits -------------------------------------------------------------
    probe_p = 1e-3 if p_error == "auto" else float(p_error)  # type: ignore[arg-type]
    if rounding_bits == "auto":
        widest = est.circuit_.report().max_tlu_input_bits
        top = max(1, min(int(widest), 16))
        feasible_bits: list[int] = []
        if rounding_method == "approximate":
            lo, hi = 1, top
            if evaluate(hi, probe_p).feasible:
                feasible_bits.append(hi)
                while lo < hi:  # smallest feasible bit-width
                    mid = (lo + hi) // 2
                    if evaluate(mid, probe_p).feasible:
                        hi = mid
                        feasible_bits.append(mid)
                    else:
                        lo = mid + 1
        else:  # exact rounding: latency not monotone in bits, cost them all
            feasible_bits = [b for b in range(1, top + 1) if evaluate(b, probe_p).feasible]
        if not feasible_bits and evaluate(None, probe_p).feasible:
            feasible_bits = [None]  # type: ignore[list-item]
        bit_choices = sorted(set(feasible_bits), key=lambda b: (b is None, b))
    else:
        bit_choices = [rounding_bits]  # type: ignore[list-item]
        evaluate(rounding_bits, probe_p)  # type: ignore[arg-type]

    # --- p_error --------------------------------------------------------------------
    if p_error == "auto":
        for bits in bit_choices[:2]:  # the fewest bits, and one more for p_error headroom
            for perr in P_ERROR_LADDER:
                if perr < probe_p:
                    continue
                if not evaluate(bits, perr).feasible and perr > probe_p:
                    break

    feasible = [c for c in result.candidates if c.feasible]
    if feasible:
        result.best = min(feasible, key=lambda c: (c.latency, -c.score))
        b = result.best
        est.compile(X_calib, rounding_bits=b.rounding_bits, rounding_method=b.rounding_method,
                    p_error=b.p_error, verbose=0)
    return result


def _score_mode(est: Any, X: np.ndarray, y: np.ndarray, mode: str) -> float:
    """``est.score`` under an FHE mode (scikit-learn's score takes no ``fhe`` argument)."""
    pred = est.predict(X, fhe=mode)
    if hasattr(est, "classes_"):
        return float(np.mean(pred == y))
    from sklearn.metrics import r2_score

    return float(r2_score(y, pred))


def log_uniform_grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` values log-spaced between ``lo`` and ``hi``."""
    return [float(math.exp(v)) for v in np.linspace(math.log(lo), math.log(hi), n)]

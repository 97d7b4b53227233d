"""What a search found: the trials' table, the Pareto front, the outcome, the plot.

:func:`collect` reads a finished study into plain rows; :class:`Outcome` says in words
whether the accuracy budget was met and, when it was not, the best validation score
reached, its latency and what to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from .objective import _NO_LATENCY
from .trials import ERROR_ATTR

__all__ = ["Outcome", "collect", "pareto_front", "plot_front", "summary_table"]


@dataclass
class Outcome:
    """The answer of a search, met budget or not.

    Attributes
    ----------
    budget_met : bool
        Some trial reached ``threshold`` on validation with a compilable circuit.
    threshold, reference_score : float
        The validation score required, and the reference it was derived from.
    best_score : float or None
        The best validation score any trial reached (None: no trial completed).
    best_score_latency : float or None
        That trial's latency (None when it had no compilable point).
    best_score_trial : int or None
    n_evaluated, n_failed : int
        Trials evaluated (completed or failed), and failed with an error.
    message : str
        All of the above in words, with what to change when the budget was not met.
    """

    budget_met: bool
    threshold: float
    reference_score: float
    best_score: float | None
    best_score_latency: float | None
    best_score_trial: int | None
    n_evaluated: int
    n_failed: int
    message: str = field(default="")

    def __str__(self) -> str:
        return self.message


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible rows (not refuted by the check) no other such row beats on both latency
    and score."""
    feasible = [r for r in rows
                if r["feasible"] and not r.get("refuted") and r["cost"] < _NO_LATENCY]
    return sorted(
        [r for r in feasible if not any(
            o["cost"] <= r["cost"] and o["score"] >= r["score"]
            and (o["cost"] < r["cost"] or o["score"] > r["score"]) for o in feasible)],
        key=lambda r: r["cost"])


def collect(study: Any, unit: str = "seconds") -> tuple[list[dict[str, Any]],
                                                         list[dict[str, Any]]]:
    """Rows of the completed trials, and of the trials that failed with an error.

    Each row holds its latency objective twice: ``cost`` (for sorting) and under its
    unit's own name, ``seconds`` (predicted per sample) or ``complexity`` (concrete's
    unitless estimate) -- never under "latency".
    """
    rows, failures = [], []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs:
            failures.append({"trial": t.number, **t.user_attrs.get("params", {}),
                             "error": t.user_attrs[ERROR_ATTR]})
        if t.state != TrialState.COMPLETE:
            continue
        rows.append({
            "trial": t.number, **t.user_attrs.get("params", {}),
            "cost": t.values[0], unit: t.values[0], "score": t.values[1],
            "feasible": t.user_attrs.get("constraint", [1])[0] <= 0,
            "refuted": bool(t.user_attrs.get("refuted", False)),
            "capped": bool(t.user_attrs.get("capped", False)),
            "pbs": t.user_attrs.get("pbs"), "max_tlu_bits": t.user_attrs.get("max_tlu_bits"),
            "tlus": t.user_attrs.get("tlus"), **(t.user_attrs.get("compile") or {}),
        })
    return rows, failures


def _latency_words(latency: float | None, seconds: bool) -> str:
    if latency is None or latency >= _NO_LATENCY:
        return "no circuit of it compiled"
    if seconds:
        return f"{latency:.4g} s per sample (predicted)"
    return f"complexity {latency:.4g} (no cost model: not seconds)"


def _more_trials(n_trials: int) -> str:
    """The advice named the n_trials just used ("run more trials (n_trials=3)")."""
    return f"n_trials above {n_trials}, or a longer timeout"


def make_outcome(rows: list[dict[str, Any]], failures: list[dict[str, Any]],
                 best: dict[str, Any] | None, *, reference_score: float, threshold: float,
                 max_accuracy_drop: float, n_trials: int, seconds: bool = True,
                 held_out: dict[str, Any] | None = None, torch: bool = False) -> Outcome:
    """The outcome in numbers and words.

    ``held_out``: the check of validation-feasible trials on unseen rows (``n_checked``,
    ``n_samples``, ``threshold``, ``reference_score``, optionally ``max_threshold``: the
    highest threshold with the margin for multiple checks), reported when none held
    there (ignored when ``best`` is given).
    """
    top = max(rows, key=lambda r: (r["score"], -r["cost"])) if rows else None
    n_eval = len(rows) + len(failures)
    common = dict(threshold=threshold, reference_score=reference_score,
                  best_score=None if top is None else float(top["score"]),
                  best_score_latency=None if top is None or top["cost"] >= _NO_LATENCY
                  else float(top["cost"]),
                  best_score_trial=None if top is None else int(top["trial"]),
                  n_evaluated=n_eval, n_failed=len(failures))
    budget = (f"validation score >= {threshold:.4f} (reference {reference_score:.4f} "
              f"minus max_accuracy_drop={max_accuracy_drop:g})")
    if best is not None:
        checked = (f" ({best['holdout_score']:.4f} on rows the search never tuned on)"
                   if best.get("holdout_score") is not None else "")
        msg = (f"Budget met: {budget}. Chosen: trial {best['trial']}, score "
               f"{best['score']:.4f}{checked}, {_latency_words(best['cost'], seconds)}.")
        return Outcome(budget_met=True, message=msg, **common)  # type: ignore[arg-type]
    if held_out is not None:
        n_val = sum(1 for r in rows if r.get("feasible") or r.get("refuted"))
        lines = [f"Budget NOT met on unseen rows: {n_val} of the {n_eval} evaluated trials "
                 f"reached {budget}, but none of the {held_out['n_checked']} checked (each new "
                 f"fastest during the study, then the fastest and the most accurate) held on "
                 f"{held_out['n_samples']} {held_out.get('rows', 'held-out rows')} (score >= "
                 f"{held_out['threshold']:.4f} there{_margin_words(held_out)}, float "
                 f"reference {held_out['reference_score']:.4f}): they overfit the validation "
                 f"split."]
        closest = held_out.get("closest")  # the checked row with the best worst repeat
        drop = "allow a larger drop (max_accuracy_drop)"
        if closest is not None:
            gap = held_out["reference_score"] - closest["holdout_min"]
            lines.append(f"Closest: trial {closest['trial']} "
                         f"({_latency_words(closest['cost'], seconds)}{_constant(closest)}), "
                         f"worst check score {closest['holdout_min']:.4f}, {gap:.4f} below "
                         f"the float reference there.")
            drop = (f"allow a larger drop (max_accuracy_drop >= {gap:.3g} would have "
                    f"accepted trial {closest['trial']} as the first configuration checked; "
                    f"each later one needs the margin on top)")
            threshold = held_out["threshold"]
            needed = closest.get("holdout_threshold")
            if needed is not None and closest["holdout_min"] >= threshold:
                # only the margin refused it: a drop of ``gap`` is already allowed
                drop = (f"allow a larger drop (trial {closest['trial']} met the plain "
                        f"threshold {threshold:.4f}; only the margin of the configurations "
                        f"checked before it refused it, {needed:.4f} needed; "
                        f"max_accuracy_drop >= {gap + needed - threshold:.3g} would accept "
                        f"it, and more check rows narrow the margin)")
        lines.append("To find a model: give the search more rows (the check split is "
                     f"holdout_fraction of X), {drop}, or run more trials "
                     f"({_more_trials(n_trials)}).")
        msg = "\n".join(lines)
        return Outcome(budget_met=False, message=msg, **common)  # type: ignore[arg-type]
    lines = [f"Budget NOT met: none of the {n_eval} evaluated trials reached {budget}."]
    if top is not None:
        lines.append(f"Best validation score reached: {top['score']:.4f} (trial {top['trial']}, "
                     f"{_latency_words(top['cost'], seconds)}{_constant(top)}).")
    else:
        lines.append("No trial completed.")
    if failures:
        lines.append(f"{len(failures)} trial(s) failed; first error: {failures[0]['error']}")
    advice = []
    if top is not None:
        need = reference_score - float(top["score"])
        advice.append(f"allow a larger drop (max_accuracy_drop >= {need:.3g} accepts trial "
                      f"{top['trial']}"
                      + (")" if top["cost"] < _NO_LATENCY else " if it compiles)"))
    advice.append(f"run more trials ({_more_trials(n_trials)})")
    if torch:  # the architecture is the user's module: the search cannot widen it
        advice.append("widen the search space (more input/weight/activation bits, less "
                      "pruning, more training epochs or distillation in the template)")
    else:
        advice.append("widen the search space (wider or deeper layers, more weight/"
                      "activation bits, less pruning, more training epochs in the template)")
    lines.append("To find a model: " + "; or ".join(advice) + ".")
    return Outcome(budget_met=False, message="\n".join(lines), **common)  # type: ignore[arg-type]


def _constant(row: dict[str, Any]) -> str:
    """Words for a point with no lookup left: every lookup rounded to a constant, so the
    circuit predicts one value (on imbalanced data such a point was advised without a
    word about it)."""
    return "; 0 PBS: it predicts one value for every row" if row.get("pbs") == 0 else ""


def _margin_words(held_out: dict[str, Any]) -> str:
    top = held_out.get("max_threshold")
    if top is None or top <= held_out["threshold"]:
        return ""
    return (f", up to {top:.4f} for the later ones: each configuration checked is one more "
            f"chance to pass by luck, so the margin grows with their number")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if v >= _NO_LATENCY else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(str(x) for x in v) + ")"
    return "-" if v is None else str(v)


def _verdict(row: dict[str, Any]) -> str:
    """The ``feasible`` cell: True, False, ``refuted`` (met the budget on validation,
    not on the check) or ``slower`` (no point of it as fast as the best feasible trial
    met the budget; its slower points were not tried, so its score is that of its
    fastest point, not of the model)."""
    if row.get("refuted"):
        return "refuted"
    if not row["feasible"] and row.get("capped"):
        return "slower"
    return str(row["feasible"])


def summary_footer(rows: list[dict[str, Any]], failures: list[dict[str, Any]],
                   outcome: str, reference: float, threshold: float, seconds: bool,
                   held_out: dict[str, Any] | None) -> list[str]:
    """The lines under :func:`summary_table`: the budget, what each mark and column
    means (only those the table shows), failed trials, and the outcome."""
    footer = [f"reference score {reference:.4f}, threshold {threshold:.4f}; "
              "* = Pareto front; " + (
                  "s/sample: seconds per encrypted sample predicted by the cost model"
                  if seconds else "no cost model: trials are ranked by concrete's "
                  "complexity, which is not seconds")]
    if any(r.get("refuted") for r in rows):
        footer.append("refuted: met the budget on validation, not on the check's rows "
                      "(checked during the study or at the final selection)")
    if held_out and any(r.get("holdout_threshold") is not None for r in rows):
        footer.append("check_score: the worst repeat on the check's rows; check_needed: "
                      f"{held_out['threshold']:.4f} plus the margin for the "
                      "configurations checked before it")
    if any(r.get("capped") and not r["feasible"] for r in rows):
        footer.append("slower: no point of it as fast as the best feasible trial met the "
                      "budget (slower points not tried; its rounding, p_error, pbs, cost "
                      "and score are those of its fastest point, not of a usable model)")
    if failures:
        footer.append(f"{len(failures)} failed trial(s): "
                      + "; ".join(f"trial {f['trial']}: {f['error']}" for f in failures[:3]))
    footer.append(outcome)
    return footer


#: result-row keys of the check (set on the rows checked) -> their summary column
CHECK_COLUMNS = {"holdout_min": "check_score", "holdout_threshold": "check_needed"}


def summary_table(rows: list[dict[str, Any]], front: list[dict[str, Any]],
                  footer: list[str], seconds: bool = True) -> str:
    """Every completed trial by latency; columns as wide as their names and values.

    Columns no trial fills are left out; the ``cost`` column is named by its unit
    (``s/sample`` predicted by the cost model, else ``complexity``).
    """
    marks = {r["trial"] for r in front}
    keys = ["trial", "hidden_layer_sizes", "n_w_bits", "n_a_bits", "pruning_ratio", "lr",
            "rounding_bits", "p_error", "pbs", "max_tlu_bits", "cost", "score"]
    extra = sorted({k for r in rows for k in r} - set(keys) - set(CHECK_COLUMNS)
                   - {"feasible", "refuted", "capped", "tlus", "rounding_method",
                      "seconds", "complexity", "holdout_score"})
    keys[keys.index("lr") + 1:keys.index("lr") + 1] = extra  # searched dimensions
    keys += list(CHECK_COLUMNS)
    keys = [k for k in keys if k in ("trial", "cost", "score")
            or any(r.get(k) is not None for r in rows)]
    table = [[_cell(r.get(k)) for k in keys]
             + [_verdict(r) + ("*" if r["trial"] in marks else " ")]
             for r in sorted(rows, key=lambda r: r["cost"])]
    header = [("s/sample" if seconds else "complexity") if k == "cost"
              else CHECK_COLUMNS.get(k, k) for k in keys] + ["feasible"]
    widths = [max([len(h)] + [len(row[i]) for row in table]) for i, h in enumerate(header)]
    lines = [" ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += [" ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    return "\n".join(lines + footer)


def plot_front(rows: list[dict[str, Any]], front: list[dict[str, Any]], threshold: float,
               xlabel: str, ax: Any = None) -> Any:
    """Scatter of the trials, the front and the budget; labels and legend kept clear."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4), layout="constrained")
    ok = [r for r in rows if r["cost"] < _NO_LATENCY]
    feasible = [r for r in ok if r["feasible"] and not r.get("refuted")]
    refuted = [r for r in ok if r.get("refuted")]
    other = [r for r in ok if not r["feasible"] and not r.get("refuted")]
    for group, color, marker, label in (
            (feasible, "tab:blue", "o", "feasible trials"),
            (refuted, "tab:orange", "x", "refuted by the check"),
            (other, "tab:gray", "o", "below budget")):
        if group:
            ax.scatter([r["cost"] for r in group], [r["score"] for r in group],
                       color=color, marker=marker, s=18, label=label)
    if front:  # no feasible trial: no front, and no empty legend entry for one
        ax.plot([r["cost"] for r in front], [r["score"] for r in front], "o-",
                color="tab:red", label="Pareto front")
    ax.axhline(threshold, ls="--", color="k", lw=0.8, label="budget")
    if ok:  # with no compiled trial the axis is empty: a log scale could not be drawn
        ax.set_xscale("log")
    else:
        ax.set_title("no trial compiled", fontsize="small")
    ax.margins(x=0.06, y=0.08)  # no marker on the frame
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation score")
    # the legend sits outside the axes (above), so it never covers a point
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02, 1.0, 0.2), mode="expand",
              ncol=2, fontsize="small", frameon=False, borderaxespad=0.0)
    fig = ax.figure
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    return ax

"""What pruning did: neurons, table lookups, active inputs and accumulator bits.

Every number is read from the module's exported IR circuit (what an FHE server would
run), not from the float module: "active inputs" are non-zero *integer* weights and
accumulator bits come from the IR's worst-case range analysis (and, given data, from
the integer backend's calibration).

Examples
--------
>>> from latentopt.nn.mlp import QuantMLP
>>> s = module_summary(QuantMLP(4, (6, 5), 3))
>>> s["hidden_sizes"], s["tlu_count"], len(s["active_inputs"])
([6, 5], 11, 3)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

__all__ = ["PruneReport", "check_quant_mlp", "module_summary", "preserved_mode"]


def check_quant_mlp(module: Any) -> None:
    """Raise ``TypeError`` unless ``module`` is a :class:`~latentopt.nn.mlp.QuantMLP`."""
    from ..nn.mlp import QuantMLP

    if not isinstance(module, QuantMLP):
        raise TypeError(f"expected a latentopt.nn.mlp.QuantMLP, got {type(module).__name__}")


@contextlib.contextmanager
def preserved_mode(module: nn.Module) -> Iterator[None]:
    """Run a block with ``module`` in eval mode, restoring train/eval mode afterwards.

    Eval mode freezes brevitas' runtime statistics, so that tracing or exporting a
    module does not change its quantizers.
    """
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


def module_summary(module: Any, X: np.ndarray | None = None) -> dict[str, Any]:
    """Structure and accumulator bit-widths of a :class:`~latentopt.nn.mlp.QuantMLP`.

    Parameters
    ----------
    module : QuantMLP
        The module; its train/eval mode is preserved.
    X : array of shape (n_samples, n_features), optional
        Calibration data: adds the accumulator bits observed on ``X``.

    Returns
    -------
    dict
        ``hidden_sizes``, ``tlu_count`` (table lookups per sample), ``active_inputs``
        (one int array per linear layer: non-zero integer weights of each neuron),
        ``accumulator_bits`` (worst case, one per layer) and
        ``accumulator_bits_calibrated`` (one per layer, or ``None`` without ``X``).
    """
    from ..nn.export import export_mlp

    check_quant_mlp(module)
    with preserved_mode(module):
        circuit = export_mlp(module)
    if X is not None:
        from ..backends.integer import IntegerBackend

        circuit = IntegerBackend(circuit).calibrate(np.asarray(X))
    rep = circuit.report()
    gemms: list[Any] = [circuit[row["name"]] for row in rep.layers]  # Gemm nodes
    active = [np.count_nonzero(g.weight, axis=1) for g in gemms]
    return {
        "hidden_sizes": [int(h) for h in module.config["hidden_sizes"]],
        "tlu_count": rep.tlu_count,
        "active_inputs": active,
        "accumulator_bits": [int(r["accumulator_bits"]) for r in rep.layers],
        "accumulator_bits_calibrated": (
            [int(r["accumulator_bits_calibrated"]) for r in rep.layers] if X is not None else None
        ),
    }


@dataclass
class PruneReport:
    """Before/after summary of a pruning call; ``str()`` gives a table.

    Attributes
    ----------
    method : str
        ``"structured"`` or ``"accumulator"``.
    before, after : dict
        :func:`module_summary` of the module before and after pruning.
    details : dict
        Method-specific facts (ratios, importance, budget, clamped biases, ...).
    """

    method: str
    before: dict[str, Any]
    after: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_before(self) -> list[int]:
        return list(self.before["hidden_sizes"])

    @property
    def hidden_after(self) -> list[int]:
        return list(self.after["hidden_sizes"])

    @property
    def tlus_before(self) -> int:
        return int(self.before["tlu_count"])

    @property
    def tlus_after(self) -> int:
        return int(self.after["tlu_count"])

    @property
    def active_inputs(self) -> list[np.ndarray]:
        """Per linear layer, the number of non-zero integer weights of each neuron."""
        return list(self.after["active_inputs"])

    @property
    def accumulator_bits(self) -> list[int]:
        """Worst-case accumulator bits per layer, after pruning."""
        return list(self.after["accumulator_bits"])

    @property
    def max_accumulator_bits(self) -> int:
        return max(self.after["accumulator_bits"], default=0)

    @property
    def max_accumulator_bits_calibrated(self) -> int | None:
        cal = self.after["accumulator_bits_calibrated"]
        return None if cal is None else max(cal, default=0)

    def to_dict(self) -> dict[str, Any]:
        """Plain-python (JSON-able) version."""

        def plain(d: dict[str, Any]) -> dict[str, Any]:
            out = dict(d)
            out["active_inputs"] = [a.tolist() for a in d["active_inputs"]]
            return out

        return {"method": self.method, "before": plain(self.before),
                "after": plain(self.after), "details": dict(self.details)}

    def __str__(self) -> str:
        b, a = self.before, self.after
        cal_b, cal_a = b["accumulator_bits_calibrated"], a["accumulator_bits_calibrated"]
        lines = [f"{self.method} pruning: TLUs/sample {self.tlus_before} -> {self.tlus_after}",
                 "layer  neurons  active inputs (min/mean/max)  acc bits" +
                 ("  acc bits cal" if cal_a is not None else "")]
        n_hidden_b, n_hidden_a = len(b["hidden_sizes"]), len(a["hidden_sizes"])
        for i, act in enumerate(a["active_inputs"]):
            nb = b["hidden_sizes"][i] if i < n_hidden_b else len(b["active_inputs"][i])
            na = a["hidden_sizes"][i] if i < n_hidden_a else len(act)
            stats = f"{act.min()}/{act.mean():.1f}/{act.max()}" if act.size else "-"
            row = (f"{i:>5}  {nb:>3}->{na:<3}  {stats:>28}  "
                   f"{b['accumulator_bits'][i]:>2}->{a['accumulator_bits'][i]:<2}")
            if cal_a is not None:
                prev = f"{cal_b[i]:>2}" if cal_b is not None else " -"
                row += f"  {prev}->{cal_a[i]:<2}"
            lines.append(row)
        return "\n".join(lines)

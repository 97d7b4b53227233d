"""Static post-training quantization (PTQ) of a float torch model into the IR.

Calibration runs the model on data and records the range of every intermediate tensor
(min/max, or percentiles to ignore outliers).  Then:

* inputs: ``n_bits["inputs"]`` bits, asymmetric (with a zero point) when only layers
  with weights or pooling read them, symmetric otherwise;
* weights: symmetric, narrow, one scale per output channel;
* activations: one scale per tensor; unsigned when the tensor is never negative,
  symmetric signed otherwise; operands of an addition share one quantizer.

``n_bits`` is one int for everything, or a dict with keys ``"inputs"``, ``"weights"``,
``"activations"`` and, per layer, a module name (``"features.0"``) or graph node name
(``"relu_1"``) mapping to an int or to ``{"weights": .., "activations": ..}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fx_import import Op
from .graph_lowering import QParams

__all__ = ["BitSpec", "PTQPolicy", "activation_params", "parse_bits"]

CALIBRATIONS = ("minmax", "percentile")


class BitSpec:
    """Parsed ``n_bits``: global input / weight / activation bits and per-layer ones."""

    def __init__(self, inputs: int, weights: int, activations: int,
                 layers: dict[str, dict[str, int]]) -> None:
        self.inputs, self.weights, self.activations = inputs, weights, activations
        self.layers = layers

    def for_op(self, op: Op, what: str) -> int:
        for key in (op.target, op.name):
            if key and key in self.layers and what in self.layers[key]:
                return self.layers[key][what]
        return int(getattr(self, what))

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "weights": self.weights,
                "activations": self.activations, "layers": self.layers}


def _check_bits(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 2 <= int(v) <= 16:
        raise ValueError(f"{what} must be an int in [2, 16], got {v!r}")
    return int(v)


def parse_bits(n_bits: Any, ops: list[Op]) -> BitSpec:
    """Validate ``n_bits`` (see module docstring) against the model's layer names."""
    if not isinstance(n_bits, dict):
        b = _check_bits(n_bits, "n_bits")
        return BitSpec(b, b, b, {})
    known = {op.target for op in ops if op.target} | {op.name for op in ops}
    glob = {"inputs": 8, "weights": 8, "activations": 8}
    layers: dict[str, dict[str, int]] = {}
    for key, val in n_bits.items():
        if key in glob:
            glob[key] = _check_bits(val, f"n_bits[{key!r}]")
        elif key in known:
            if isinstance(val, dict):
                bad = set(val) - {"weights", "activations"}
                if bad:
                    raise ValueError(f"n_bits[{key!r}] has unknown keys {sorted(bad)}")
                layers[key] = {k: _check_bits(v, f"n_bits[{key!r}][{k!r}]")
                               for k, v in val.items()}
            else:
                b = _check_bits(val, f"n_bits[{key!r}]")
                layers[key] = {"weights": b, "activations": b}
        else:
            raise ValueError(
                f"n_bits has unknown key {key!r}: use 'inputs', 'weights', 'activations' or "
                f"a layer name among {sorted(known)}")
    return BitSpec(glob["inputs"], glob["weights"], glob["activations"], layers)


def activation_params(lo: float, hi: float, n_bits: int) -> QParams:
    """Quantizer of a tensor observed in ``[lo, hi]``: unsigned if ``lo >= 0``, else
    symmetric signed (narrow); zero point 0 either way."""
    if lo >= 0:
        top = hi if hi > 0 else 1.0
        return QParams(top / (2**n_bits - 1), 0, n_bits, signed=False)
    top = max(-lo, hi)
    return QParams(top / (2 ** (n_bits - 1) - 1), 0, n_bits, signed=True, narrow=True)


class PTQPolicy:
    """Quantization parameters from calibration data (see module docstring)."""

    def __init__(self, ops: list[Op], values: dict[str, np.ndarray], bits: BitSpec,
                 calibration: str = "minmax", percentile: float = 99.99) -> None:
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.ops = {op.name: op for op in ops}
        self.values = values
        self.bits = bits
        self.calibration = calibration
        self.percentile = float(percentile)
        self._group = self._add_groups(ops)

    @staticmethod
    def _add_groups(ops: list[Op]) -> dict[str, frozenset[str]]:
        parent: dict[str, str] = {}

        def find(a: str) -> str:
            while parent.get(a, a) != a:
                a = parent[a]
            return a

        for op in ops:
            if op.kind == "add":
                a, b = (find(i) for i in op.inputs)
                if a != b:
                    parent[a] = b
        members: dict[str, set[str]] = {}
        for name in parent.keys() | set(parent.values()):
            members.setdefault(find(name), set()).add(name)
        return {n: frozenset(m) for m in members.values() for n in m}

    def _range(self, names: Any) -> tuple[float, float]:
        lo, hi = np.inf, -np.inf
        for name in names:
            v = self.values[name]
            if self.calibration == "percentile":
                a, b = np.percentile(v, [100.0 - self.percentile, self.percentile])
            else:
                a, b = v.min(), v.max()
            lo, hi = min(lo, float(a)), max(hi, float(b))
        return lo, hi

    def _act_bits(self, name: str) -> int:
        return self.bits.for_op(self.ops[name], "activations")

    def _params_of(self, name: str) -> QParams:
        group = self._group.get(name)
        if group is not None:
            return self.shared_params(sorted(group))
        return activation_params(*self._range([name]), self._act_bits(name))

    # policy interface ------------------------------------------------------
    def input_params(self, op: Op, consumers: list[Op]) -> QParams:
        n = self.bits.inputs
        lo, hi = self._range([op.name])
        if op.name in self._group or any(c.kind not in ("linear", "conv", "pool")
                                         for c in consumers):
            return activation_params(lo, hi, n)
        if lo >= 0:
            return QParams((hi if hi > 0 else 1.0) / (2**n - 1), 0, n, signed=False)
        hi = max(hi, 0.0)
        scale = (hi - lo) / (2**n - 1)
        zp = int(np.clip(np.rint(-lo / scale), 0, 2**n - 1))
        return QParams(scale, zp, n, signed=False)

    def weights(self, op: Op) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        m = op.module
        assert m is not None
        w = m.weight.detach().double().numpy()
        n = self.bits.for_op(op, "weights")
        qmax = 2 ** (n - 1) - 1
        top = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
        scale = np.where(top > 0, top / qmax, 1.0)
        shape = (-1,) + (1,) * (w.ndim - 1)
        w_int = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int64)
        bias = None if m.bias is None else m.bias.detach().double().numpy()
        return w_int, scale, bias

    def bias_int(self, op: Op, bias: np.ndarray, acc_scale: np.ndarray) -> np.ndarray:
        return np.rint(bias / acc_scale).astype(np.int64)

    def act_params(self, op: Op) -> QParams:
        return self._params_of(op.name)

    def requant_params(self, op_name: str) -> QParams:
        return self._params_of(op_name)

    def shared_params(self, op_names: list[str]) -> QParams:
        names = set(op_names)
        for n in op_names:
            names |= self._group.get(n, frozenset())
        bits = max(self._act_bits(n) for n in names)
        return activation_params(*self._range(sorted(names)), bits)

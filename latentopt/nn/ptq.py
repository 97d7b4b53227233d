"""Static post-training quantization (PTQ) of a float torch model into the IR.

Calibration runs the model on data and records every intermediate tensor; the range of
each quantizer comes from those values (min/max, percentiles, or an MSE search of the
clipping range, see :mod:`.ptq_ranges`).  Then:

* inputs: ``n_bits["inputs"]`` bits, asymmetric (with a zero point) when only layers
  with weights or pooling read them, symmetric otherwise; never-negative inputs are
  quantized on ``[0, max]`` (a warning names inputs so far from zero that they use less
  than a quarter of the levels: subtract their offset);
* weights: symmetric, narrow, one scale per output channel (with ``calibration="mse"``
  the clipping of each channel is searched too);
* activations: one scale per tensor; unsigned when the tensor is never negative,
  symmetric signed otherwise; operands of an addition share one quantizer;
* biases: optionally corrected for the mean shift quantization causes in each layer's
  outputs (:mod:`.bias_correction`).

``n_bits`` is one int for everything, or a dict with keys ``"inputs"``, ``"weights"``,
``"activations"`` and, per layer, a module name (``"features.0"``) or graph node name
(``"relu_1"``) mapping to an int or to ``{"weights": .., "activations": ..}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fx_import import Op
from .graph_lowering import QParams
from .ptq_ranges import CALIBRATIONS, mse_weight_scales, observed_range

__all__ = ["CALIBRATIONS", "BitSpec", "PTQPolicy", "activation_params", "parse_bits"]


def _warn_offset_inputs(name: str, lo: float, hi: float, n_bits: int) -> None:
    """Non-negative inputs are quantized on ``[0, max]``: inputs far from zero (all in
    [100, 101]) used 4 of 256 levels, and the model's error grew a hundredfold."""
    levels = (hi - lo) / (hi if hi > 0 else 1.0) * (2**n_bits - 1)
    if hi > 0 and levels < 2 ** (n_bits - 2):  # two bits or more lost
        import warnings

        warnings.warn(
            f"the calibration inputs of {name!r} lie in [{lo:.4g}, {hi:.4g}]: the "
            f"{n_bits}-bit input grid starts at 0, so they use about {max(levels, 1):.0f} "
            f"of its {2**n_bits} levels; subtract their offset (standardise the inputs, "
            "and train the float model on them) to keep their precision",
            UserWarning, stacklevel=2)


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
    # layers that carry bits: not the input, the output, reshapes, dropouts (reshapes
    # here) or shape queries ("drop" was accepted and did nothing; "size" was offered)
    carriers = [op for op in ops
                if op.kind not in ("input", "output", "reshape", "shape_query", "reorder")]
    known = {op.target for op in carriers if op.target} | {op.name for op in carriers}
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
                f"a layer name among {sorted(known)} (batch norms are folded into the "
                f"layer before them: give that layer's bits)")
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
                 calibration: str = "minmax", percentile: float = 99.99,
                 weight_calibration: str | None = None) -> None:
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if not 50.0 < float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.ops = {op.name: op for op in ops}
        self.values = values
        self.bits = bits
        self.calibration = calibration
        self.percentile = float(percentile)
        #: "minmax" or "mse" clipping of weights (default: "mse" with calibration="mse")
        self.weight_calibration = weight_calibration or (
            "mse" if calibration == "mse" else "minmax")
        if self.weight_calibration not in ("minmax", "mse"):
            raise ValueError(f"weight_calibration must be 'minmax' or 'mse', got "
                             f"{weight_calibration!r}")
        #: corrected float biases by op name (see :mod:`.bias_correction`)
        self.bias_overrides: dict[str, np.ndarray] = {}
        self._group = self._add_groups(ops)
        self._cache: dict[tuple[Any, ...], tuple[float, float]] = {}

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

    def _range(self, names: Any, n_bits: int, asymmetric: bool = False) -> tuple[float, float]:
        key = (tuple(names), n_bits, asymmetric)
        if key not in self._cache:
            if self.calibration == "mse":
                self._cache[key] = observed_range([self.values[n] for n in names], "mse",
                                                  n_bits, asymmetric=asymmetric)
            else:  # per tensor, then the union (as before for groups)
                lo, hi = np.inf, -np.inf
                for n in names:
                    a, b = observed_range([self.values[n]], self.calibration, n_bits,
                                          self.percentile)
                    lo, hi = min(lo, a), max(hi, b)
                self._cache[key] = (lo, hi)
        return self._cache[key]

    def _act_bits(self, name: str) -> int:
        return self.bits.for_op(self.ops[name], "activations")

    def _params_of(self, name: str) -> QParams:
        group = self._group.get(name)
        if group is not None:
            return self.shared_params(sorted(group))
        n = self._act_bits(name)
        return activation_params(*self._range([name], n), n)

    # policy interface ------------------------------------------------------
    def input_params(self, op: Op, consumers: list[Op]) -> QParams:
        n = self.bits.inputs
        if op.name in self._group or any(c.kind not in ("linear", "conv", "pool")
                                         for c in consumers):
            return activation_params(*self._range([op.name], n), n)
        lo, hi = self._range([op.name], n, asymmetric=True)
        if lo >= 0:
            _warn_offset_inputs(op.name, lo, hi, n)
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
        if self.weight_calibration == "mse":
            scale = mse_weight_scales(w, n)
        else:
            top = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            scale = np.where(top > 0, top / qmax, 1.0)
        shape = (-1,) + (1,) * (w.ndim - 1)
        w_int = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int64)
        bias = self.bias_overrides.get(op.name)
        if bias is None and m.bias is not None:
            bias = m.bias.detach().double().numpy()
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
        return activation_params(*self._range(sorted(names), bits), bits)

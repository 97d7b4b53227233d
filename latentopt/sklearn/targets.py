"""Regression targets: standardised for training, de-standardised inside the circuit.

A regressor trains on standardised targets ``(y - y_mean_) / y_scale_``.  Instead of
undoing that in the clear after each backend, the inverse transform is folded into the
circuit's output dequantizer (``Dequantize.offset``): ``(x - zero_point) * scale *
y_scale_ + y_mean_``.  The integer backend, FHE simulation and execution, the ONNX export
and the deployment client then all return targets in the user's units.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, Dequantize, Gemm, QuantizeInput
>>> c = Circuit([QuantizeInput("q", ("input",), 0.5, 0, 4), Gemm("g", ("q",), [[2, -1]]),
...              Dequantize("out", ("g",), 0.5, 0)], n_features=2)
>>> folded = fold_target_scaling(c, mean=np.array([10.0]), scale=np.array([2.0]))
>>> float(folded.output.apply(np.array([[3]]))[0, 0])  # 3 * 0.5 * 2 + 10
13.0
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..ir import Circuit

__all__ = ["fold_target_scaling", "target_scaling"]


def target_scaling(y2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-target mean and scale: the standard deviation, or for a constant target
    ``1e-6 * max(|mean|, 1)`` (a scale of 1 left the network's output noise, about 0.02,
    in the target's units: a constant 2**-10 came out between -0.0099 and 0.0215)."""
    y2 = np.asarray(y2, dtype=np.float64)
    mean = y2.mean(axis=0)
    std = y2.std(axis=0)
    return mean, np.where(std > 0, std, 1e-6 * np.maximum(np.abs(mean), 1.0))


def fold_target_scaling(circuit: Circuit, mean: np.ndarray, scale: np.ndarray) -> Circuit:
    """``circuit`` whose outputs are ``outputs * scale + mean`` (folded into its dequantizer).

    Calibrated ranges are kept: the integers the circuit computes do not change.
    """
    out = circuit.output
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    folded = dataclasses.replace(out, scale=out.scale * scale, offset=out.offset * scale + mean)
    return circuit.replace(nodes=[*list(circuit)[:-1], folded])

"""Clipping ranges of post-training quantization (:mod:`.ptq`): min/max, percentile, MSE.

A quantizer with ``n`` bits has ``2**n`` levels over its range: a wider range keeps rare
large values but makes every step coarser.  Three ways to choose the range of a tensor
from calibration values:

* ``"minmax"``: the observed minimum and maximum (nothing is clipped);
* ``"percentile"``: the ``100 - p`` and ``p`` percentiles (rare outliers are clipped);
* ``"mse"``: the range, shrunk from min/max by a factor searched on a grid, that minimises
  the mean squared error between the values and their quantized (clipped) versions.

Weights use the same MSE search per output channel (``mse_weight_scales``).
"""

from __future__ import annotations

import numpy as np

from ..ir import int_range

__all__ = ["CALIBRATIONS", "mse_weight_scales", "observed_range"]

CALIBRATIONS = ("minmax", "percentile", "mse")

#: Fractions of the min/max range tried by the MSE search (1.0 first: no clipping).
MSE_GRID = np.linspace(1.0, 0.2, 81)
#: Values of a tensor sampled for the MSE search (uniformly, without replacement).
MSE_SAMPLES = 200_000


def _fake_quant(v: np.ndarray, lo: float, hi: float, n_bits: int,
                asymmetric: bool = False) -> np.ndarray:
    """``v`` quantized on the grid the PTQ quantizer of range ``[lo, hi]`` uses:
    unsigned when ``lo >= 0``, else symmetric signed (narrow), or unsigned with a zero
    point when ``asymmetric``."""
    if lo < 0 and asymmetric:
        scale = (max(hi, 0.0) - lo) / (2**n_bits - 1)
        zp = np.clip(np.rint(-lo / scale), 0, 2**n_bits - 1)
        return (np.clip(np.rint(v / scale) + zp, 0, 2**n_bits - 1) - zp) * scale
    if lo >= 0:
        scale = (hi if hi > 0 else 1.0) / (2**n_bits - 1)
        qmin, qmax = int_range(n_bits, signed=False)
    else:
        top = max(-lo, hi)
        scale = top / (2 ** (n_bits - 1) - 1)
        qmin, qmax = int_range(n_bits, signed=True, narrow=True)
    return np.clip(np.rint(v / scale), qmin, qmax) * scale


def _sample(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = np.asarray(v, np.float64).reshape(-1)
    if flat.size > MSE_SAMPLES:
        flat = rng.choice(flat, MSE_SAMPLES, replace=False)
    return flat


def observed_range(values: list[np.ndarray], method: str, n_bits: int,
                   percentile: float = 99.99, asymmetric: bool = False) -> tuple[float, float]:
    """Quantization range of the concatenated ``values`` under ``method``.

    ``asymmetric``: the quantizer has a zero point (the MSE search models it).

    One outlier among 10,000 values: min/max spends the 15 steps of 4 bits on it; the MSE
    search clips it (a rarer or smaller outlier would be kept: it only clips when that
    lowers the mean squared error).

    >>> v = np.r_[np.linspace(0, 1, 9999), 20.0]
    >>> observed_range([v], "minmax", 4)
    (0.0, 20.0)
    >>> lo, hi = observed_range([v], "mse", 4)
    >>> lo, bool(hi < 5)
    (0.0, True)
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    lo = min(float(np.min(v)) for v in values)
    hi = max(float(np.max(v)) for v in values)
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        flat = np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values])
        a, b = np.percentile(flat, [100.0 - percentile, percentile])
        return float(a), float(b)
    rng = np.random.default_rng(0)
    flat = np.concatenate([_sample(v, rng) for v in values])
    best, best_err = (lo, hi), np.inf
    for f in MSE_GRID:
        cand = (lo * f if lo < 0 else lo, hi * f)
        err = float(np.mean((_fake_quant(flat, *cand, n_bits, asymmetric) - flat) ** 2))
        if err < best_err * (1 - 1e-9):  # ties keep the wider range
            best, best_err = cand, err
    return best


def mse_weight_scales(w: np.ndarray, n_bits: int) -> np.ndarray:
    """Per-output-channel symmetric scales (narrow, ``n_bits``) minimising the squared
    quantization error of each channel's weights (clipping searched on a grid).

    Row 0: one large weight among 100 small ones is clipped (scale 0.36 instead of its
    min/max scale 1.0); row 1, evenly spread, keeps a scale near its min/max one (1/6).

    >>> w = np.array([np.r_[3.0, np.tile([0.3, -0.3], 50)], np.linspace(-0.5, 0.5, 101)])
    >>> s = mse_weight_scales(w, 3)
    >>> [round(float(x), 3) for x in s]
    [0.36, 0.145]
    """
    qmax = 2 ** (n_bits - 1) - 1
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    top = np.abs(rows).max(axis=1)
    safe = np.where(top > 0, top, 1.0)
    best_scale = safe / qmax
    best_err = np.full(len(rows), np.inf)
    for f in MSE_GRID:
        scale = safe * f / qmax
        q = np.clip(np.rint(rows / scale[:, None]), -qmax, qmax) * scale[:, None]
        err = ((q - rows) ** 2).sum(axis=1)
        better = err < best_err * (1 - 1e-9)
        best_scale = np.where(better, scale, best_scale)
        best_err = np.where(better, err, best_err)
    return np.where(top > 0, best_scale, 1.0)

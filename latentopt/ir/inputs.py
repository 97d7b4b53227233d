"""The one check of inputs that every backend and client applies.

:func:`check_quantized` validates quantized inputs (integers, shape, range),
:func:`check_features` float features (shape) and :func:`warn_far_outside` warns about
features far outside the input quantizer's range; :meth:`Schedule.check_quantized
<latentopt.ir.schedule.Schedule.check_quantized>` applies the first against a circuit's
input quantizer.  Re-exported by :mod:`.schedule`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["InputRangeWarning", "InputTypeError", "check_features", "check_quantized",
           "warn_far_outside"]


class InputTypeError(TypeError, ValueError):
    """Quantized inputs that are not integers (both a ``TypeError`` and a ``ValueError``)."""


class InputRangeWarning(UserWarning):
    """Samples far outside the input quantizer's range (:func:`warn_far_outside`); its
    own category, so that internal probe and scoring rows can silence it by class."""


def check_features(X: Any, n_features: int, name: str = "X") -> np.ndarray:
    """``X`` as an array of shape ``(n_samples, n_features)``, else a ``ValueError``."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (n_samples, {n_features}), got {X.shape}")
    return X


def check_quantized(
    q: Any, n_features: int, bounds: tuple[int, int], name: str = "q",
    reason: str = "the input quantizer's range",
) -> np.ndarray:
    """Validate quantized inputs; return them as a C-contiguous int64 array.

    C order matters: concrete-python reads a tensor's buffer in C order whatever its
    strides, so a Fortran-ordered array (a column selection, a pandas frame, a
    transpose) was encrypted and simulated with its samples scrambled, silently.

    The one input check of every backend: an integer array (else
    :class:`InputTypeError`) of shape ``(n_samples, n_features)`` whose values lie in
    ``bounds`` (else ``ValueError``, naming the bounds and ``reason``).

    >>> check_quantized([[1, -2]], 2, (-4, 3)).tolist()
    [[1, -2]]
    >>> check_quantized([[1, 5]], 2, (-4, 3))
    Traceback (most recent call last):
    ...
    ValueError: quantized inputs must lie in [-4, 3] (the input quantizer's range)
    """
    q = np.asarray(q)
    if q.dtype.kind not in "iu":
        raise InputTypeError(f"{name}: expected quantized integer inputs, got dtype {q.dtype}")
    check_features(q, n_features, name)
    lo, hi = (int(b) for b in bounds)
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"quantized inputs must lie in [{lo}, {hi}] ({reason})")
    return np.ascontiguousarray(q, dtype=np.int64)


def warn_far_outside(X: np.ndarray, quantizer: Any, stacklevel: int = 4) -> None:
    """Warn when samples lie further outside the input quantizer's range than the range
    is wide: clipped to it, they reach the network as different inputs.

    ``fhe="disable"`` clips out-of-range features, as any quantized model does; a little
    beyond the calibrated range is normal (test data past the training extremes), but a
    model calibrated on ``X * 0.1`` and asked about ``X`` answered with an error of 0.19
    on outputs spanning 0.29, without a word (the FHE modes warn on any sample outside
    the compiled input box).
    """
    if X.ndim != 2 or not len(X):
        return
    lo_q, hi_q = quantizer.qrange
    zp, scale = quantizer.zero_point.astype(np.float64), quantizer.scale
    lo, hi = (lo_q - zp) * scale, (hi_q - zp) * scale
    span = hi - lo
    far = (X < lo - span) | (X > hi + span)
    if not far.any():
        return
    rows = far.any(axis=1)
    feature = int(np.argmax(far.sum(axis=0)))
    f_lo = float(np.broadcast_to(lo, X.shape[1:])[feature])
    f_hi = float(np.broadcast_to(hi, X.shape[1:])[feature])
    warnings.warn(
        f"{int(rows.sum())} of {len(X)} samples have features further outside the range "
        f"the input quantizer was calibrated on than that range is wide (e.g. feature "
        f"{feature}: range {f_lo:.3g} to {f_hi:.3g}, values from {float(X[:, feature].min()):.3g} "
        f"to {float(X[:, feature].max()):.3g}); they are clipped to it, so their predictions "
        f"are those of other inputs.  Scale X as at fit/calibration, or calibrate on data "
        f"that covers it.", InputRangeWarning, stacklevel=stacklevel)

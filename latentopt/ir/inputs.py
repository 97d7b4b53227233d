"""The one check of inputs that every backend and client applies.

:func:`check_quantized` validates quantized inputs (integers, shape, range) and
:func:`check_features` float features (shape); :meth:`Schedule.check_quantized
<latentopt.ir.schedule.Schedule.check_quantized>` applies the first against a circuit's
input quantizer.  Re-exported by :mod:`.schedule`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["InputTypeError", "check_features", "check_quantized"]


class InputTypeError(TypeError, ValueError):
    """Quantized inputs that are not integers (both a ``TypeError`` and a ``ValueError``)."""


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

"""How N samples are split into calls of a compiled FHE module (numpy only).

A module has a ``single`` function (one sample) and, when ``batch_size > 1``, a
``batch`` function (``batch_size`` samples).  :func:`plan_calls` covers N samples with
full batches and either single calls or one padded batch for the remainder;
:func:`pad_batch` pads a short batch.  Used alike by the compiled circuit
(:mod:`.fhe`), the deployment client (:mod:`.fhe_deploy`) and the cost model.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PAD_FRACTION", "pad_batch", "plan_calls"]

#: A remainder of ``r`` samples runs as one padded batch when ``r >= PAD_FRACTION * B``:
#: on 2 cores a batch of B costs about as much as 0.75 * B single-sample runs.
PAD_FRACTION = 0.75


def plan_calls(
    n: int, batch_size: int, pad_from: float | None = None
) -> list[tuple[int, int, str]]:
    """``(start, stop, function)`` calls covering ``n`` samples.

    Full batches use ``"batch"``; a remainder of at least ``pad_from`` samples (default
    ``PAD_FRACTION * batch_size``) becomes one padded batch, a smaller one single calls.

    >>> plan_calls(11, 4)
    [(0, 4, 'batch'), (4, 8, 'batch'), (8, 11, 'batch')]
    >>> plan_calls(6, 4)
    [(0, 4, 'batch'), (4, 5, 'single'), (5, 6, 'single')]
    """
    b = batch_size
    full = n - n % b if b > 1 else 0
    calls = [(start, start + b, "batch") for start in range(0, full, b)]
    threshold = PAD_FRACTION * b if pad_from is None else pad_from
    if b > 1 and n - full >= max(2, threshold):
        return [*calls, (full, n, "batch")]
    return calls + [(i, i + 1, "single") for i in range(full, n)]


def pad_batch(x: np.ndarray, name: str, batch_size: int) -> np.ndarray:
    """Pad a short ``"batch"`` call with copies of its first row."""
    if name == "batch" and len(x) < batch_size:
        return np.concatenate([x, np.repeat(x[:1], batch_size - len(x), axis=0)])
    return x

"""A traced float graph run on samples: every node's values, and a clear error when
the samples are not the model's (flat rows given to a convolution, say)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .unsupported import UnsupportedOpError

__all__ = ["record_values", "run_on_samples", "samples_error"]


@torch.no_grad()
def record_values(gm: fx.GraphModule, X: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor-valued node's float output on ``X`` (float64 numpy, batch first)."""
    values: dict[str, np.ndarray] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                values[n.name] = out.detach().double().numpy()
            elif hasattr(out, "value") and isinstance(out.value, torch.Tensor):  # QuantTensor
                values[n.name] = out.value.detach().double().numpy()
            return out

    try:
        # (a copy: an in-place operation on the input would write into the caller's X)
        _Recorder(gm).run(torch.tensor(np.asarray(X), dtype=torch.float32))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise samples_error(X, err) from err
    n = len(X)
    for name, v in values.items():  # a circuit computes one sample at a time
        if v.ndim == 0 or v.shape[0] != n:
            raise UnsupportedOpError(
                f"a value that mixes samples: {n} samples give shape {v.shape} (the "
                f"batch axis must stay first and keep its size: reshape with "
                f"x.view(x.size(0), ...) or x.flatten(1), not x.view(-1, k) or "
                f"x.flatten(); average over dim >= 1, not x.mean() or x.mean(dim=0))",
                name)
    return values


def run_on_samples(model: nn.Module, X: np.ndarray) -> Any:
    """``model``'s float output on the first two samples of ``X``
    (:func:`samples_error` when it cannot run on them)."""
    try:
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(X[:2]), dtype=torch.float32))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise samples_error(X, err) from err


def samples_error(X: np.ndarray, err: Exception) -> ValueError:
    """The error of a model that cannot run on samples ``X``: it names the sample shape
    expected (flat rows given to a convolution, say) instead of torch's message from
    inside the graph alone."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ValueError(
        f"the model cannot run on samples of shape {tuple(np.shape(X))} ({first}); give a "
        f"batch of the model's own samples, (n_samples, *sample_shape): (n, channels, "
        f"height, width) for a Conv2d, (n, channels, length) for a Conv1d")

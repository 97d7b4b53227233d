"""How important a hidden neuron is: torch-pruning importance criteria by name.

| name       | torch-pruning importance                                          | needs data |
|------------|-------------------------------------------------------------------|------------|
| ``l1``     | ``MagnitudeImportance(p=1)``: L1 norm of the neuron's group       | no         |
| ``l2``     | ``MagnitudeImportance(p=2)``                                      | no         |
| ``taylor`` | ``TaylorImportance()``: ``abs(w * dL/dw)`` summed over the group  | ``X, y``   |
| ``random`` | ``RandomImportance()``: a baseline                                | no         |

A neuron's *group* is its row in the layer that produces it and its column in the layer
that consumes it (torch-pruning's dependency graph couples them).  Any
``torch_pruning.importance.Importance`` instance is accepted as well.

torch-pruning is imported only when an importance is built.

Examples
--------
>>> type(make_importance("l1")).__name__
'MagnitudeImportance'
>>> needs_gradients(make_importance("taylor")), needs_gradients(make_importance("l2"))
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IMPORTANCES", "accumulate_gradients", "default_loss", "make_importance",
           "needs_gradients"]

#: Importance criteria known by name.
IMPORTANCES = ("l1", "l2", "taylor", "random")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_importance(importance: Any) -> Any:
    """A torch-pruning importance object from a name of :data:`IMPORTANCES` (or as is)."""
    import torch_pruning as tp

    if isinstance(importance, tp.importance.Importance):
        return importance
    if importance == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if importance == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if importance == "taylor":
        return tp.importance.TaylorImportance()
    if importance == "random":
        return tp.importance.RandomImportance()
    raise ValueError(
        f"unknown importance {importance!r}; use one of {IMPORTANCES} or a "
        "torch_pruning.importance.Importance"
    )


def needs_gradients(importance: Any) -> bool:
    """Whether the importance reads ``weight.grad`` (first-order Taylor criteria)."""
    import torch_pruning as tp

    return isinstance(importance, tp.importance.GroupTaylorImportance)


def default_loss(y: np.ndarray) -> LossFn:
    """Cross-entropy for integer class labels, mean squared error otherwise."""
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        return F.cross_entropy

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, target.reshape(out.shape).to(out.dtype))

    return mse


def accumulate_gradients(
    module: nn.Module, X: np.ndarray, y: np.ndarray, loss_fn: LossFn | None = None
) -> float:
    """Zero the gradients, then back-propagate ``loss_fn(module(X), y)``; return the loss."""
    loss_fn = default_loss(y) if loss_fn is None else loss_fn
    module.zero_grad(set_to_none=False)
    for p in module.parameters():  # parameters never used get a zero gradient too
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    Xt = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y))
    loss = loss_fn(module(Xt), yt)
    loss.backward()
    return float(loss.item())

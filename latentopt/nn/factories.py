"""Module factories: float torch models built at ``fit`` time from the data's shape.

:class:`~latentopt.QuantizedTorchClassifier` and
:class:`~latentopt.QuantizedTorchRegressor` take either a trained ``torch.nn.Module`` or
a *factory*: a callable ``factory(input_shape, n_outputs) -> torch.nn.Module`` called
by ``fit`` with the shape of one sample and the number of outputs the targets need
(classes, or regression targets).  The module is then trained from its initial
weights (seeded by the estimator's ``random_state``), as skorch builds its module at
fit time.  :class:`MLPFactory` is the small multi-layer perceptron factory.

Examples
--------
>>> import torch
>>> f = MLPFactory(hidden_layer_sizes=(8,))
>>> f
MLPFactory(hidden_layer_sizes=(8,), activation='relu')
>>> m = f((2, 3), 4)
>>> tuple(m(torch.zeros(5, 2, 3)).shape)
(5, 4)
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACTIVATIONS", "MLPFactory"]

ACTIVATIONS = ("relu", "tanh", "sigmoid")


class MLPFactory:
    """Build ``Flatten -> (Linear -> activation) * len(hidden) -> Linear``.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(16,)
        Widths of the hidden layers (``()``: a linear model).
    activation : {"relu", "tanh", "sigmoid"}, default="relu"
    """

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (16,),
                 activation: str = "relu") -> None:
        sizes = tuple(int(h) for h in hidden_layer_sizes)
        if any(h < 1 for h in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive, got {hidden_layer_sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.hidden_layer_sizes = sizes
        self.activation = activation

    def __call__(self, input_shape: tuple[int, ...], n_outputs: int) -> Any:
        """A fresh float MLP for samples of ``input_shape`` and ``n_outputs`` outputs."""
        from math import prod

        from torch import nn

        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[self.activation]
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(prod(input_shape))
        for h in self.hidden_layer_sizes:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, int(n_outputs)))
        return nn.Sequential(*layers)

    def __repr__(self) -> str:
        return (f"MLPFactory(hidden_layer_sizes={self.hidden_layer_sizes!r}, "
                f"activation={self.activation!r})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MLPFactory)
                and (self.hidden_layer_sizes, self.activation)
                == (other.hidden_layer_sizes, other.activation))

    def __hash__(self) -> int:
        return hash((self.hidden_layer_sizes, self.activation))

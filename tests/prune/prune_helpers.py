"""Helpers shared by the pruning tests (imported by the test modules and conftest)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from latentopt.nn.mlp import QuantMLP
from latentopt.nn.train import torch_threads, train_module


def make_task(seed: int = 0, n: int = 600):
    """3 classes from a linear and a non-linear rule on 8 standard-normal features."""
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 8)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] * X[:, 3] > 0.5)
    return X, y


def accuracy(module: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    module.eval()
    with torch.no_grad():
        out = module(torch.as_tensor(X, dtype=torch.float32))
    return float((out.argmax(1).numpy() == y).mean())


def fine_tuner(X: np.ndarray, y: np.ndarray, epochs: int = 4) -> Callable[[QuantMLP], None]:
    def fine_tune(module: QuantMLP) -> None:
        with torch_threads(1):
            train_module(module, X, y, F.cross_entropy, max_epochs=epochs, lr=5e-3, seed=0)

    return fine_tune


def rebuilt(module: QuantMLP) -> QuantMLP:
    """What the estimators do when unpickling: rebuild from config, load the state."""
    fresh = QuantMLP(**module.config)
    fresh.load_state_dict(module.state_dict())
    return fresh.eval()


def assert_export_matches_brevitas(module: QuantMLP, X: np.ndarray) -> None:
    """The exported circuit's integers are brevitas' integers (ReLU: exactly)."""
    from latentopt.backends.integer import IntegerBackend
    from latentopt.nn.export import brevitas_trace, export_mlp

    circuit = export_mlp(module)
    backend = IntegerBackend(circuit)
    out, values = backend.run_integers(backend.quantize(X), return_all=True)
    ref = brevitas_trace(module, X)
    for name in ref:
        if name != "output":
            np.testing.assert_array_equal(values[name], ref[name], err_msg=name)
    ref_int = np.rint(ref["output"] / circuit.output.scale).astype(np.int64)
    np.testing.assert_array_equal(out, ref_int)

"""Shared fixtures for the pruning tests: a tiny synthetic task and trained QuantMLPs.

Modules are trained once per session; tests get deep copies (pruning works in place).
"""

from __future__ import annotations

import copy

import pytest
import torch.nn.functional as F
from prune_helpers import make_task

from latentopt.nn.mlp import QuantMLP
from latentopt.nn.train import seeded, torch_threads, train_module


@pytest.fixture(scope="session")
def task():
    X, y = make_task(0, 900)
    return X[:600], y[:600], X[600:], y[600:]


@pytest.fixture(scope="session")
def _trained_modules(task):
    Xtr, ytr, _, _ = task
    out = {}
    for key, hidden in (("small", (16, 12)), ("one", (12,))):
        with seeded(0), torch_threads(1):
            m = QuantMLP(8, hidden, 3, n_w_bits=3, n_a_bits=3, n_input_bits=4)
            train_module(m, Xtr, ytr, F.cross_entropy, max_epochs=25, lr=1e-2, seed=0)
        out[key] = m
    return out


@pytest.fixture
def trained(_trained_modules) -> QuantMLP:
    """A trained 8-16-12-3 QuantMLP (3-bit weights/activations, 4-bit inputs); a copy."""
    return copy.deepcopy(_trained_modules["small"])


@pytest.fixture
def trained_one(_trained_modules) -> QuantMLP:
    """A trained 8-12-3 QuantMLP; a copy."""
    return copy.deepcopy(_trained_modules["one"])

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentopt.nn.mlp import QuantMLP, per_layer
from latentopt.nn.train import seeded, torch_threads, train_module


def _data(n=300, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 6)
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.int64)


def test_training_learns_and_early_stops():
    X, y = _data()
    with seeded(0):
        m = QuantMLP(6, (16,), 2)
        hist = train_module(m, X[:200], y[:200], F.cross_entropy, X_val=X[200:], y_val=y[200:],
                            score_fn=lambda o, t: (o.argmax(1) == t).float().mean().item(),
                            max_epochs=300, lr=1e-2, patience=5, seed=0)
    assert hist.stopped_early and hist.n_epochs < 300
    assert hist.best_epoch == hist.n_epochs - 1 - 5
    # best weights restored: validation score equals the best recorded one
    with torch.no_grad():
        score = (m(torch.as_tensor(X[200:], dtype=torch.float32)).argmax(1).numpy()
                 == y[200:]).mean()
    assert score == pytest.approx(max(hist.val_score))
    assert score > 0.85
    assert not m.training


def test_seeded_is_reproducible_and_restores_global_rng():
    X, y = _data()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    params = []
    for _ in range(2):
        with seeded(3):
            m = QuantMLP(6, (4,), 2)
            train_module(m, X, y, F.cross_entropy, max_epochs=2, seed=3)
        params.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(params[0], params[1])
    assert torch.equal(torch.rand(3), expected)


def test_torch_threads_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_divergence_is_reported():
    X, y = _data()
    m = QuantMLP(6, (4,), 2)

    def nan_loss(out, target):
        return F.cross_entropy(out, target) * float("nan")

    with pytest.raises(FloatingPointError, match="diverged"):
        train_module(m, X, y, nan_loss, max_epochs=2)


def test_per_layer_validation():
    assert per_layer(4, 3, "b") == [4, 4, 4]
    assert per_layer(np.array([3, 4]), 2, "n_w_bits") == [3, 4]  # as hidden_layer_sizes
    with pytest.raises(ValueError, match="sequence of ints"):
        per_layer(np.array([3.0, 4.0]), 2, "n_w_bits")
    with pytest.raises(ValueError, match="expected 2"):
        per_layer([3], 2, "n_a_bits")
    with pytest.raises(ValueError, match=r"\[2, 16\]"):  # as for n_w_bits=1
        per_layer(0, 1, "n_w_bits")
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        per_layer(0, 1, "n_a_bits")
    with pytest.raises(ValueError, match="activation"):
        QuantMLP(3, (2,), 2, activation="nope")


def test_float_copy_same_shapes():
    m = QuantMLP(5, (7, 3), 2)
    f = m.float_copy()
    assert f(torch.zeros(4, 5)).shape == (4, 2)
    assert sum(isinstance(x, torch.nn.Linear) for x in f) == 3


def test_first_argmax_breaks_ties_as_the_circuit_does():
    """The circuit's exact logits tie; the float module's differ by rounding error. The
    validation score of early stopping must pick the first class, as np.argmax does."""
    from latentopt.nn.train import first_argmax

    out = torch.tensor([[-0.538, -0.1537001, -0.1537], [1.0, 3.0, 2.0], [0.0, 0.0, 0.0],
                        [-5.0, -4.9999, -6.0]])
    assert first_argmax(out).tolist() == [1, 1, 0, 1]
    assert out.argmax(1).tolist()[0] == 2  # what the plain argmax picked

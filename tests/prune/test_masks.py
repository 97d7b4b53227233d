"""Weight masks of QuantMLP layers: applied before quantization, persistent, compatible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentopt.nn.export import export_mlp
from latentopt.nn.mlp import MaskedQuantLinear, QuantMLP
from latentopt.prune import clear_masks, ensure_masks, get_masks, has_masks, set_masks
from latentopt.prune.importance import accumulate_gradients, default_loss


def test_unmasked_state_dict_is_unchanged(trained_one):
    m = trained_one
    keys = set(m.state_dict())
    assert not any("mask" in k for k in keys)
    # an unmasked state loads into a fresh module, a masked one only with its masks
    ensure_masks(m)
    assert {k for k in m.state_dict() if "mask" in k} == {"linears.0.weight_mask",
                                                          "linears.1.weight_mask"}
    fresh = QuantMLP(**m.config)
    fresh.load_state_dict(m.state_dict())
    assert has_masks(fresh)
    assert set(fresh.state_dict()) == keys | {"linears.0.weight_mask", "linears.1.weight_mask"}


def test_mask_is_applied_before_quantization_and_blocks_gradients():
    torch.manual_seed(0)
    m = QuantMLP(6, (5,), 2, n_w_bits=4)
    mask = (torch.rand(5, 6) > 0.5).float()
    mask[:, 0] = 1
    set_masks(m, [mask, None])
    assert get_masks(m)[1] is None
    w_int = export_mlp(m)["fc0"].weight
    assert np.all(w_int[mask.numpy() == 0] == 0)
    # the scale comes from the surviving weights: the largest of them maps to 2**3 - 1
    assert np.abs(w_int).max() == 7
    m.train()
    loss = F.cross_entropy(m(torch.randn(16, 6)), torch.randint(0, 2, (16,)))
    loss.backward()
    grad = m.linears[0].weight.grad
    assert torch.all(grad[mask == 0] == 0) and torch.any(grad[mask == 1] != 0)
    clear_masks(m)
    assert not has_masks(m)


def test_mask_validation():
    lin = MaskedQuantLinear(3, 2, bias=True)
    with pytest.raises(ValueError, match="shape"):
        lin.set_weight_mask(torch.ones(3, 2))
    with pytest.raises(ValueError, match="only 0 and 1"):
        lin.set_weight_mask(torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="expected 2 masks"):
        set_masks(QuantMLP(3, (2,), 2), [None])


def test_default_loss_and_gradients():
    m = QuantMLP(4, (3,), 2)
    X = np.random.RandomState(0).randn(20, 4)
    assert default_loss(np.zeros(3, dtype=np.int64)) is F.cross_entropy
    mse = default_loss(np.zeros(3))
    assert float(mse(torch.ones(3, 1), torch.zeros(3))) == pytest.approx(1.0)
    loss = accumulate_gradients(m, X, (X[:, 0] > 0).astype(np.int64))
    assert loss > 0 and m.linears[0].weight.grad.abs().sum() > 0

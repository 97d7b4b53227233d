"""Structured pruning removes whole hidden neurons and keeps the module consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from brevitas.quant import Int8WeightPerChannelFloat, Int32Bias
from prune_helpers import accuracy, assert_export_matches_brevitas, fine_tuner, rebuilt

from latentopt.nn.export import export_mlp
from latentopt.nn.mlp import MaskedQuantLinear, QuantMLP
from latentopt.prune import PruneReport, layer_ratios, prune_structured


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "random"])
def test_neurons_tlus_and_exactness(trained, task, importance):
    Xtr, ytr, Xte, _ = task
    tlus = export_mlp(trained).report().tlu_count
    rep = prune_structured(trained, 0.5, importance=importance, X=Xtr, y=ytr, seed=0)
    assert isinstance(rep, PruneReport)
    assert rep.hidden_before == [16, 12] and rep.hidden_after == [8, 6]
    assert [lin.out_features for lin in trained.linears] == [8, 6, 3]
    assert [lin.in_features for lin in trained.linears] == [8, 8, 6]  # inputs never pruned
    assert trained.config["hidden_sizes"] == [8, 6]
    circuit = export_mlp(trained)
    assert (rep.tlus_before, rep.tlus_after) == (tlus, 14) == (28, circuit.report().tlu_count)
    assert [a.size for a in rep.active_inputs] == [8, 6, 3]
    assert_export_matches_brevitas(trained, Xte)


def test_rebuild_from_config_reproduces_module(trained, task):
    prune_structured(trained, 0.4)
    copy = rebuilt(trained)
    X = torch.as_tensor(task[2], dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(copy(X), trained.eval()(X), rtol=0, atol=0)
    assert export_mlp(copy).same_as(export_mlp(trained))


def test_l1_removes_dead_neurons(trained):
    """Neurons whose weights are all zero have the lowest L1 importance."""
    dead = [1, 4, 6, 9, 11, 14]
    with torch.no_grad():
        trained.linears[0].weight[dead] = 0.0
        trained.linears[0].bias[dead] = 0.0
        trained.linears[1].weight[:, dead] = 0.0
        alive_rows = trained.linears[0].weight[[i for i in range(16) if i not in dead]].clone()
    prune_structured(trained, 6 / 16, per_layer={1: 0.0}, importance="l1")
    assert trained.config["hidden_sizes"] == [10, 12]
    torch.testing.assert_close(trained.linears[0].weight.detach(), alive_rows)


def test_random_importance_is_seeded(trained):
    a, b = (type(trained)(**trained.config) for _ in range(2))
    a.load_state_dict(trained.state_dict())
    b.load_state_dict(trained.state_dict())
    prune_structured(a, 0.5, importance="random", seed=3)
    prune_structured(b, 0.5, importance="random", seed=3)
    torch.testing.assert_close(a.linears[0].weight, b.linears[0].weight)


def test_per_layer_and_global_ratios(trained):
    assert layer_ratios([16, 12], 0.5, [0.25, 0.5]) == [0.25, 0.5]
    m1 = rebuilt(trained)
    assert prune_structured(m1, per_layer=[0.25, 0.5]).hidden_after == [12, 6]
    m2 = rebuilt(trained)
    assert prune_structured(m2, 0.0, per_layer={0: 0.5}).hidden_after == [8, 12]
    m3 = rebuilt(trained)
    rep = prune_structured(m3, 0.5, global_pruning=True)
    assert sum(rep.hidden_after) == 14 and min(rep.hidden_after) >= 1


def test_global_pruning_refuses_to_empty_a_layer(trained):
    import torch_pruning as tp

    with torch.no_grad():  # every neuron of hidden layer 1 becomes the least important
        trained.linears[1].weight.mul_(1e-3)
        trained.linears[2].weight.mul_(1e-3)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    unnormalised = tp.importance.MagnitudeImportance(p=1, normalizer=None)
    with pytest.raises(ValueError, match="every neuron of a hidden layer"):
        prune_structured(trained, 0.5, global_pruning=True, importance=unnormalised)
    assert trained.config["hidden_sizes"] == [16, 12]
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
    rep = prune_structured(trained, 0.25, global_pruning=True, importance=unnormalised)
    assert rep.hidden_after == [16, 5]  # the 7 lowest-ranked are all in layer 1


def test_iterative_pruning_with_fine_tuning_keeps_accuracy(trained, task):
    Xtr, ytr, Xte, yte = task
    base = accuracy(trained, Xte, yte)
    calls = []
    tune = fine_tuner(Xtr, ytr, epochs=5)

    def fine_tune(module):
        calls.append(list(module.config["hidden_sizes"]))
        tune(module)

    rep = prune_structured(trained, 0.5, steps=2, fine_tune=fine_tune, importance="taylor",
                           X=Xtr, y=ytr)
    assert calls == [[12, 9], [8, 6]]  # linear schedule, one fine-tuning per step
    assert rep.hidden_after == [8, 6]
    assert base > 0.75
    assert accuracy(trained, Xte, yte) >= base - 0.06
    assert_export_matches_brevitas(trained, Xte)


def test_masked_module_keeps_consistent_masks(trained, task):
    gen = torch.Generator().manual_seed(0)
    old_w, old_m = [], []
    for lin in trained.linears:
        mask = (torch.rand(lin.weight.shape, generator=gen) > 0.3).float()
        lin.set_weight_mask(mask)
        old_w.append(lin.weight.detach().clone())
        old_m.append(mask)
    prune_structured(trained, 0.5)
    cols = list(range(8))  # input features are never pruned
    for k, lin in enumerate(trained.linears):
        new_w, new_m = lin.weight.detach(), lin.weight_mask
        assert new_m.shape == new_w.shape
        assert torch.all(new_w[new_m == 0] == 0)
        # identify each surviving neuron by its weights on the surviving inputs
        rows = [next(i for i in range(old_w[k].shape[0])
                     if torch.equal(old_w[k][i, cols], r)) for r in new_w]
        assert len(set(rows)) == len(rows)
        assert torch.equal(new_m, old_m[k][rows][:, cols])
        cols = rows
    w_int = [export_mlp(trained)[f"fc{i}"].weight for i in range(3)]
    for lin, w in zip(trained.linears, w_int):
        assert np.all(w[lin.weight_mask.numpy() == 0] == 0)
    assert_export_matches_brevitas(trained, task[2])
    assert export_mlp(rebuilt(trained)).same_as(export_mlp(trained))


def test_learned_per_channel_scales_are_sliced(task):
    """Brevitas re-initialises a layer's weight quantizer on pruning: learned state is kept."""
    m = QuantMLP(8, (10,), 3)
    for i, lin in enumerate(m.linears):
        m.linears[i] = MaskedQuantLinear(
            lin.in_features, lin.out_features, bias=True, weight_bit_width=3,
            weight_quant=Int8WeightPerChannelFloat, bias_quant=Int32Bias,
            weight_scaling_impl_type="parameter_from_stats", return_quant_tensor=False)
    m(torch.as_tensor(task[0][:32], dtype=torch.float32))  # initialise the scales
    key = "linears.0.weight_quant.tensor_quant.scaling_impl.value"
    with torch.no_grad():  # make every learned scale distinct and far from its init
        m.state_dict()[key].copy_(torch.arange(1, 11, dtype=torch.float32).reshape(10, 1))
    prune_structured(m, 0.5)
    after = m.state_dict()[key].flatten()
    assert after.shape == (5,)
    assert set(after.tolist()) <= set(range(1, 11))  # a subset of the trained values
    second = m.state_dict()["linears.1.weight_quant.tensor_quant.scaling_impl.value"]
    assert second.shape == (3, 1)  # output layer: per-channel state untouched
    assert_export_matches_brevitas(m, task[2])


def test_mode_is_preserved(trained):
    trained.train()
    prune_structured(trained, 0.25)
    assert trained.training
    trained.eval()
    prune_structured(trained, 0.25)
    assert not trained.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=1.0), r"\[0, 1\)"),
        (dict(ratio=-0.1), r"\[0, 1\)"),
        (dict(ratio=0.5, per_layer=[0.5]), "one per hidden layer"),
        (dict(ratio=0.5, per_layer={2: 0.5}), "hidden layer index"),
        (dict(ratio=0.5, per_layer=[0.5, 1.5]), r"\[0, 1\)"),
        (dict(ratio=0.95), "zero neurons"),
        (dict(ratio=0.5, per_layer=[0.5, 0.5], global_pruning=True), "exclusive"),
        (dict(ratio=0.5, importance="taylor"), "needs X and y"),
        (dict(ratio=0.5, importance="l3"), "unknown importance"),
        (dict(ratio=0.5, steps=0), "steps"),
    ],
)
def test_errors_leave_module_untouched(trained, kwargs, match):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        prune_structured(trained, **kwargs)
    assert trained.config["hidden_sizes"] == [16, 12]
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())


def test_no_hidden_layer_and_wrong_type():
    with pytest.raises(ValueError, match="no hidden layer"):
        prune_structured(QuantMLP(4, (), 2), 0.5)
    with pytest.raises(TypeError, match="QuantMLP"):
        prune_structured(torch.nn.Linear(3, 2), 0.5)

"""Accumulator-budget pruning: the bound is guaranteed on the exported IR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from prune_helpers import accuracy, assert_export_matches_brevitas, fine_tuner, rebuilt

from latentopt.backends.integer import IntegerBackend
from latentopt.ir import bit_width
from latentopt.nn.export import export_mlp
from latentopt.prune import (
    accumulator_limits,
    get_masks,
    has_masks,
    min_accumulator_bits,
    prune_accumulator,
    prune_structured,
)


def _extreme_inputs(circuit, n=4000, seed=0):
    """Quantized inputs at and inside the extremes of the input quantizer's range."""
    rng = np.random.RandomState(seed)
    lo, hi = circuit.input_quantizer.qrange
    corners = np.where(rng.rand(n, circuit.n_features) < 0.5, lo, hi)
    uniform = rng.randint(lo, hi + 1, size=(n, circuit.n_features))
    return np.concatenate([corners, uniform]).astype(np.int64)


def assert_budget(module, n_bits):
    """IR worst-case analysis and extreme inputs through the integer backend agree."""
    circuit = export_mlp(module)
    rep = circuit.report()
    assert rep.max_accumulator_bits <= n_bits, str(rep)
    _, values = IntegerBackend(circuit).run_integers(_extreme_inputs(circuit), return_all=True)
    for row in rep.layers:
        acc = values[row["name"]]
        assert bit_width(acc.min(), acc.max()) <= n_bits, row["name"]
    return circuit


def test_min_accumulator_bits(trained):
    # 4-bit signed inputs [-8, 7] x 3-bit weights (max 3): 24 -> 6 bits signed;
    # 3-bit ReLU activations [0, 7] x 3: 21 -> 6 bits
    assert min_accumulator_bits(trained) == [6, 6, 6]
    assert accumulator_limits(6) == (-32, 31)


@pytest.mark.parametrize("n_bits", [6, 7, 8])
def test_worst_case_budget_is_guaranteed(trained, task, n_bits):
    before = export_mlp(trained).report().max_accumulator_bits
    assert before > 8  # the budgets below really bind
    rep = prune_accumulator(trained, n_bits)
    assert rep.max_accumulator_bits <= n_bits
    assert rep.details["weights_removed"] > 0
    circuit = assert_budget(trained, n_bits)
    # the report's active inputs are the circuit's non-zero integer weights
    for row, active in zip(circuit.report().layers, rep.active_inputs):
        np.testing.assert_array_equal(np.count_nonzero(circuit[row["name"]].weight, 1), active)
    assert rep.tlus_after == rep.tlus_before  # unstructured: no neuron removed
    assert_export_matches_brevitas(trained, task[2])


def test_tighter_budget_keeps_fewer_inputs(trained):
    counts = []
    for n_bits in (9, 7, 6):
        m = rebuilt(trained)
        rep = prune_accumulator(m, n_bits)
        counts.append(sum(int(a.sum()) for a in rep.active_inputs))
    assert counts[0] > counts[1] > counts[2]


def test_fine_tuning_keeps_masks_and_accuracy(trained, task):
    Xtr, ytr, Xte, yte = task
    base = accuracy(trained, Xte, yte)
    rep = prune_accumulator(trained, 8, fine_tune=fine_tuner(Xtr, ytr, epochs=6), rounds=2)
    assert_budget(trained, 8)
    masks = get_masks(trained)
    for lin, mask in zip(trained.linears, masks):
        assert torch.all(lin.weight[mask == 0] == 0)  # fine-tuning did not revive them
    assert rep.details["passes"] >= 1
    assert accuracy(trained, Xte, yte) >= base - 0.06


def test_count_strategy_holds_for_any_weights(trained):
    n_bits = 8
    rep = prune_accumulator(trained, n_bits, strategy="count")
    # k = 127 // (3 * max|x|): 127 // 24 = 5 inputs in layer 0, 127 // 21 = 6 after
    assert [int(a.max()) for a in rep.active_inputs] == [5, 6, 6]
    assert all(int(mask.sum(1).max()) <= k for mask, k in zip(get_masks(trained), [5, 6, 6]))
    with torch.no_grad():  # push every surviving weight to the largest magnitude
        for lin in trained.linears:
            lin.weight.copy_(torch.sign(torch.randn_like(lin.weight)) * lin.weight_mask)
            lin.bias.zero_()
    assert_budget(trained, n_bits)


def test_oversized_bias_is_clamped(trained_one, task):
    circuit = export_mlp(trained_one)
    scale = circuit["act0"].fn.input_scale
    with torch.no_grad():
        trained_one.linears[0].bias[3] = float(500 * np.ravel(scale)[0])
    assert export_mlp(trained_one)["fc0"].bias[3] == 500
    rep = prune_accumulator(trained_one, 7)
    assert rep.details["biases_clamped"] >= 1
    # limited to half the budget: the neuron keeps weights (at the edge, 63, its inputs
    # were all removed and its output was a constant)
    assert -32 <= export_mlp(trained_one)["fc0"].bias[3] <= 31
    assert rep.active_inputs[0][3] > 0
    assert_budget(trained_one, 7)


def test_neurons_left_without_weights_are_named_in_a_warning(trained_one):
    """Biases that fill the budget leave neurons constant in their input; a model of such
    neurons predicted one class, silently."""
    layer = trained_one.linears[0]
    with torch.no_grad():  # every weight at the quantizer's extreme: a product is 3 * 8
        layer.weight.copy_(layer.weight.sign() * layer.weight.abs().max())
    scale = np.ravel(export_mlp(trained_one)["act0"].fn.input_scale)[0]
    with torch.no_grad():
        layer.bias[:] = float(15 * scale)  # half a 6-bit budget: 16 left, < 24
    assert min_accumulator_bits(trained_one)[0] <= 6
    with pytest.warns(UserWarning, match=r"12 of 12 neurons of layer 0 without any weight"):
        rep = prune_accumulator(trained_one, 6)
    assert (rep.active_inputs[0] == 0).all()
    assert_budget(trained_one, 6)


def test_calibrated_budget(trained, task):
    Xtr, _, Xte, _ = task
    worst = rebuilt(trained)
    prune_accumulator(worst, 7)
    rep = prune_accumulator(trained, 7, X=Xtr, ranges="calibrated")
    assert rep.max_accumulator_bits_calibrated <= 7
    cal = IntegerBackend(export_mlp(trained)).calibrate(Xtr).report()
    assert max(r["accumulator_bits_calibrated"] for r in cal.layers) <= 7
    # data-driven ranges keep more weights than the worst case ...
    worst_circuit = export_mlp(worst)
    n_worst = sum(np.count_nonzero(worst_circuit[f"fc{i}"].weight) for i in range(3))
    assert sum(int(a.sum()) for a in rep.active_inputs) > n_worst
    # ... and are no guarantee: the worst case still exceeds the budget
    assert rep.max_accumulator_bits > 7
    assert_export_matches_brevitas(trained, Xte)


def test_masks_survive_rebuild_and_pickle_round_trip(trained, task):
    prune_accumulator(trained, 7)
    copy = rebuilt(trained)
    assert has_masks(copy)
    for a, b in zip(get_masks(copy), get_masks(trained)):
        assert torch.equal(a, b)
    assert export_mlp(copy).same_as(export_mlp(trained))
    X = torch.as_tensor(task[2], dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(copy(X), trained(X), rtol=0, atol=0)


def test_idempotent_and_noop_when_budget_met(trained, task):
    prune_accumulator(trained, 7)
    assert prune_accumulator(trained, 7).details["weights_removed"] == 0
    fresh = rebuilt(trained)
    before = export_mlp(fresh)
    rep = prune_accumulator(fresh, 16)
    assert rep.details["weights_removed"] == 0 and rep.details["biases_clamped"] == 0
    assert export_mlp(fresh).same_as(before)


def test_structured_then_accumulator_and_back(trained, task):
    Xte = task[2]
    prune_structured(trained, 0.5)
    prune_accumulator(trained, 7)
    assert_budget(trained, 7)
    # structured pruning of a masked module can change weight scales: re-enforce after
    prune_structured(trained, 0.3)
    assert trained.config["hidden_sizes"] == [5, 4]
    prune_accumulator(trained, 7)
    assert_budget(trained, 7)
    assert_export_matches_brevitas(trained, Xte)
    assert export_mlp(rebuilt(trained)).same_as(export_mlp(trained))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((1,), {}, ">= 2"),
        ((7.5,), {}, "must be an int"),
        ((5,), {}, "impossible"),
        ((7,), dict(ranges="calibrated"), "needs calibration data"),
        ((7,), dict(ranges="typical"), "ranges must be"),
        ((7,), dict(strategy="greedy"), "strategy must be"),
        ((7,), dict(rounds=0), "rounds"),
    ],
)
def test_errors_leave_module_untouched(trained, args, kwargs, match):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        prune_accumulator(trained, *args, **kwargs)
    assert not has_masks(trained)
    assert state.keys() == trained.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())

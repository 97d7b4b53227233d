"""The exported IR reproduces brevitas' quantized forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from latentopt.backends.integer import IntegerBackend
from latentopt.nn.export import brevitas_trace, export_mlp
from latentopt.nn.mlp import QuantMLP
from latentopt.nn.train import seeded, torch_threads, train_module


def _trained(activation: str, power_of_two: bool = False, hidden=(24, 16), bits=3):
    rng = np.random.RandomState(0)
    X = rng.randn(600, 10)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64) + (X[:, 3] > 1)
    with seeded(0), torch_threads(1):
        m = QuantMLP(10, hidden, 3, n_w_bits=bits, n_a_bits=bits, n_input_bits=5,
                     activation=activation, power_of_two_scales=power_of_two)
        train_module(m, X, y, F.cross_entropy, max_epochs=8, lr=1e-2, seed=0)
    return m, rng.randn(3000, 10) * 1.5


@pytest.mark.parametrize(
    "activation, power_of_two",
    [("relu", False), ("relu", True), ("sigmoid", False), ("tanh", False), ("gelu", False)],
)
def test_export_matches_brevitas(activation, power_of_two):
    module, X = _trained(activation, power_of_two)
    circuit = export_mlp(module)
    backend = IntegerBackend(circuit)
    out, values = backend.run_integers(backend.quantize(X), return_all=True)
    ref = brevitas_trace(module, X)
    # identical input and activation integers; float32 round-off may flip a value
    # sitting exactly on a rounding boundary of a transcendental activation.
    tolerance = 0 if activation == "relu" else 1e-3
    for name in ("x_q", "act0", "act1"):
        mismatch = np.mean(values[name] != ref[name])
        assert mismatch <= tolerance, (name, mismatch)
    # output integers = brevitas' float output divided by the accumulator scale
    scale = circuit.output.scale
    ref_int = np.rint(ref["output"] / scale).astype(np.int64)
    assert np.mean(ref_int != out) <= tolerance
    np.testing.assert_allclose(backend.dequantize(out), ref["output"], rtol=1e-5,
                               atol=1e-5 * np.abs(ref["output"]).max())
    # argmax agreement where the integer logits are not tied
    top2 = np.sort(out, axis=1)[:, -2:]
    untied = top2[:, 1] > top2[:, 0]
    agree = np.mean(out[untied].argmax(1) == ref["output"][untied].argmax(1))
    assert agree >= 0.999
    assert untied.mean() > 0.5


def test_export_structure_and_bits():
    module, _ = _trained("relu", hidden=(7,), bits=2)
    circuit = export_mlp(module)
    assert [n.op for n in circuit.nodes] == [
        "quantize_input", "gemm", "table_lookup", "gemm", "dequantize"]
    q = circuit.input_quantizer
    assert (q.n_bits, q.signed) == (5, True)
    fc0 = circuit["fc0"]
    assert fc0.weight.shape == (7, 10)
    assert np.abs(fc0.weight).max() <= 1  # 2-bit narrow signed weights: {-1, 0, 1}
    act = circuit["act0"].fn
    assert (act.activation, act.n_bits, act.signed) == ("relu", 2, False)
    assert circuit.metadata["config"]["hidden_sizes"] == [7]


def test_export_per_channel_weight_scales():
    from brevitas.quant import Int8WeightPerChannelFloat

    module, X = _trained("relu", hidden=(6,))
    # swap in per-channel weight quantization, keeping the trained float weights
    import brevitas.nn as qnn

    for i, lin in enumerate(module.linears):
        new = qnn.QuantLinear(lin.in_features, lin.out_features, bias=True,
                              weight_quant=Int8WeightPerChannelFloat, weight_bit_width=3,
                              bias_quant=lin.bias_quant.quant_injector, return_quant_tensor=False)
        new.load_state_dict(lin.state_dict(), strict=False)
        module.linears[i] = new
    circuit = export_mlp(module)
    assert circuit["act0"].fn.n_channels == 6
    backend = IntegerBackend(circuit)
    out, values = backend.run_integers(backend.quantize(X), return_all=True)
    ref = brevitas_trace(module, X)
    assert np.mean(values["act0"] != ref["act0"]) <= 1e-3

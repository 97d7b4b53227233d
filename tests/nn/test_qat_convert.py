"""convert_to_qat: float models become brevitas networks the importer reads exactly."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from torch import nn

from latentopt.nn.brevitas_import import import_brevitas
from latentopt.nn.fx_import import read_graph
from latentopt.nn.ptq import parse_bits
from latentopt.nn.qat_convert import calibrate_qat, convert_to_qat


class Mixed(nn.Module):
    """conv + batch norm, GELU, max pooling, a residual addition, linear -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.GELU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc1 = nn.Linear(64, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.pool(self.act(self.bn(self.conv1(x))))
        x = torch.relu(self.conv2(x)) + x
        return self.fc2(self.fc1(torch.flatten(x, 1)))


def _data(n: int = 96) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)


def _run(model: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.as_tensor(X))
    return np.asarray(getattr(out, "value", out).numpy())


def test_imported_circuit_computes_what_the_qat_network_computes():
    torch.manual_seed(0)
    model, X = Mixed().eval(), _data()
    model.bn.running_mean.normal_()
    bits = parse_bits({"inputs": 6, "weights": 4, "activations": 5, "conv2": 3},
                      read_graph(model)[1])
    qat, info = convert_to_qat(model, bits, input_signed=True)
    calibrate_qat(qat, X)
    circuit, _ = import_brevitas(qat, X)
    from latentopt.backends.integer import IntegerBackend

    b = IntegerBackend(circuit)
    out = b.dequantize(b.run_integers(b.quantize(X.reshape(len(X), -1))))
    ref = _run(qat, X)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # per-layer bits: conv2 at 3 bits (weights and the activation after it), others 4
    assert info["weights"] == {"conv1": 4, "conv2": 3, "fc1": 4, "fc2": 4}
    assert qat.get_submodule("conv2").quant_weight().bit_width.item() == 3
    assert qat.get_submodule("conv1").quant_weight().scale.numel() == 4  # per channel
    assert info["folded_batch_norms"] == ["bn"]
    # the GELU, the relu function, the add operands and fc2's input got quantizers
    inserted = " ".join(info["inserted"])
    for part in ("input", "act_out", "relu_out", "add_operands", "fc2_in"):
        assert part in inserted
    # QAT stays close to the float model after calibration alone
    assert np.corrcoef(ref.ravel(), _run(model, X).ravel())[0, 1] > 0.9


def test_the_float_model_is_left_untouched_and_weights_are_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qat, _ = convert_to_qat(model, parse_bits(8, []), input_signed=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(qat.get_submodule("0"), qnn.QuantLinear)
    assert isinstance(qat.get_submodule("1"), qnn.QuantReLU)
    assert torch.equal(qat.get_submodule("0").weight, model[0].weight)
    X = np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32)
    calibrate_qat(qat, X)
    # 8 bits everywhere: the QAT network is close to the float one
    np.testing.assert_allclose(_run(qat, X), _run(model, X), atol=0.05)


def test_brevitas_models_are_refused():
    model = nn.Sequential(qnn.QuantIdentity(return_quant_tensor=True), qnn.QuantLinear(3, 2,
                                                                                       bias=False))
    with pytest.raises(ValueError, match="brevitas"):
        convert_to_qat(model, parse_bits(4, []))

"""compile_brevitas_qat_model: the imported circuit computes what brevitas computes."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from brevitas.quant import Int32Bias
from torch import nn

from latentopt import compile_brevitas_qat_model
from latentopt.nn.fx_import import UnsupportedOpError


class QCNN(nn.Module):
    """QuantIdentity -> conv -> QuantReLU -> avgpool -> QuantIdentity -> conv -> QuantTanh
    -> residual add with a shared quantizer -> QuantReLU -> flatten -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.q = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
        self.c1 = qnn.QuantConv2d(1, 3, 3, padding=1, weight_bit_width=3, bias_quant=Int32Bias,
                                  weight_scaling_per_output_channel=True)
        self.r1 = qnn.QuantReLU(bit_width=3, return_quant_tensor=True)
        self.pool = nn.AvgPool2d(2)
        self.shared = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
        self.c2 = qnn.QuantConv2d(3, 3, 3, padding=1, weight_bit_width=3, bias_quant=Int32Bias)
        self.t2 = qnn.QuantTanh(bit_width=4, return_quant_tensor=True)
        self.r3 = qnn.QuantReLU(bit_width=3, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(12, 4, weight_bit_width=3, bias=True, bias_quant=Int32Bias)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.shared(self.pool(self.r1(self.c1(self.q(x)))))
        y = self.shared(self.t2(self.c2(x)))
        return self.fc(torch.flatten(self.r3(x + y), 1))


def _trained(model: nn.Module, X: np.ndarray, steps: int = 30) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    Xt = torch.as_tensor(X)
    target = torch.randint(0, 4, (len(X),))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xt), target).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def qcnn():
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(128, 1, 4, 4)).astype(np.float32)
    return _trained(QCNN(), X), X


def test_imported_circuit_equals_brevitas(qcnn):
    model, X = qcnn
    q = compile_brevitas_qat_model(model, X, fhe=False, verbose=0)
    with torch.no_grad():
        ref = model(torch.as_tensor(X)).numpy()
    out = q.forward(X)
    # same integers; float outputs differ by float32 round-off of brevitas only
    atol = 1e-4 * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
    # classes agree except where brevitas' two top outputs tie within that round-off
    # (which the thread count of its float32 sums decides)
    top2 = np.sort(ref, axis=1)[:, -2:]
    differ = out.argmax(1) != ref.argmax(1)
    assert np.all(top2[differ, 1] - top2[differ, 0] <= 2 * atol)
    bits = q.import_report_["activation_bits"]
    assert bits == {"q": 4, "r1": 3, "shared": 4, "t2": 4, "shared_1": 4, "r3": 3}
    assert q.circuit_.input_quantizer.n_bits == 4
    assert [n.op for n in q.circuit_.nodes].count("add") == 1


def test_intermediate_integers_equal_brevitas(qcnn):
    model, X = qcnn
    q = compile_brevitas_qat_model(model, X, fhe=False, verbose=0)
    from latentopt.backends.integer import IntegerBackend

    b = IntegerBackend(q.circuit_)
    _, values = b.run_integers(b.quantize(X.reshape(len(X), -1)), return_all=True)
    with torch.no_grad():
        r1 = model.r1(model.c1(model.q(torch.as_tensor(X))))
    expected = torch.round(r1.value / r1.scale).reshape(len(X), -1).long().numpy()
    assert np.mean(values["r1"] == expected) > 0.999


def test_simulation_equals_integer_backend(qcnn):
    model, X = qcnn
    q = compile_brevitas_qat_model(model, X, rounding_bits=6, rounding_method="exact",
                                   p_error=2.0**-40, verbose=0)
    np.testing.assert_array_equal(q.forward(X, fhe="simulate"), q.forward(X))


class _NoInputQuant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = qnn.QuantLinear(4, 2, weight_bit_width=3, bias=False)
        self.r = qnn.QuantReLU(bit_width=3)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.r(self.fc(x))


class _UnsharedAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
        self.a = qnn.QuantIdentity(bit_width=3)  # float outputs: brevitas adds them
        self.b = qnn.QuantIdentity(bit_width=5)
        self.fc = qnn.QuantLinear(4, 2, weight_bit_width=3, bias=False)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.q(x)
        return self.fc(self.a(x) + self.b(x))


def _floor_quant() -> type:
    from brevitas.inject.enum import FloatToIntImplType
    from brevitas.quant import Int8ActPerTensorFloat

    class Floor(Int8ActPerTensorFloat):
        float_to_int_impl_type = FloatToIntImplType.FLOOR

    return Floor


def _brevitas_case(kind: str) -> nn.Module:
    """Patterns the import got silently wrong: reflect padding imported as zeros, a
    FLOOR quantizer as rounding, an 8-bit bias (which brevitas clamps) unclamped."""
    from brevitas.quant import Int8Bias

    if kind == "reflect":
        return nn.Sequential(
            qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
            qnn.QuantConv2d(1, 2, 3, padding=1, padding_mode="reflect", bias=False),
            qnn.QuantReLU(bit_width=4))
    if kind == "floor":
        return nn.Sequential(
            qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
            qnn.QuantLinear(16, 2, bias=False),
            qnn.QuantIdentity(act_quant=_floor_quant(), bit_width=4))
    if kind in ("plain", "no_wq"):  # a layer without weight quantizer: AttributeError
        layer = (nn.Linear(16, 2) if kind == "plain"
                 else qnn.QuantLinear(16, 2, weight_quant=None))
        return nn.Sequential(qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
                             layer, qnn.QuantReLU(bit_width=4))
    return nn.Sequential(qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
                         qnn.QuantLinear(16, 2, bias=True, bias_quant=Int8Bias,
                                         return_quant_tensor=True),
                         qnn.QuantReLU(bit_width=4))


@pytest.mark.parametrize("model, match", [
    (_NoInputQuant(), "QuantIdentity"),
    (_UnsharedAdd(), "identical parameters"),
    ("reflect", "module QuantConv2d"),
    ("floor", "rounding with FloorSte"),
    ("int8bias", "8-bit bias quantizer"),
    ("plain", "Linear without weight quantization"),
    ("no_wq", "QuantLinear without weight quantization"),
])
def test_unsupported_patterns_are_explained(model, match):
    shape = (4,) if isinstance(model, nn.Module) else (1, 4, 4) if model == "reflect" else (16,)
    X = np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)
    if isinstance(model, str):
        model = _brevitas_case(model)
        model.train()
        model(torch.as_tensor(X))  # activation scales from data
        model.eval()
    with pytest.raises(UnsupportedOpError, match=match):
        compile_brevitas_qat_model(model, X, fhe=False)


def test_a_float_model_is_redirected_to_ptq():
    X = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="compile_torch_model"):
        compile_brevitas_qat_model(nn.Linear(3, 2), X, fhe=False)


def test_max_pooled_operands_of_one_quantizer_can_be_added():
    """Max pooling keeps its input's quantized values: an addition of two max-pooled
    outputs of one QuantReLU was refused as "not quantized with identical parameters"."""

    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = qnn.QuantIdentity(bit_width=5, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(2, 2, 3, padding=1, weight_bit_width=4, bias=False)
            self.c2 = qnn.QuantConv2d(2, 2, 3, padding=1, weight_bit_width=4, bias=False)
            self.r = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(2 * 4 * 4, 3, weight_bit_width=4, bias=False)

        def forward(self, x):
            h = self.r(self.c1(self.q(x)))
            pool = torch.nn.functional.max_pool2d
            h = pool(h, 2) + pool(self.r(self.c2(h)), 2)
            return self.fc(torch.flatten(h, 1))

    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(64, 2, 8, 8)).astype(np.float32)
    m = Residual()
    m.train()
    m(torch.as_tensor(X))  # initialises the activation scales
    m.eval()
    q = compile_brevitas_qat_model(m, X, fhe=False, verbose=0)
    with torch.no_grad():
        ref = m(torch.as_tensor(X))
    ref = getattr(ref, "value", ref).numpy()
    np.testing.assert_allclose(q.forward(X), ref, atol=1e-5)

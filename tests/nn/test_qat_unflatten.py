"""Unflatten in the torch QAT estimators: ``nn.Unflatten``, ``torch.unflatten`` and the
tensor method (documented as supported; PTQ handled them) crashed QAT training on a
brevitas quantized tensor ("'IntQuantTensor' object has no attribute 'unflatten'", or
"Input scale required" once ``torch.unflatten`` had dropped the quantization)."""

from __future__ import annotations

import pickle

import brevitas.nn as qnn
import numpy as np
import pytest
import torch
from brevitas.quant_tensor import QuantTensor
from torch import nn

from latentopt import QuantizedTorchClassifier, QuantizedTorchRegressor
from latentopt.nn.brevitas_import import import_brevitas
from latentopt.nn.ptq import parse_bits
from latentopt.nn.qat_convert import calibrate_qat, convert_to_qat


class _Method(nn.Module):
    """The tensor method (``form="method"``) or ``torch.unflatten`` with a negative dim,
    a -1 size and keyword arguments (``form="function"``), on the input."""

    def __init__(self, form: str, n_out: int) -> None:
        super().__init__()
        self.form = form
        self.conv, self.fc = nn.Conv1d(2, 4, 3), nn.Linear(88, n_out)

    def forward(self, x):  # type: ignore[no-untyped-def]
        if self.form == "method":
            x = x.unflatten(1, (2, 24))
        else:
            x = torch.unflatten(x, dim=-1, sizes=(2, -1))
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def _model(kind: str, n_out: int) -> nn.Module:
    torch.manual_seed(0)
    if kind == "input":  # the model of the report, on flat samples
        return nn.Sequential(nn.Unflatten(1, (2, 24)), nn.Conv1d(2, 4, 3), nn.ReLU(),
                             nn.Flatten(), nn.Linear(88, n_out))
    if kind == "after_relu":  # its input is quantized by the QuantReLU; dim -1, size -1
        return nn.Sequential(nn.Linear(48, 48), nn.ReLU(), nn.Unflatten(-1, (2, -1)),
                             nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(88, n_out))
    return _Method(kind, n_out)


KINDS = ["input", "after_relu", "method", "function"]


def _data(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(0).standard_normal((n, 48)).astype(np.float32)
    return X, X[:, :24].mean(1) - 0.5 * X[:, 30]


def _qat(est, X: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        out = est.qat_module_(torch.as_tensor(X))
    return np.asarray(getattr(out, "value", out).numpy(), dtype=np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return np.asarray(e / e.sum(1, keepdims=True))


@pytest.mark.parametrize("kind", KINDS)
def test_classifier_trains_and_the_circuit_equals_the_qat_network(kind):
    X, t = _data()
    y = (t > 0).astype(int)
    clf = QuantizedTorchClassifier(_model(kind, 2), n_bits=5, max_epochs=2, lr=3e-3,
                                   random_state=0, verbose=0).fit(X, y)
    assert clf.history_.n_epochs == 2
    qat = _qat(clf, X)
    np.testing.assert_array_equal(clf.predict_proba(X).argmax(1), qat.argmax(1))
    np.testing.assert_allclose(clf.predict_proba(X), _softmax(qat), rtol=0, atol=1e-5)
    # the network is rebuilt, the same, from a pickle
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(_qat(again, X), qat)
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))


@pytest.mark.parametrize("kind", KINDS)
def test_regressor_trains_and_the_circuit_equals_the_qat_network(kind):
    X, y = _data()
    reg = QuantizedTorchRegressor(_model(kind, 1), n_bits=5, max_epochs=2, lr=3e-3,
                                  random_state=0, verbose=0).fit(X, y)
    # the circuit folds the target scaling of the network's (standardised) outputs back
    ref = _qat(reg, X)[:, 0] * reg.y_scale_[0] + reg.y_mean_[0]
    np.testing.assert_allclose(reg.predict(X), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("est_cls", [QuantizedTorchClassifier, QuantizedTorchRegressor])
def test_fhe_simulation_of_an_unflattened_model(est_cls):
    X, t = _data(120)
    y = (t > 0).astype(int) if est_cls is QuantizedTorchClassifier else t
    n_out = 2 if est_cls is QuantizedTorchClassifier else 1
    est = est_cls(_model("after_relu", n_out), n_bits=4, max_epochs=1, random_state=0,
                  verbose=0).fit(X, y)
    est.compile(rounding_bits=6, rounding_method="exact", p_error=2.0**-40, verbose=0)
    np.testing.assert_array_equal(est.predict(X[:20], fhe="simulate"), est.predict(X[:20]))


@pytest.mark.parametrize("kind", KINDS)
def test_converted_unflatten_keeps_the_tensor_quantized_for_any_batch(kind):
    X, _ = _data(64)
    model = _model(kind, 2).eval()
    bits = parse_bits(5, [])
    qat, _ = convert_to_qat(model, bits, input_signed=True, example=X[:2])
    assert not any(n.target == "unflatten" or n.target is torch.unflatten
                   or isinstance(n.target, str) and n.op == "call_module"
                   and isinstance(qat.get_submodule(n.target), nn.Unflatten)
                   for n in qat.graph.nodes)
    calibrate_qat(qat, X)
    conv = next(m for m in qat.modules() if isinstance(m, qnn.QuantConv1d))
    seen = []
    conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        for n in (1, 3, 64):  # the batch axis is not fixed by the example
            assert qat(torch.as_tensor(X[:n])).shape == (n, 2)
    assert all(isinstance(a, QuantTensor) for a in seen)
    assert [tuple(a.shape) for a in seen] == [(1, 2, 24), (3, 2, 24), (64, 2, 24)]
    # the graph importer reads the rewritten network exactly
    from latentopt.backends.integer import IntegerBackend

    circuit, _ = import_brevitas(qat, X)
    b = IntegerBackend(circuit)
    out = b.dequantize(b.run_integers(b.quantize(X)))
    with torch.no_grad():
        ref = qat(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("kind", KINDS)
def test_without_an_example_the_qat_network_still_trains(kind):
    """No example, no known shape: the unflatten is a reshape computed at run time."""
    X, _ = _data(64)
    qat, _ = convert_to_qat(_model(kind, 2).eval(), parse_bits(5, []), input_signed=True)
    calibrate_qat(qat, X)
    qat.train()
    out = qat(torch.as_tensor(X[:8]))
    getattr(out, "value", out).sum().backward()
    with torch.no_grad():
        assert qat.eval()(torch.as_tensor(X[:5])).shape == (5, 2)

"""QAT of a float model with a concatenation (two branches joined along channels)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch_qat_models import digits_images, float_accuracy, train_float

from latentopt import QuantizedTorchClassifier


class TwoBranchCNN(nn.Module):
    """Two convolutions of the input (3x3 and 1x1 after pooling), concatenated along
    channels, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, stride=2)
        self.b = nn.Conv2d(1, 2, 3, stride=2)
        self.head = nn.Linear(5 * 3 * 3, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.tanh(self.b(x))], dim=1)
        return self.head(torch.flatten(y, 1))


def test_concatenation_through_qat_compiles_and_simulates_exactly():
    X, y = digits_images()
    torch.manual_seed(0)
    model = train_float(TwoBranchCNN(), X[:1200], y[:1200], epochs=150)
    ref = float_accuracy(model, X[1200:], y[1200:])
    clf = QuantizedTorchClassifier(model, n_bits={"inputs": 4, "weights": 4, "activations": 4},
                                   max_epochs=3, lr=3e-3, random_state=0, verbose=0)
    clf.fit(X[:1200], y[:1200])
    # one shared quantizer for both operands, which also quantizes each branch's
    # activation: one lookup per value (27 + 18), and none between the join and the head
    assert clf.qat_report_["inserted"] == ["qat_input", "qat_cat_operands"]
    kinds = [type(n).__name__ for n in clf.circuit_]
    assert kinds == ["QuantizeInput", "Conv", "TableLookup", "Conv", "TableLookup", "Concat",
                     "Gemm", "Dequantize"]
    assert clf.circuit_.report().tlu_count == 5 * 3 * 3
    with torch.no_grad():  # the circuit computes what the QAT network computes
        qat = clf.qat_module_(torch.as_tensor(X[1200:])).numpy()
    np.testing.assert_array_equal(clf.predict_proba(X[1200:]).argmax(1), qat.argmax(1))
    acc = clf.score(X[1200:], y[1200:])
    assert acc >= ref - 0.05 and acc > 0.8
    clf.compile(rounding_bits=6, rounding_method="exact", p_error=2.0**-40, verbose=0)
    rows = X[1200:1260]
    np.testing.assert_array_equal(clf.predict_proba(rows, fhe="simulate"),
                                  clf.predict_proba(rows, fhe="disable"))
    assert clf.fhe_report_["programmable_bootstrap_count"] > 0

"""Inputs that are never negative get an unsigned input quantizer: every level is used."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor
from latentopt.ir import QuantizeInput

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=3, n_a_bits=3, max_epochs=30, lr=1e-2,
            random_state=0, verbose=0)


def _data(seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    X = rng.rand(160, 5) + shift  # pixels-like: [0, 1)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0.75 + 1.5 * shift).astype(int)
    return X, y


def _input_node(est) -> QuantizeInput:
    return next(n for n in est.circuit_.nodes if isinstance(n, QuantizeInput))


def _levels(est, X: np.ndarray) -> int:
    q = est.module_.input_quant(torch.as_tensor(X, dtype=torch.float32))
    return len(np.unique(q.int().numpy()))


@pytest.mark.parametrize("n_bits", [2, 3])
def test_non_negative_inputs_use_every_level(n_bits):
    X, y = _data(0)
    est = QuantizedMLPClassifier(**TINY, n_input_bits=n_bits).fit(X, y)
    node = _input_node(est)
    assert est.module_.config["input_signed"] is False and node.signed is False
    assert _levels(est, X) == 2**n_bits  # a signed quantizer reaches only half: [0, 2**(b-1))
    signed = QuantizedMLPClassifier(**TINY, n_input_bits=n_bits).fit(X - 0.5, y)
    assert signed.module_.config["input_signed"] is True and _input_node(signed).signed
    assert _levels(signed, X - 0.5) <= 2**n_bits and _levels(signed, X) <= 2**(n_bits - 1)


def test_unsigned_inputs_compile_and_simulate_exactly(tmp_path):
    X, y = _data(1)
    est = QuantizedMLPClassifier(**TINY, n_input_bits=3).fit(X, y)
    est._insecure_key_cache = str(tmp_path)
    est.compile(X[:64], rounding_bits=5, p_error=2.0**-40)
    assert np.array_equal(est.predict(X[:40], fhe="simulate"), est.predict(X[:40]))
    again = pickle.loads(pickle.dumps(est))
    assert again.module_.config["input_signed"] is False
    assert np.array_equal(again.predict(X), est.predict(X))
    # an input below the training range saturates at the quantizer's 0, as any clipping
    low = X[:5].copy()
    low[:, 0] = -3.0
    assert np.array_equal(est.predict(low), est.predict(np.where(low < 0, 0.0, low)))


def test_regressor_and_older_pickles():
    X, _ = _data(2)
    reg = QuantizedMLPRegressor(**TINY, n_input_bits=4).fit(X, 3.0 * X[:, 0] + X[:, 2])
    assert _input_node(reg).signed is False
    state = reg.__getstate__()
    config, blob = state["_module_blob"]
    old = {k: v for k, v in config.items() if k != "input_signed"}  # before this option
    state["_module_blob"] = (old, blob)
    restored = QuantizedMLPRegressor.__new__(QuantizedMLPRegressor)
    restored.__setstate__(state)
    assert restored.module_.config["input_signed"] is True

"""The exact runtime behind ``predict(fhe="disable")``: the faster of numpy and
onnxruntime, chosen per circuit by measurement, always returning numpy's integers."""

from __future__ import annotations

import numpy as np

from latentopt.backends import runtime as rt
from latentopt.backends.integer import IntegerBackend
from latentopt.backends.runtime import ExactRuntime


def test_small_batches_run_numpy_and_choose_nothing(make_mlp, sample_q):
    circuit = make_mlp(seed=1)
    run = ExactRuntime(circuit)
    q = sample_q(circuit, rt.MIN_MEASURE_ROWS - 1)
    np.testing.assert_array_equal(run.run_integers(q), IntegerBackend(circuit).run_integers(q))
    assert run.chosen is None and run.onnx is None


def test_large_batches_choose_the_faster_exact_runtime(make_mlp, sample_q):
    circuit = make_mlp(seed=2, n_features=16, hidden=32)
    run = ExactRuntime(circuit)
    q = sample_q(circuit, 3000, seed=1)
    ref = IntegerBackend(circuit).run_integers(q)
    np.testing.assert_array_equal(run.run_integers(q), ref)
    assert run.chosen in ("numpy", "onnxruntime")
    assert set(run.timings) == {"numpy", "onnxruntime"}
    faster = min(run.timings, key=run.timings.get)
    assert run.chosen == faster
    np.testing.assert_array_equal(run.run_integers(q[::-1]), ref[::-1])  # chosen runtime
    X = np.random.default_rng(0).normal(size=(200, 16))
    np.testing.assert_allclose(run.predict(X), IntegerBackend(circuit).dequantize(
        IntegerBackend(circuit).run_integers(IntegerBackend(circuit).quantize(X))))


def test_a_mismatch_keeps_numpy(make_mlp, sample_q, monkeypatch):
    from latentopt.backends import onnx_runner

    circuit = make_mlp(seed=3)
    real = onnx_runner.OnnxRunner.run_integers
    monkeypatch.setattr(onnx_runner.OnnxRunner, "run_integers",
                        lambda self, q: real(self, q) + 1)  # a wrong renderer
    run = ExactRuntime(circuit)
    q = sample_q(circuit, 500)
    np.testing.assert_array_equal(run.run_integers(q), IntegerBackend(circuit).run_integers(q))
    assert run.chosen == "numpy"

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


def test_predict_chooses_among_exact_pipelines_and_matches_numpy(make_mlp):
    circuit = make_mlp(seed=4, n_features=16, hidden=32)
    backend = IntegerBackend(circuit)
    run = ExactRuntime(circuit)
    X = np.random.default_rng(1).normal(scale=2.0, size=(3000, 16))
    np.testing.assert_array_equal(run.predict(X), backend.predict(X))
    # the int8 rendering applies to this MLP and returned numpy's integers on the probe
    assert {"numpy", "onnxruntime", "onnxruntime-int8"} <= set(run.predict_timings)
    assert run.chosen_predict == min(run.predict_timings, key=run.predict_timings.get)
    np.testing.assert_array_equal(run.predict(X[::-1]), backend.predict(X[::-1]))
    np.testing.assert_array_equal(run.predict(X[:5]), backend.predict(X[:5]))  # numpy


def test_int8_model_is_exact_or_absent(make_mlp, make_table_circuit):
    import onnxruntime as ort

    from latentopt.backends.onnx_int8 import int8_mlp_onnx

    assert int8_mlp_onnx(make_table_circuit()) is None  # lookups on raw inputs: not an MLP
    circuit = make_mlp(seed=6, n_features=8, hidden=12)
    model = int8_mlp_onnx(circuit)
    assert model is not None
    assert "QGemm" in {n.op_type for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    backend = IntegerBackend(circuit)
    scale = float(np.ravel(circuit.input_quantizer.scale)[0])
    rng = np.random.default_rng(2)
    # ties (x / scale = k + 1/2) and saturating inputs are where rounding could differ
    X = np.concatenate([rng.normal(scale=3.0, size=(2000, 8)),
                        (rng.integers(-9, 9, (500, 8)) + 0.5) * scale,
                        rng.normal(scale=1e4, size=(100, 8))])
    out, ints = session.run(None, {"input": X.astype(np.float32)})
    np.testing.assert_array_equal(ints, backend.run_integers(backend.quantize(X)))
    np.testing.assert_array_equal(out, backend.predict(X))


def test_threads_predicting_at_once_on_a_new_runtime_all_get_the_answer(make_mlp,
                                                                        monkeypatch):
    """Each thread measured the runtimes and reset the predictors another one was
    reading: KeyError 'onnxruntime', or "dictionary changed size during iteration".
    One thread measures now; the others wait for its choice."""
    import threading
    import time

    circuit = make_mlp(seed=5, n_features=16, hidden=32)
    backend = IntegerBackend(circuit)
    X = np.random.default_rng(2).normal(size=(300, 16))
    for kind, method in (("predict", "_choose_predict"), ("run_integers", "_choose")):
        real = getattr(ExactRuntime, method)
        calls: list[int] = []

        def slow(self, probe, real=real, calls=calls) -> None:
            calls.append(1)
            time.sleep(0.05)  # every other thread arrives while this one measures
            real(self, probe)

        monkeypatch.setattr(ExactRuntime, method, slow)
        run = ExactRuntime(circuit)
        args = X if kind == "predict" else backend.quantize(X)
        results: list[object] = []

        def call(run=run, kind=kind, args=args, results=results) -> None:
            try:
                results.append(getattr(run, kind)(args))
            except Exception as exc:  # noqa: BLE001 - the failure under test
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1, kind
        ref = backend.predict(X) if kind == "predict" else backend.run_integers(args)
        for r in results:
            assert isinstance(r, np.ndarray), r
            np.testing.assert_array_equal(r, ref)

"""The Concat node: validation, ranges, serialisation, and exactness of the integer
backend, onnxruntime and FHE simulation against the reference evaluator."""

from __future__ import annotations

import io

import numpy as np
import pytest
from circuit_reference import reference_run

from latentopt.backends.fhe import FHECircuit
from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_export import OnnxRunner, circuit_to_onnx
from latentopt.ir import (
    Circuit,
    Concat,
    Dequantize,
    Gemm,
    QuantActivation,
    QuantizeInput,
    TableLookup,
    load,
    save,
)


def concat_circuit(seed: int = 0) -> Circuit:
    """q -> fc1 -> relu ; concat(relu, q) -> fc2 -> tanh ; concat(tanh, fc1) -> fc3."""
    rng = np.random.default_rng(seed)
    return Circuit([
        QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3, signed=True),
        Gemm("fc1", ("q",), rng.integers(-2, 3, (4, 3)), bias=rng.integers(-3, 4, 4)),
        TableLookup("a1", ("fc1",), QuantActivation("relu", 0.3, 0.5, n_bits=3)),
        Concat("cat1", ("a1", "q")),
        Gemm("fc2", ("cat1",), rng.integers(-2, 3, (3, 7))),
        TableLookup("a2", ("fc2",), QuantActivation("tanh", 0.2, 0.25, n_bits=3, signed=True)),
        Concat("cat2", ("a2", "fc1")),
        Gemm("fc3", ("cat2",), rng.integers(-2, 3, (2, 7))),
        Dequantize("out", ("fc3",), scale=0.1, zero_point=0),
    ], n_features=3)


def sample_q(circuit: Circuit, n: int, seed: int) -> np.ndarray:
    lo, hi = circuit.input_quantizer.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, circuit.n_features))


def test_widths_ranges_and_round_trip():
    c = concat_circuit()
    assert c.width("cat1") == 7 and c.width("cat2") == 7
    w = c.worst_case_ranges()
    np.testing.assert_array_equal(w["cat1"].lo, np.concatenate([w["a1"].lo, w["q"].lo]))
    np.testing.assert_array_equal(w["cat2"].hi, np.concatenate([w["a2"].hi, w["fc1"].hi]))
    buf = io.BytesIO()
    save(c, buf)
    assert load(io.BytesIO(buf.getvalue())).same_as(c)
    with pytest.raises(ValueError, match="gemm 'g' expects 3 inputs, gets 6"):
        Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3), Concat("c", ("q", "q")),
                 Gemm("g", ("c",), np.ones((1, 3))), Dequantize("o", ("g",), 1.0, 0)],
                n_features=3)


@pytest.mark.parametrize("carrier", ["float32", "int64"])
def test_integer_onnx_and_reference_agree(carrier):
    c = concat_circuit(1)
    q = sample_q(c, 200, 0)
    out, values = IntegerBackend(c).run_integers(q, return_all=True)
    ref = reference_run(c, q)
    for name in ref:
        np.testing.assert_array_equal(values[name], ref[name], err_msg=name)
    runner = OnnxRunner(circuit_to_onnx(c, carrier=carrier))
    np.testing.assert_array_equal(runner.run_integers(q), out)


def test_fhe_simulation_equals_integer_backend():
    c = concat_circuit(2)
    q = sample_q(c, 100, 1)
    fc = FHECircuit.compile(c, q, p_error=2.0**-40, range_mode="worst_case", batch_size=2)
    q2 = sample_q(c, 9, 2)
    np.testing.assert_array_equal(fc.simulate(q2), IntegerBackend(c).run_integers(q2))

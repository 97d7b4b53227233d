"""Convolution and pooling circuits end to end: the integer backend, the reference
evaluator, onnxruntime (every carrier) and FHE simulation give the same integers."""

from __future__ import annotations

import numpy as np
import pytest
from circuit_reference import reference_run
from conv_circuits import conv_circuit

from latentopt.backends.fhe import FHECircuit
from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_export import OnnxRunner, circuit_to_onnx
from latentopt.ir import (
    Circuit,
    Conv,
    Dequantize,
    MaxPool,
    QuantActivation,
    QuantizeInput,
    TableLookup,
)
from latentopt.ir.schedule import carrier_dtype

TINY_P = 2.0**-40


def sample_q(circuit: Circuit, n: int, seed: int) -> np.ndarray:
    lo, hi = circuit.input_quantizer.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, circuit.n_features))


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("rounding", [True, False])
def test_integer_backend_matches_reference(nd, rounding):
    c = conv_circuit(seed=nd, nd=nd, rounding=rounding)
    q = sample_q(c, 100, nd)
    out, values = IntegerBackend(c).run_integers(q, return_all=True)
    ref = reference_run(c, q)
    for name in ref:
        np.testing.assert_array_equal(values[name], ref[name], err_msg=name)


@pytest.mark.parametrize("nd", [1, 2])
@pytest.mark.parametrize("carrier", ["float32", "float64", "int64"])
def test_onnx_matches_integer_backend(nd, carrier):
    c = conv_circuit(seed=3, nd=nd)
    q = sample_q(c, 60, 0)
    runner = OnnxRunner(circuit_to_onnx(c, carrier=carrier))
    np.testing.assert_array_equal(runner.run_integers(q), IntegerBackend(c).run_integers(q))


def test_carrier_covers_convolution_partial_sums():
    """A convolution whose partial sums pass 2**24 moves the circuit to float64."""
    nodes = [QuantizeInput("q", ("input",), 1.0, 0, 12),
             Conv("c", ("q",), np.full((1, 1, 3, 3), 2**10), input_shape=(1, 4, 4)),
             Dequantize("o", ("c",), 1.0, 0)]
    c = Circuit(nodes, n_features=16)
    assert carrier_dtype(c) is np.float64  # 9 * 2**10 * 2**11 > 2**24
    q = np.full((2, 16), 2**11 - 1)
    np.testing.assert_array_equal(IntegerBackend(c).run_integers(q),
                                  c["c"].apply(q))


@pytest.mark.parametrize("nd, range_mode", [(1, "calibrated"), (2, "calibrated"),
                                            (2, "worst_case")])
def test_fhe_simulation_equals_integer_backend(nd, range_mode):
    c = conv_circuit(seed=nd, nd=nd)
    q_cal = sample_q(c, 200, 1)
    fc = FHECircuit.compile(c, q_cal, p_error=TINY_P, range_mode=range_mode, batch_size=2)
    q = q_cal[:7] if range_mode == "calibrated" else sample_q(c, 7, 2)
    np.testing.assert_array_equal(fc.simulate(q), IntegerBackend(c).run_integers(q))
    # max pooling: window PBS per output, as the circuit's report says
    layers = {row["name"]: row for row in fc.report["layers"]}
    assert layers["mp"]["pbs"] == c["mp"].pbs_count
    assert layers["c1"]["pbs"] >= c.width("a1")  # the ReLU lookups (and exact rounding)


def test_max_pool_on_the_raw_signed_input():
    """A max pooling reading the encrypted input (signed, not centred) stays exact."""
    c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3, signed=True),
                 MaxPool("m", ("q",), input_shape=(2, 4), kernel_size=3, stride=1,
                         padding=1),
                 Dequantize("o", ("m",), 1.0, 0)], n_features=8)
    q = sample_q(c, 50, 0)
    fc = FHECircuit.compile(c, q, p_error=TINY_P, range_mode="worst_case", batch_size=1)
    np.testing.assert_array_equal(fc.simulate(q[:5]), c["m"].apply(q[:5]))
    assert fc.report["programmable_bootstrap_count"] == c["m"].pbs_count


def test_max_pool_before_a_wide_accumulator_compiles_exactly():
    """Regression: conv -> ReLU -> max pool -> conv whose accumulator passes 16 bits.

    concrete gives every operand of an addition its result's width: the maxima, their
    differences and so the comparison lookups took the next accumulator's 17 bits
    (``FHEBitWidthError``).  An identity lookup hands the maxima on: they stay narrow.
    """
    rng = np.random.default_rng(0)
    c1 = Conv("c1", ("q",), rng.integers(-3, 4, (2, 1, 3, 3)), input_shape=(1, 4, 4),
              padding=1)
    mp = MaxPool("mp", ("a1",), input_shape=c1.output_shape, kernel_size=2)
    w2 = rng.integers(1000, 2000, (1, 2, 2, 2)) * rng.choice([-1, 1], (1, 2, 2, 2))
    c = Circuit([QuantizeInput("q", ("input",), 0.1, 0, 4, signed=False), c1,
                 TableLookup("a1", ("c1",), QuantActivation("relu", 0.03, 0.05, n_bits=5,
                                                            signed=False)),
                 mp, Conv("c2", ("mp",), w2, input_shape=mp.output_shape),
                 Dequantize("out", ("c2",), 0.1, 0)], n_features=16)
    q = sample_q(c, 200, 1)
    c = IntegerBackend(c).round_lookups(q, 6)
    assert c.calibration["c2"].bits >= 17  # the accumulator after the pooling
    fc = FHECircuit.compile(c, q, p_error=1e-6, batch_size=1)
    layers = {row["name"]: row for row in fc.report["layers"]}
    assert layers["mp"]["pbs"] == c["mp"].pbs_count == 8 * 4  # 3 maxima + 1 cast each
    assert layers["mp"]["tlu_input_bits"] == 6  # differences of 5-bit activations
    assert fc.report["max_tlu_input_bits"] == 6
    # exact up to concrete's lookup errors: p_error 1e-6 is the smallest it finds
    # parameters for here, which leaves 7e-5 per sample (68 lookups; 2 wrong samples in
    # 20,000 measured).  Random errors rarely hit one sample twice; a wrong circuit would.
    expected = IntegerBackend(c).run_integers(q[:10])
    runs = [fc.simulate(q[:10]) == expected for _ in range(2)]
    assert np.all(runs[0] | runs[1]), runs

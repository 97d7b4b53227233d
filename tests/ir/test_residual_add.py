"""The residual ``Add`` node: validation, ranges, report, serialisation, and exactness of
the integer backend and FHE simulation on circuits where a value is read twice."""

from __future__ import annotations

import numpy as np
import pytest
from circuit_reference import reference_run

from latentopt.backends.integer import IntegerBackend
from latentopt.ir import (
    Add,
    Circuit,
    Dequantize,
    Gemm,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)


def residual_circuit(seed: int = 0, width: int = 4, relu_after_add: bool = True) -> Circuit:
    """q -> fc1 -> act1 -> fc2 -> act2 ; add(act1, act2) [-> act3] -> fc3 -> out."""
    rng = np.random.default_rng(seed)
    nodes = [
        QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3, signed=True),
        Gemm("fc1", ("q",), rng.integers(-2, 3, (width, 3)), bias=rng.integers(-3, 4, width)),
        TableLookup("act1", ("fc1",), QuantActivation("relu", 0.3, 0.5, n_bits=3)),
        Gemm("fc2", ("act1",), rng.integers(-2, 3, (width, width))),
        TableLookup("act2", ("fc2",), QuantActivation("tanh", 0.2, 0.25, n_bits=3,
                                                     signed=True)),
        Add("res", ("act1", "act2")),
    ]
    last = "res"
    if relu_after_add:
        nodes.append(TableLookup("act3", ("res",), QuantActivation("relu", 0.5, 0.5, n_bits=3)))
        last = "act3"
    nodes += [Gemm("fc3", (last,), rng.integers(-2, 3, (2, width))),
              Dequantize("out", ("fc3",), scale=0.1, zero_point=0)]
    return Circuit(nodes, n_features=3)


def sample_q(circuit: Circuit, n: int, seed: int) -> np.ndarray:
    lo, hi = circuit.input_quantizer.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, circuit.n_features))


def test_add_takes_two_inputs():
    with pytest.raises(ValueError, match="exactly 2 input"):
        Add("a", ("x",))
    assert Add("a", ("x", "y")).apply(np.array([1, -2]), np.array([3, 4])).tolist() == [4, 2]


def test_add_of_different_widths_is_rejected():
    with pytest.raises(ValueError, match="widths 4 and 2"):
        Circuit([
            QuantizeInput("q", ("input",), 0.5, 0, 3),
            Gemm("a", ("q",), np.ones((4, 2))),
            Gemm("b", ("q",), np.ones((2, 2))),
            Add("s", ("a", "b")),
            Dequantize("out", ("s",), 1.0, 0),
        ], n_features=2)


def test_worst_case_range_of_a_sum_is_the_sum_of_ranges():
    c = residual_circuit()
    w = c.worst_case_ranges()
    np.testing.assert_array_equal(w["res"].lo, w["act1"].lo + w["act2"].lo)
    np.testing.assert_array_equal(w["res"].hi, w["act1"].hi + w["act2"].hi)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("relu_after_add", [True, False])
def test_integer_backend_matches_reference(seed, relu_after_add):
    c = residual_circuit(seed, relu_after_add=relu_after_add)
    q = sample_q(c, 200, seed)
    out, values = IntegerBackend(c).run_integers(q, return_all=True)
    ref = reference_run(c, q)
    np.testing.assert_array_equal(values["res"], ref["res"])
    np.testing.assert_array_equal(out, ref["fc3"])


def test_report_lists_the_lookup_after_the_add():
    rep = residual_circuit().report()
    names = [r["name"] for r in rep.layers]
    assert names == ["fc1", "fc2", "act3", "fc3"]
    row = rep.layers[2]
    assert row["tlu_count"] == 4
    assert row["accumulator_bits"] == residual_circuit().worst_case_ranges()["res"].bits
    assert rep.tlu_count == 12


def test_rounding_the_lookup_after_the_add():
    c = residual_circuit().with_rounding({"act3": 1}, "exact")
    assert isinstance(c["act3.round"], Round) and c["act3.round"].inputs == ("res",)
    q = sample_q(c, 100, 0)
    np.testing.assert_array_equal(IntegerBackend(c).run_integers(q), reference_run(c, q)["fc3"])


def test_save_load_round_trip(tmp_path):
    c = residual_circuit()
    c.save(tmp_path / "c.zip")
    back = Circuit.load(tmp_path / "c.zip")
    assert back.same_as(c) and isinstance(back["res"], Add)


@pytest.mark.parametrize("range_mode", ["calibrated", "worst_case"])
@pytest.mark.parametrize("rounding", [None, 1])
def test_fhe_simulation_equals_integer_backend(range_mode, rounding):
    from latentopt.backends.fhe import FHECircuit

    c = residual_circuit(1)
    if rounding:
        c = c.with_rounding(rounding, "exact")
    q = sample_q(c, 200, 3)
    fc = FHECircuit.compile(c, q, p_error=2.0**-40, range_mode=range_mode, batch_size=4)
    np.testing.assert_array_equal(fc.simulate(q), IntegerBackend(c).run_integers(q))
    assert [r["name"] for r in fc.report["layers"]] == ["fc1", "fc2", "act3", "fc3"]

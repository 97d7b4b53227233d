"""Tests of latentopt.ir.ranges: bit widths, intervals, worst-case soundness/tightness."""

from __future__ import annotations

import numpy as np
import pytest

from latentopt.backends.integer import IntegerBackend
from latentopt.ir import Gemm, Interval, QuantizeInput, Round, bit_width
from latentopt.ir.ranges import propagate, worst_case_ranges


# -------------------------------------------------------------------- bit_width
def _brute_bits(lo: int, hi: int) -> int:
    n = 1
    while True:
        if lo >= 0:
            if hi <= 2**n - 1:
                return n
        elif -(2 ** (n - 1)) <= lo and hi <= 2 ** (n - 1) - 1:
            return n
        n += 1


def test_bit_width_brute_force():
    for lo in range(-70, 71):
        for hi in range(lo, 71):
            assert bit_width(lo, hi) == _brute_bits(lo, hi), (lo, hi)


@pytest.mark.parametrize(
    "lo, hi, bits",
    [(0, 0, 1), (0, 1, 1), (0, 2, 2), (-1, 0, 1), (-1, 1, 2), (-2, 1, 2), (-128, 127, 8),
     (-129, 127, 9), (-128, 128, 9), (0, 255, 8), (0, 256, 9), (5, 7, 3),
     (-(2**61), 2**61 - 1, 62), (0, 2**62, 63), (-(2**62), 0, 63)],
)
def test_bit_width_values(lo, hi, bits):
    assert bit_width(lo, hi) == bits
    assert bit_width(np.int64(lo), np.int64(hi)) == bits


def test_bit_width_empty_interval():
    with pytest.raises(ValueError, match="empty"):
        bit_width(3, 2)


# --------------------------------------------------------------------- Interval
def test_interval_basics():
    iv = Interval([-3, 0, 2], [1, 7, 2])
    assert iv.lo.dtype == np.int64 and not iv.lo.flags.writeable and not iv.hi.flags.writeable
    assert (iv.min, iv.max) == (-3, 7)
    assert iv.bits == bit_width(-3, 7) == 4
    assert iv.channel_bits.tolist() == [3, 3, 2]
    assert iv.to_list() == [[-3, 0, 2], [1, 7, 2]]
    scalar = Interval(4, 9)
    assert scalar.lo.shape == (1,) and scalar.bits == 4


def test_interval_copies_inputs():
    lo = np.array([0, 1])
    iv = Interval(lo, np.array([5, 5]))
    lo[0] = -100
    assert iv.lo.tolist() == [0, 1]


def test_interval_validation():
    with pytest.raises(ValueError, match="lo > hi"):
        Interval([0, 5], [1, 4])
    with pytest.raises(ValueError, match="same shape"):
        Interval([0, 1], [2])


def test_interval_from_values():
    v = np.array([[[1, -5]], [[3, 0]], [[-2, 9]]])  # (3, 1, 2): any batch dims
    iv = Interval.from_values(v)
    assert iv.lo.tolist() == [-2, -5] and iv.hi.tolist() == [3, 9]
    one_d = Interval.from_values(np.array([4, -1, 2]))
    assert one_d.lo.tolist() == [-1] and one_d.hi.tolist() == [4]
    with pytest.raises(ValueError, match="empty"):
        Interval.from_values(np.zeros((0, 3)))


# ---------------------------------------------------------------- propagation
def test_hand_checked_ranges(make_mlp):
    worst = make_mlp().worst_case_ranges()
    assert worst["q"].to_list() == [[-4, -4], [3, 3]]
    assert worst["fc1"].to_list() == [[-9, -12], [12, 9]]
    assert worst["act1"].to_list() == [[0, 0], [3, 3]]  # clip(rint(v / 2), 0, 3)
    assert worst["fc2"].to_list() == [[0], [6]]
    assert worst["out"].to_list() == worst["fc2"].to_list()


def test_gemm_bounds_use_input_zero_point():
    q = QuantizeInput("q", ("input",), 1.0, 0, n_bits=2, signed=False)  # [0, 3]
    g = Gemm("g", ("q",), weight=[[2, -1]], bias=[10], input_zero_point=1)
    iv = propagate(g, propagate(q, Interval(0, 0), 2), 2)
    # (x0 - 1) in [-1, 2], (x1 - 1) in [-1, 2]: 2*[-1,2] - [-1,2] + 10 = [-4 + 10, 5 + 10]
    assert iv.to_list() == [[6], [15]]


def test_round_propagation():
    r = Round("r", ("x",), lsbs=2)
    iv = propagate(r, Interval([-7, 5], [6, 9]), 2)
    assert iv.to_list() == [[-8, 4], [8, 8]]


def test_gemm_overflow_detected():
    q = QuantizeInput("q", ("input",), 1.0, 0, n_bits=8, signed=True)
    g = Gemm("g", ("q",), weight=[[2**55, 2**55]])
    with pytest.raises(OverflowError, match="62 bits"):
        propagate(g, propagate(q, Interval(0, 0), 2), 2)


def test_big_accumulator_exact():
    """Range arithmetic is exact beyond float64's 53 bits."""
    q = QuantizeInput("q", ("input",), 1.0, 0, n_bits=1, signed=False)  # [0, 1]
    g = Gemm("g", ("q",), weight=[[2**58 + 1, 2**58 + 3, -1]], bias=[7])
    iv = propagate(g, propagate(q, Interval(0, 0), 3), 3)
    assert iv.to_list() == [[6], [2**59 + 11]]


def test_propagate_unknown_node():
    class Weird(Round):
        pass

    with pytest.raises(TypeError, match="no range rule"):
        propagate(object(), Interval(0, 0), 1)  # type: ignore[arg-type]
    # subclasses of known nodes use their parent's rule
    assert propagate(Weird("w", ("x",), lsbs=1), Interval(0, 3), 1).to_list() == [[0], [4]]


# ------------------------------------------------- soundness on random circuits
SEEDS = list(range(40))


@pytest.mark.parametrize("seed", SEEDS)
def test_worst_case_sound_on_random_circuits(seed, random_circuit, reference_run, quantized_inputs):
    rng = np.random.default_rng(seed)
    circuit = random_circuit(rng)
    worst = worst_case_ranges(circuit)
    assert set(worst) == {n.name for n in circuit.nodes}
    q = quantized_inputs(circuit, rng, n=200)
    values = reference_run(circuit, q)
    for name, v in values.items():
        iv = worst[name]
        assert iv.lo.shape == (circuit.width(name),)
        assert np.all(v >= iv.lo) and np.all(v <= iv.hi), name


@pytest.mark.parametrize("seed", SEEDS)
def test_worst_case_tight_for_first_gemm(seed, random_circuit, reference_run):
    rng = np.random.default_rng(seed)
    circuit = random_circuit(rng, wmax=7)
    gemm = circuit.nodes[1]
    assert isinstance(gemm, Gemm)
    lo, hi = circuit.input_quantizer.qrange
    iv = circuit.worst_case_ranges()[gemm.name]
    w = gemm.weight
    # for output j, the maximiser takes hi where w > 0 and lo where w < 0 (and vice versa)
    arg_max = np.where(w > 0, hi, lo)
    arg_min = np.where(w > 0, lo, hi)
    acc_max = reference_run(circuit, arg_max)[gemm.name]
    acc_min = reference_run(circuit, arg_min)[gemm.name]
    assert np.array_equal(np.diag(acc_max), iv.hi)
    assert np.array_equal(np.diag(acc_min), iv.lo)


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_calibrated_ranges_inside_worst_case(seed, random_circuit):
    rng = np.random.default_rng(seed)
    circuit = random_circuit(rng)
    X = rng.normal(0.0, 3.0, (300, circuit.n_features))
    X[:5] *= 1e3  # saturating inputs
    cal = IntegerBackend(circuit).calibrate(X).calibration
    worst = circuit.worst_case_ranges()
    assert cal is not None
    assert set(cal) == {n.name for n in circuit.nodes[:-1]}
    for name, iv in cal.items():
        assert np.all(iv.lo >= worst[name].lo) and np.all(iv.hi <= worst[name].hi), name
        assert np.all(iv.lo <= iv.hi)
        assert iv.bits <= worst[name].bits


def test_worst_case_three_layer_sound(make_three_layer, reference_run, quantized_inputs):
    circuit = make_three_layer()
    rng = np.random.default_rng(0)
    values = reference_run(circuit, quantized_inputs(circuit, rng, 500))
    worst = circuit.worst_case_ranges()
    for name, v in values.items():
        assert np.all(v >= worst[name].lo) and np.all(v <= worst[name].hi), name

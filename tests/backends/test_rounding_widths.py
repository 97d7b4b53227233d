"""``rounding_bits=r`` gives lookups of exactly ``r`` input bits under FHE.

``Circuit.rounding_lsbs`` and the FHE lowering measure the same (per-channel centred)
widths, so asking for ``r`` bits never gives ``r - 1``-bit lookups (which cost accuracy
for nothing) nor ``r + 1``-bit ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from latentopt.backends.fhe import FHECircuit
from latentopt.backends.fhe_lowering import LookupOp, RoundOp, plan_lowering
from latentopt.backends.integer import IntegerBackend
from latentopt.ir import (
    Circuit,
    Dequantize,
    Gemm,
    QuantActivation,
    QuantizeInput,
    TableLookup,
)
from latentopt.ir.ranges import Interval, centred_bits


def random_mlp(rng: np.random.Generator) -> Circuit:
    """A random MLP with wide accumulators whose channels have different offsets."""
    n_in, widths = int(rng.integers(4, 12)), [int(rng.integers(2, 9)) for _ in range(2)]
    n_bits = int(rng.integers(3, 8))
    nodes: list = [QuantizeInput("q", ("input",), 0.1, 0, n_bits,
                                 signed=bool(rng.random() < 0.5))]
    prev, width = "q", n_in
    for i, out in enumerate(widths):
        wmax = int(rng.integers(2, 60))
        nodes.append(Gemm(f"fc{i}", (prev,), rng.integers(-wmax, wmax + 1, (out, width)),
                          bias=rng.integers(-500, 500, out)))
        nodes.append(TableLookup(f"act{i}", (f"fc{i}",), QuantActivation(
            "relu", input_scale=float(rng.uniform(0.01, 0.1)), output_scale=0.3,
            n_bits=int(rng.integers(2, 5)), signed=False)))
        prev, width = f"act{i}", out
    nodes += [Gemm("head", (prev,), rng.integers(-3, 4, (2, width))),
              Dequantize("out", ("head",), 0.1, 0)]
    return Circuit(nodes, n_features=n_in)


def sample_q(circuit: Circuit, n: int, seed: int) -> np.ndarray:
    lo, hi = circuit.input_quantizer.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, circuit.n_features))


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("range_mode", ["calibrated", "worst_case"])
def test_lowered_lookups_have_exactly_the_requested_bits(seed, range_mode):
    rng = np.random.default_rng(seed)
    c = random_mlp(rng)
    q = sample_q(c, 200, seed)
    checked = 0
    for r in range(1, 9):
        rounded = IntegerBackend(c).round_lookups(q, r, ranges=range_mode)
        if range_mode == "worst_case":
            ranges = rounded.worst_case_ranges()
        else:
            ranges = {k: Interval.from_values(v) for k, v in
                      IntegerBackend(rounded).run_integers(q, return_all=True)[1].items()}
        plan = plan_lowering(rounded, ranges, hints=range_mode == "worst_case")
        lsbs = {op.name: op.lsbs for op in plan.steps if isinstance(op, RoundOp)}
        for op in plan.steps:
            if not isinstance(op, LookupOp):
                continue
            acc = ranges[rounded[op.src].inputs[0] if op.src in lsbs else op.src]
            unrounded = centred_bits(acc.lo, acc.hi)
            if unrounded > r:
                assert op.tlu_bits == r, (op.name, r, unrounded)
                checked += 1
            else:  # already narrow enough: not rounded
                assert op.src not in lsbs and op.tlu_bits == unrounded
    assert checked >= 4


def test_regression_per_channel_offsets_gave_one_bit_fewer():
    """fc's channels [-100, 20] and [0, 120]: signed width 8 (the old measure, which
    removed 5 LSBs for 4 bits: 3-bit lookups once centred), 7 bits once centred: 4 LSBs
    give 4-bit lookups."""
    c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 8, signed=False),
                 Gemm("fc", ("q",), [[1], [1]], bias=[-100, 0]),
                 TableLookup("act", ("fc",), QuantActivation("relu", 0.1, 0.5, 3)),
                 Gemm("head", ("act",), [[1, -1]]), Dequantize("out", ("head",), 1.0, 0)],
                n_features=1)
    q = np.arange(0, 121).reshape(-1, 1)
    cal = c.with_calibration(IntegerBackend(c).run_integers(q, return_all=True)[1])
    assert cal.calibration["fc"].bits == 8
    assert cal.rounding_lsbs(4) == {"act": 4}
    rounded = IntegerBackend(c).round_lookups(q, 4)
    assert rounded["act.round"].lsbs == 4
    fc = FHECircuit.compile(rounded, q, p_error=2.0**-40, batch_size=1)
    assert fc.report["max_tlu_input_bits"] == 4
    np.testing.assert_array_equal(fc.simulate(q[::9]),
                                  IntegerBackend(rounded).run_integers(q[::9]))


@pytest.mark.parametrize("seed", range(3))
def test_compiled_report_equals_requested_rounding_bits(seed):
    """FHE compiles (no keys) of random MLPs: the report's widest lookup has r bits."""
    rng = np.random.default_rng(100 + seed)
    c = random_mlp(rng)
    q = sample_q(c, 100, seed)
    cal = c.with_calibration(IntegerBackend(c).run_integers(q, return_all=True)[1])
    r = 4
    rounded = cal.with_rounding(cal.rounding_lsbs(r), "exact")
    fc = FHECircuit.compile(rounded, q, p_error=2.0**-40, batch_size=1)
    assert fc.report["max_tlu_input_bits"] == r
    assert all(row["tlu_input_bits"] == r for row in fc.report["layers"]
               if row["tlu_input_bits"] is not None)
    np.testing.assert_array_equal(fc.simulate(q[:10]),
                                  IntegerBackend(rounded).run_integers(q[:10]))

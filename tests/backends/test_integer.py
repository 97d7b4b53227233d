"""Tests of latentopt.backends.integer: exactness against a Python-int reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from circuit_reference import reference_run

from latentopt.backends import integer
from latentopt.backends.integer import IntegerBackend
from latentopt.ir import (
    ACTIVATIONS,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    Interval,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
    UnivariateFunction,
)


# ----------------------------------------------------------------------- helpers
def inputs_for(circuit: Circuit, rng: np.random.Generator, n: int = 64) -> np.ndarray:
    lo, hi = circuit.input_quantizer.qrange
    rand = rng.integers(lo, hi + 1, (n, circuit.n_features))
    k = min(circuit.n_features, 4)
    corners = np.array([list(c) + [lo] * (circuit.n_features - k)
                        for c in itertools.product([lo, hi], repeat=k)])
    return np.concatenate([rand, corners]).astype(np.int64)


def check_exact(circuit: Circuit, q: np.ndarray, backend: IntegerBackend | None = None):
    backend = backend or IntegerBackend(circuit)
    out, values = backend.run_integers(q, return_all=True)
    ref = reference_run(circuit, q)
    assert set(values) == set(ref) == {n.name for n in circuit.nodes[:-1]}
    for name in ref:
        assert values[name].dtype == np.int64
        assert np.array_equal(values[name], ref[name]), name
    assert out.dtype == np.int64
    assert np.array_equal(out, ref[circuit.output.inputs[0]])
    return out, values


def random_fn(rng: np.random.Generator, width: int) -> UnivariateFunction:
    if rng.random() < 0.7:
        act = str(rng.choice(sorted(ACTIVATIONS)))
        ins = rng.uniform(0.01, 0.3, width) if rng.random() < 0.5 else float(rng.uniform(0.01, 0.3))
        signed = bool(rng.random() < 0.5)
        return QuantActivation(act, ins, float(rng.uniform(0.05, 0.5)),
                               output_zero_point=0 if signed else int(rng.integers(0, 3)),
                               n_bits=int(rng.integers(2, 5)), signed=signed,
                               narrow=bool(rng.random() < 0.3))
    size = int(rng.integers(1, 12))
    shape = (width, size) if rng.random() < 0.5 else (size,)
    return ExplicitTable(rng.integers(-8, 9, shape), offset=int(rng.integers(-10, 5)))


def random_circuit(rng: np.random.Generator, final_bias: int = 0) -> Circuit:
    """2-3 random layers (Gemm [-> Round] -> TLU), then a final Gemm whose bias
    ``final_bias`` sets how wide the integers of the circuit get."""
    n_features = int(rng.integers(1, 6))
    signed = bool(rng.random() < 0.5)
    n_bits = int(rng.integers(2, 6))
    zp = 0 if signed else rng.integers(0, 2**n_bits, n_features)
    nodes: list = [QuantizeInput("q", ("input",), rng.uniform(0.05, 1.0, n_features), zp,
                                 n_bits, signed=signed)]
    prev, width = "q", n_features
    for i in range(int(rng.integers(2, 4))):
        out = int(rng.integers(1, 6))
        bias = rng.integers(-20, 21, out) if rng.random() < 0.7 else None
        nodes.append(Gemm(f"fc{i}", (prev,), rng.integers(-3, 4, (out, width)), bias,
                          int(rng.integers(-2, 3))))
        prev, width = f"fc{i}", out
        if rng.random() < 0.5:
            nodes.append(Round(f"fc{i}.r", (prev,), lsbs=int(rng.integers(1, 4)),
                               method=str(rng.choice(["exact", "approximate"]))))
            prev = f"fc{i}.r"
        nodes.append(TableLookup(f"act{i}", (prev,), fn=random_fn(rng, width)))
        prev = f"act{i}"
    nodes.append(Gemm("head", (prev,), rng.integers(-3, 4, (2, width)), [final_bias, -3]))
    nodes.append(Dequantize("out", ("head",), scale=0.5, zero_point=1))
    return Circuit(nodes, n_features)


# bias that forces the whole circuit into each carrier dtype
CARRIERS = {"float32": 0, "float64": 2**40 + 1, "int64": 2**58 + 1}


def simple(weight, bias=None, n_bits=8, signed=True, zp=0, scale=1.0) -> Circuit:
    weight = np.asarray(weight, dtype=object).astype(np.int64)
    return Circuit(
        [
            QuantizeInput("q", ("input",), scale, 0, n_bits, signed=signed),
            Gemm("g", ("q",), weight, bias, input_zero_point=zp),
            Dequantize("out", ("g",), 1.0, 0),
        ],
        n_features=weight.shape[1],
    )


# ------------------------------------------------------------------ gemm paths
def test_small_accumulator_float32_exact():
    rng = np.random.default_rng(0)
    c = simple(rng.integers(-7, 8, (6, 16)), rng.integers(-100, 100, 6))
    b = IntegerBackend(c)
    assert b.dtype is np.float32
    check_exact(c, inputs_for(c, rng, 500), b)


def test_medium_accumulator_float64_exact():
    rng = np.random.default_rng(1)
    # |acc| up to 16 * 128 * 2**20 = 2**31: float32 would round, float64 is exact
    w = rng.integers(2**19, 2**20, (5, 16)) * rng.choice([-1, 1], (5, 16)) + 1
    c = simple(w, rng.integers(-(2**20), 2**20, 5))
    b = IntegerBackend(c)
    assert b.dtype is np.float64
    q = inputs_for(c, rng, 500)
    out, _ = check_exact(c, q, b)
    assert np.abs(out).max() > 2**24
    # float32 really would have been inexact here (the test discriminates)
    f32 = (q.astype(np.float32) @ w.T.astype(np.float32)).astype(np.int64)
    assert not np.array_equal(f32, reference_run(c, q)["g"] - c["g"].bias)


def test_huge_accumulator_int64_exact():
    rng = np.random.default_rng(2)
    # |acc| up to ~ 2**8 * 2**44 * 8 + 2**57 > 2**53: only int64 is exact
    w = rng.integers(2**43, 2**44, (3, 8)) * rng.choice([-1, 1], (3, 8)) + 1
    bias = np.array([2**57 + 1, -(2**57) - 3, 12345])
    c = simple(w, bias)
    b = IntegerBackend(c)
    assert b.dtype is np.int64
    q = inputs_for(c, rng, 300)
    out, _ = check_exact(c, q, b)
    assert np.abs(out).max() > 2**53
    f64 = (q.astype(np.float64) @ w.T.astype(np.float64) + bias.astype(np.float64))
    assert not np.array_equal(f64.astype(np.int64), out)  # float64 would round


@pytest.mark.parametrize(
    "weight, bias, expected",
    [
        ([[2**24 - 1]], None, np.float32),  # max |acc| = 2**24 - 1: float32 still exact
        ([[2**24 - 2]], [1], np.float32),
        ([[2**24 - 1]], [1], np.float64),  # 2**24 with the bias
        ([[2**23, 2**23]], None, np.float64),  # partial sums count
        ([[2**53 - 1]], None, np.float64),
        ([[2**53 - 2]], [1], np.float64),
        ([[2**53 - 1]], [1], np.int64),
        ([[2**52, 2**52]], None, np.int64),
    ],
)
def test_dtype_thresholds(weight, bias, expected):
    c = simple(weight, bias, n_bits=1, signed=False)  # inputs in {0, 1}
    b = IntegerBackend(c)
    assert b.dtype is expected
    q = np.array(list(itertools.product([0, 1], repeat=c.n_features)))
    check_exact(c, q, b)


def test_input_zero_point_exact():
    rng = np.random.default_rng(3)
    w = rng.integers(-50, 50, (4, 6))
    c = simple(w, rng.integers(-9, 9, 4), n_bits=7, signed=False, zp=64)
    check_exact(c, inputs_for(c, rng, 300))
    wide = simple(rng.integers(2**30, 2**31, (2, 3)), None, n_bits=6, zp=-17)
    assert IntegerBackend(wide).dtype is np.float64
    check_exact(wide, inputs_for(wide, rng, 300))


def test_large_input_zero_point_exact():
    """Inputs near 2**24 minus a zero point just above it: the difference is tiny, but
    the zero point itself is not representable in float32."""
    c = Circuit(
        [
            QuantizeInput("q", ("input",), 1.0, 0, 2, signed=False),
            TableLookup("t", ("q",), fn=ExplicitTable(np.arange(4) + 2**24 - 4)),
            Gemm("g", ("t",), [[1]], input_zero_point=2**24 + 1),
            Dequantize("o", ("g",), 1.0, 0),
        ],
        n_features=1,
    )
    out, _ = check_exact(c, np.arange(4)[:, None])
    assert out[:, 0].tolist() == [-5, -4, -3, -2]


def test_multi_layer_wide_accumulators_exact():
    """A wide first layer feeding TLUs and a second layer: every carrier is exact."""
    rng = np.random.default_rng(4)
    for big in (3, 2**18, 2**40):
        nodes = [
            QuantizeInput("q", ("input",), 0.1, 0, 6, signed=True),
            Gemm("fc0", ("q",), rng.integers(-big, big + 1, (4, 5)), rng.integers(-big, big, 4)),
            Round("fc0.r", ("fc0",), lsbs=3),
            TableLookup("act0", ("fc0.r",), fn=QuantActivation("identity", 1.0, 1.0, n_bits=62,
                                                               signed=True)),
            Gemm("fc1", ("act0",), rng.integers(-3, 4, (2, 4)), [7, -7]),
            Dequantize("out", ("fc1",), 1.0, 0),
        ]
        c = Circuit(nodes, 5)
        check_exact(c, inputs_for(c, rng, 200))


# --------------------------------------------------------------- table lookups
TLU_CASES = {
    "qa_shared": lambda w: QuantActivation("gelu", 0.07, 0.1, n_bits=4, signed=True),
    "qa_per_channel": lambda w: QuantActivation("tanh", np.linspace(0.01, 0.2, w),
                                                np.linspace(0.05, 0.1, w), n_bits=3,
                                                signed=True, narrow=True),
    "qa_relu": lambda w: QuantActivation("relu", 0.13, 0.25, n_bits=3),
    "qa_relu_zp": lambda w: QuantActivation("relu", [0.1] * w, 0.3, output_zero_point=2,
                                            n_bits=4),
    "qa_identity": lambda w: QuantActivation("identity", 0.5, 0.75, output_zero_point=-1,
                                             n_bits=5, signed=True),
    # ties where float32 `x * (in / out)` and the float64 definition round differently
    "qa_identity_ties": lambda w: QuantActivation("identity", 0.7, 0.2, n_bits=8, signed=True),
    "qa_relu_ties": lambda w: QuantActivation("relu", 0.15, 0.1, n_bits=6),
    "et_shared": lambda w: ExplicitTable((np.arange(25) * 7) % 11 - 5, offset=-12),
    "et_per_channel": lambda w: ExplicitTable(np.arange(w * 9).reshape(w, 9) % 5 - 2,
                                              offset=-4),
}


def _tlu_circuit(fn_maker, lsbs: int, final_bias: int = 0) -> Circuit:
    w = 4
    nodes = [
        QuantizeInput("q", ("input",), 0.2, 0, 4, signed=True),
        Gemm("fc", ("q",), [[1, -2, 3], [2, 2, -1], [-3, 0, 1], [1, 1, 1]], [3, 0, -5, 1]),
    ]
    src = "fc"
    if lsbs:
        nodes.append(Round("fc.round", ("fc",), lsbs=lsbs))
        src = "fc.round"
    nodes += [
        TableLookup("act", (src,), fn=fn_maker(w)),
        Gemm("head", ("act",), [[1, -1, 2, 1]], [final_bias]),
        Dequantize("out", ("head",), 1.0, 0),
    ]
    return Circuit(nodes, 3)


@pytest.mark.parametrize("case", sorted(TLU_CASES))
@pytest.mark.parametrize("lsbs", [0, 2, 3])
@pytest.mark.parametrize("carrier", sorted(CARRIERS))
def test_tlu_matches_function(case, lsbs, carrier):
    c = _tlu_circuit(TLU_CASES[case], lsbs, CARRIERS[carrier])
    b = IntegerBackend(c)
    assert np.dtype(b.dtype) == np.dtype(carrier)
    q = np.array(list(itertools.product(range(-8, 8), repeat=3)))  # the whole input box
    _, values = check_exact(c, q, b)
    src = "fc.round" if lsbs else "fc"
    assert np.array_equal(values["act"], c["act"].fn(values[src]))
    if lsbs:
        assert np.all(values[src] % (1 << lsbs) == 0)


def test_tlu_with_large_output_values_exact():
    """Table values beyond float32's 24-bit mantissa must stay exact."""
    base = 2**24 + 1
    c = Circuit(
        [
            QuantizeInput("q", ("input",), 1.0, 0, 8, signed=False),
            TableLookup("t", ("q",), fn=ExplicitTable(np.arange(256) * 3 + base)),
            Gemm("g", ("t",), [[1]]),
            Dequantize("o", ("g",), 1.0, 0),
        ],
        n_features=1,
    )
    q = np.arange(256)[:, None]
    out, _ = check_exact(c, q)
    assert out[:, 0].tolist() == (np.arange(256) * 3 + base).tolist()


def test_table_fallback_when_too_large(monkeypatch):
    rng = np.random.default_rng(6)
    circuits = [_tlu_circuit(TLU_CASES[k], lsbs) for k in sorted(TLU_CASES) for lsbs in (0, 2)]
    circuits += [random_circuit(rng) for _ in range(5)]
    expected = [IntegerBackend(c).run_integers(inputs_for(c, np.random.default_rng(0)))
                for c in circuits]
    monkeypatch.setattr(integer, "MAX_TABLE_ENTRIES", 0)

    def no_tables(self, *args, **kwargs):
        raise AssertionError("a table was materialised despite MAX_TABLE_ENTRIES")

    monkeypatch.setattr(UnivariateFunction, "tabulate", no_tables)
    for c, exp in zip(circuits, expected):
        q = inputs_for(c, np.random.default_rng(0))
        out, _ = check_exact(c, q)
        assert np.array_equal(out, exp)


def test_wide_domain_tlu_uses_direct_path():
    """A TLU over a 2**24-wide accumulator domain still works (no huge table)."""
    c = Circuit(
        [
            QuantizeInput("q", ("input",), 1.0, 0, 12, signed=True),
            Gemm("g", ("q",), [[2**12 + 1, 2**11]]),
            TableLookup("t", ("g",), fn=QuantActivation("silu", 1e-6, 0.05, n_bits=5,
                                                        signed=True)),
            Gemm("h", ("t",), [[1]]),
            Dequantize("o", ("h",), 1.0, 0),
        ],
        n_features=2,
    )
    check_exact(c, inputs_for(c, np.random.default_rng(7), 500))


# ------------------------------------------------------------- random circuits
@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("carrier", sorted(CARRIERS))
def test_random_circuits_exact(seed, carrier):
    rng = np.random.default_rng(seed)
    c = random_circuit(rng, final_bias=CARRIERS[carrier])
    b = IntegerBackend(c)
    assert np.dtype(b.dtype) == np.dtype(carrier)
    check_exact(c, inputs_for(c, rng, 100), b)


def test_non_sequential_circuit():
    """Values read out of order (dead branches, skipped nodes) are still right."""
    nodes = [
        QuantizeInput("q", ("input",), 0.5, 0, 4, signed=True),
        Gemm("fc1", ("q",), [[1, 2], [3, -1]], [1, 1]),
        TableLookup("dead", ("fc1",), fn=QuantActivation("relu", 0.1, 0.1, n_bits=3)),
        Round("r", ("fc1",), lsbs=1),
        TableLookup("act", ("r",), fn=ExplicitTable(np.arange(40) % 3, offset=-20)),
        Gemm("fc2", ("act",), [[1, 1]]),
        Gemm("fc3", ("fc1",), [[2, -2]], [5]),
        Dequantize("out", ("fc2",), 1.0, 0),
    ]
    c = Circuit(nodes, 2)
    q = inputs_for(c, np.random.default_rng(8), 200)
    out, values = check_exact(c, q)
    assert np.array_equal(out, values["fc2"])


def test_quantize_dequantize_only():
    c = Circuit([QuantizeInput("q", ("input",), 0.5, 1, 3, signed=True),
                 Dequantize("out", ("q",), 0.5, 1)], n_features=2)
    b = IntegerBackend(c)
    q = np.array([[-4, 3], [0, 1]])
    assert b.run_integers(q).tolist() == q.tolist()
    assert b.predict(np.array([[0.5, -0.5]])).tolist() == [[0.5, -0.5]]


# ------------------------------------------------------------------ validation
@pytest.fixture
def backend() -> IntegerBackend:
    return IntegerBackend(simple([[1, -2, 3], [4, 0, -1]], [1, 2], n_bits=4, signed=True))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, bool, object])
def test_run_integers_rejects_non_integer_dtypes(backend, dtype):
    with pytest.raises(TypeError, match="integer inputs"):
        backend.run_integers(np.zeros((2, 3), dtype=dtype))


@pytest.mark.parametrize("value", [-9, 8, 1000, -(2**40)])
def test_run_integers_rejects_out_of_range(backend, value):
    q = np.zeros((3, 3), dtype=np.int64)
    q[1, 2] = value
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        backend.run_integers(q)


@pytest.mark.parametrize("shape", [(3,), (2, 2), (2, 4), (1, 3, 1), (3, 0)])
def test_run_integers_rejects_wrong_shape(backend, shape):
    with pytest.raises(ValueError, match=r"shape \(n_samples, 3\)"):
        backend.run_integers(np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize("method", ["quantize", "predict", "calibrate"])
def test_float_entry_points_reject_wrong_width(backend, method):
    with pytest.raises(ValueError, match=r"shape \(n_samples, 3\)"):
        getattr(backend, method)(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"shape \(n_samples, 3\)"):
        getattr(backend, method)(np.zeros(3))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint64])
def test_run_integers_accepts_integer_dtypes(backend, dtype):
    q = np.array([[0, 1, 7], [2, 0, 3]], dtype=dtype)
    # weights [[1, -2, 3], [4, 0, -1]], bias [1, 2]
    assert backend.run_integers(q).tolist() == [[0 - 2 + 21 + 1, 0 + 0 - 7 + 2],
                                                [2 - 0 + 9 + 1, 8 + 0 - 3 + 2]]


def test_empty_batch(backend):
    out = backend.run_integers(np.zeros((0, 3), dtype=np.int64))
    assert out.shape == (0, 2) and out.dtype == np.int64
    assert backend.predict(np.zeros((0, 3))).shape == (0, 2)


# -------------------------------------------------------------- float stages
def test_quantize_clips_and_rounds():
    c = simple([[1, 1]], n_bits=3, signed=True, scale=0.5)  # q in [-4, 3]
    b = IntegerBackend(c)
    X = np.array([[0.25, 0.75], [-0.25, -0.75], [1e9, -1e9], [np.inf, -np.inf], [1.0, -2.0]])
    q = b.quantize(X)
    assert q.dtype == np.int64
    # 0.5 -> 0 and 1.5 -> 2 (half to even); saturation at the range ends
    assert q.tolist() == [[0, 2], [0, -2], [3, -4], [3, -4], [2, -4]]
    b.run_integers(q)  # quantized values are always valid inputs


def test_quantize_per_feature_and_zero_point():
    c = Circuit([QuantizeInput("q", ("input",), [0.5, 2.0], [8, 3], 4, signed=False),
                 Dequantize("out", ("q",), [0.5, 2.0], [8, 3])], n_features=2)
    b = IntegerBackend(c)
    X = np.array([[1.0, 4.0], [-10.0, 100.0], [3.5, -6.0]])
    assert b.quantize(X).tolist() == [[10, 5], [0, 15], [15, 0]]
    assert b.predict(np.array([[1.0, 4.0]])).tolist() == [[1.0, 4.0]]


def test_quantize_rejects_nan(backend):
    with pytest.raises(ValueError, match="NaN"):
        backend.quantize(np.array([[0.0, np.nan, 1.0]]))


def test_predict_is_quantize_run_dequantize():
    rng = np.random.default_rng(9)
    c = random_circuit(rng)
    b = IntegerBackend(c)
    X = rng.normal(0, 2, (300, c.n_features))
    expected = c.output.apply(b.run_integers(b.quantize(X)))
    got = b.predict(X)
    assert got.dtype == np.float64 and got.shape == (300, 2)
    assert np.array_equal(got, expected)
    q = b.quantize(X)
    assert np.array_equal(expected, (reference_run(c, q)["head"] - 1) * 0.5)


def test_predict_chunks(monkeypatch):
    rng = np.random.default_rng(10)
    c = random_circuit(rng)
    X = rng.normal(0, 2, (103, c.n_features))
    full = IntegerBackend(c).predict(X)
    monkeypatch.setattr(integer, "CHUNK_ROWS", 10)
    chunked = IntegerBackend(c).predict(X)
    assert np.array_equal(full, chunked)


def test_return_all_contains_every_integer_node():
    rng = np.random.default_rng(11)
    c = random_circuit(rng)
    b = IntegerBackend(c)
    q = inputs_for(c, rng, 20)
    out, values = b.run_integers(q, return_all=True)
    assert list(values) == [n.name for n in c.nodes[:-1]]
    assert all(v.dtype == np.int64 and v.shape == (len(q), c.width(k)) for k, v in values.items())
    assert np.array_equal(values["q"], q)
    assert np.array_equal(out, b.run_integers(q))


def test_backend_is_reusable_and_does_not_mutate_inputs():
    rng = np.random.default_rng(12)
    c = random_circuit(rng)
    b = IntegerBackend(c)
    q = inputs_for(c, rng, 50)
    q_copy = q.copy()
    first = b.run_integers(q)
    _, values = b.run_integers(q, return_all=True)
    values["q"][:] = 0  # returned arrays are not the backend's internal state
    assert np.array_equal(q, q_copy)
    assert np.array_equal(b.run_integers(q), first)


# ------------------------------------------------------------------ calibrate
def test_calibrate():
    rng = np.random.default_rng(13)
    c = random_circuit(rng)
    b = IntegerBackend(c)
    X = rng.normal(0, 3, (400, c.n_features))
    cal_circuit = b.calibrate(X)
    assert c.calibration is None  # the original is untouched
    assert cal_circuit.same_as(c)
    cal = cal_circuit.calibration
    ref = reference_run(c, b.quantize(X))
    assert set(cal) == set(ref)
    worst = c.worst_case_ranges()
    for name, v in ref.items():
        expected = Interval.from_values(v)
        assert cal[name].to_list() == expected.to_list(), name
        assert np.all(cal[name].lo >= worst[name].lo) and np.all(cal[name].hi <= worst[name].hi)
    rep = cal_circuit.report()
    assert all(r["accumulator_bits_calibrated"] is not None for r in rep.layers)
    assert all(r["accumulator_bits_calibrated"] <= r["accumulator_bits"] for r in rep.layers)


def test_calibrate_rejects_empty():
    b = IntegerBackend(simple([[1]]))
    with pytest.raises(ValueError, match="empty"):
        b.calibrate(np.zeros((0, 1)))

"""Tests of latentopt.ir.functions: QuantActivation, ExplicitTable, int_range."""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import pytest

from latentopt.ir import ACTIVATIONS, ExplicitTable, QuantActivation, UnivariateFunction, int_range
from latentopt.ir.functions import MONOTONE_ACTIVATIONS


# --------------------------------------------------------------------------- reference
def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


REF_ACT = {
    "identity": lambda x: x,
    "relu": lambda x: max(x, 0.0),
    "relu6": lambda x: min(max(x, 0.0), 6.0),
    "leaky_relu": lambda x: x if x >= 0 else 0.01 * x,
    "sigmoid": _sigmoid,
    "tanh": math.tanh,
    "hardtanh": lambda x: min(max(x, -1.0), 1.0),
    "gelu": lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),
    "silu": lambda x: x * _sigmoid(x),
    "softplus": _softplus,
}


def _seed(*parts) -> int:
    """Stable across processes (``hash`` of a str is randomised)."""
    return zlib.crc32(repr(parts).encode())


def ref_quant_act(act, v, input_scale, output_scale, zp, n_bits, signed, narrow):
    """Scalar Python reference: round() is half-to-even on floats, like np.rint."""
    if signed:
        lo, hi = -(2 ** (n_bits - 1)) + (1 if narrow else 0), 2 ** (n_bits - 1) - 1
    else:
        lo, hi = 0, 2**n_bits - 1 - (1 if narrow else 0)
    q = round(REF_ACT[act](v * input_scale) / output_scale) + zp
    return min(max(q, lo), hi)


def test_reference_covers_every_activation():
    assert set(REF_ACT) == set(ACTIVATIONS)


# ------------------------------------------------------------------------- int_range
@pytest.mark.parametrize(
    "n_bits, signed, narrow, expected",
    [
        (1, False, False, (0, 1)),
        (1, True, False, (-1, 0)),
        (3, True, False, (-4, 3)),
        (3, True, True, (-3, 3)),
        (3, False, False, (0, 7)),
        (3, False, True, (0, 6)),
        (8, True, False, (-128, 127)),
        (8, False, False, (0, 255)),
    ],
)
def test_int_range(n_bits, signed, narrow, expected):
    assert int_range(n_bits, signed, narrow) == expected


@pytest.mark.parametrize("n_bits", [0, -1])
def test_int_range_rejects_non_positive_bits(n_bits):
    with pytest.raises(ValueError, match="n_bits"):
        int_range(n_bits, True)


# ------------------------------------------------------------------- QuantActivation
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize(
    "n_bits, signed, narrow, zp", [(3, False, False, 0), (4, True, False, 0),
                                   (4, True, True, 0), (3, False, True, 2)]
)
def test_quant_activation_matches_formula(act, n_bits, signed, narrow, zp):
    rng = np.random.default_rng(_seed(act, n_bits, signed, narrow, zp))
    ins, outs = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.05, 0.4))
    f = QuantActivation(act, ins, outs, output_zero_point=zp, n_bits=n_bits, signed=signed,
                        narrow=narrow)
    v = np.arange(-300, 301)
    expected = [ref_quant_act(act, int(x), ins, outs, zp, n_bits, signed, narrow) for x in v]
    got = f(v)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    lo, hi = int_range(n_bits, signed, narrow)
    # the grid is wide enough to saturate for all non-bounded activations
    assert got.min() >= lo and got.max() <= hi


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_quant_activation_per_channel_scales(act):
    rng = np.random.default_rng(7)
    ins = rng.uniform(0.01, 0.2, 3)
    outs = rng.uniform(0.05, 0.4, 3)
    f = QuantActivation(act, ins, outs, n_bits=4, signed=True)
    assert f.n_channels == 3
    v = rng.integers(-200, 200, (50, 3))
    got = f(v)
    assert got.shape == (50, 3)
    for c in range(3):
        g = QuantActivation(act, float(ins[c]), float(outs[c]), n_bits=4, signed=True)
        assert np.array_equal(got[:, c], g(v[:, c]))
        expected = [ref_quant_act(act, int(x), ins[c], outs[c], 0, 4, True, False)
                    for x in v[:, c]]
        assert got[:, c].tolist() == expected


def test_quant_activation_mixed_scalar_and_vector_scales():
    f = QuantActivation("relu", input_scale=[0.5, 1.0], output_scale=1.0, n_bits=4)
    assert f.n_channels == 2
    assert f(np.array([[3, 3]])).tolist() == [[2, 3]]  # 1.5 -> 2 (even), 3.0 -> 3
    g = QuantActivation("relu", input_scale=1.0, output_scale=[1.0, 2.0], n_bits=4)
    assert g.n_channels == 2
    assert g(np.array([[5, 5]])).tolist() == [[5, 2]]  # 2.5 -> 2 (even)


def test_quant_activation_rounds_half_to_even():
    f = QuantActivation("identity", 0.5, 1.0, n_bits=8, signed=True)
    v = np.array([-7, -5, -3, -1, 1, 3, 5, 7])  # halves: -3.5 ... 3.5
    assert f(v).tolist() == [-4, -2, -2, 0, 0, 2, 2, 4]


def test_quant_activation_clips_to_range():
    f = QuantActivation("identity", 1.0, 1.0, n_bits=3, signed=True)
    assert f(np.array([-100, -4, -3, 3, 4, 100])).tolist() == [-4, -4, -3, 3, 3, 3]
    f = QuantActivation("identity", 1.0, 1.0, n_bits=3, signed=True, narrow=True)
    assert f(np.array([-100, -4, -3, 3, 100])).tolist() == [-3, -3, -3, 3, 3]
    f = QuantActivation("identity", 1.0, 1.0, n_bits=3, signed=False)
    assert f(np.array([-5, 0, 7, 8])).tolist() == [0, 0, 7, 7]
    f = QuantActivation("identity", 1.0, 1.0, n_bits=3, signed=False, narrow=True)
    assert f(np.array([7, 8])).tolist() == [6, 6]


def test_quant_activation_zero_point_applied_before_clip():
    f = QuantActivation("relu", 1.0, 1.0, output_zero_point=3, n_bits=3)
    assert f(np.array([-10, 0, 2, 4, 5, 100])).tolist() == [3, 3, 5, 7, 7, 7]


def test_quant_activation_qrange():
    assert QuantActivation("relu", 1.0, 1.0, n_bits=5, signed=True, narrow=True).qrange == (-15, 15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activation="swish"), "unknown activation"),
        (dict(input_scale=0.0), "input_scale"),
        (dict(input_scale=-1.0), "input_scale"),
        (dict(input_scale=float("nan")), "input_scale"),
        (dict(input_scale=float("inf")), "input_scale"),
        (dict(output_scale=0.0), "output_scale"),
        (dict(output_scale=[1.0, np.nan]), "output_scale"),
        (dict(input_scale=[[1.0]]), "1-D"),
        (dict(input_scale=[1.0, 2.0], output_scale=[1.0, 2.0, 3.0]), "channel"),
        (dict(n_bits=0), "n_bits"),
    ],
)
def test_quant_activation_bad_arguments(kwargs, match):
    args = dict(activation="relu", input_scale=0.1, output_scale=0.2, n_bits=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        QuantActivation(**args)


def test_quant_activation_is_immutable():
    src = np.array([0.1, 0.2])
    f = QuantActivation("relu", src, 0.5, n_bits=3)
    src[0] = 100.0  # the function owns a copy
    assert f.input_scale.tolist() == [0.1, 0.2]
    with pytest.raises(ValueError):
        f.input_scale[0] = 1.0
    with pytest.raises(ValueError):
        f.output_scale[...] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.n_bits = 4  # type: ignore[misc]


# --------------------------------------------------------------------- ExplicitTable
def test_explicit_table_shared_with_clipping():
    t = ExplicitTable(np.array([10, 20, 30, 40]), offset=-2)  # domain [-2, 1]
    v = np.array([[-100, -3, -2, -1], [0, 1, 2, 1000]])
    assert t(v).tolist() == [[10, 10, 10, 20], [30, 40, 40, 40]]
    assert t.n_channels is None


def test_explicit_table_per_channel_with_clipping():
    table = np.array([[1, 2, 3], [-1, -2, -3]])
    t = ExplicitTable(table, offset=5)  # domain [5, 7]
    assert t.n_channels == 2
    v = np.array([[5, 5], [6, 7], [0, 100], [7, 6]])
    assert t(v).tolist() == [[1, -1], [2, -3], [1, -3], [3, -2]]
    # brute force: out[b, c] = table[c, clip(v - offset)]
    for b in range(v.shape[0]):
        for c in range(2):
            assert t(v)[b, c] == table[c, min(max(v[b, c] - 5, 0), 2)]


def test_explicit_table_per_channel_wrong_width():
    t = ExplicitTable(np.zeros((3, 4), dtype=int))
    with pytest.raises(ValueError, match="channels"):
        t(np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="channels"):
        t(np.int64(1))


@pytest.mark.parametrize(
    "table, match",
    [
        (np.array([0.5, 1.0]), "integers"),
        (np.array([1.0, np.nan]), "integers"),
        (np.array([1.0, np.inf]), "integers"),
        (np.zeros((2, 2, 2), dtype=int), "1-D or 2-D"),
        (np.zeros(0, dtype=int), "non-empty"),
        (np.zeros((2, 0), dtype=int), "non-empty"),
    ],
)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_explicit_table_bad_arguments(table, match):
    with pytest.raises(ValueError, match=match):
        ExplicitTable(table)


def test_explicit_table_accepts_integral_floats_and_is_immutable():
    src = np.array([1.0, -2.0, 3.0])
    t = ExplicitTable(src, offset=np.int64(2))
    src[0] = 7.0
    assert t.table.dtype == np.int64 and t.table.tolist() == [1, -2, 3]
    assert type(t.offset) is int and t.offset == 2
    with pytest.raises(ValueError):
        t.table[0] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.offset = 3  # type: ignore[misc]


# ----------------------------------------------------------------- table() materialise
TABLE_FUNCTIONS = {
    "qa_shared": QuantActivation("gelu", 0.05, 0.1, n_bits=4, signed=True),
    "qa_per_channel": QuantActivation("sigmoid", [0.02, 0.1, 0.3], 0.07, n_bits=3),
    "et_shared": ExplicitTable(np.arange(20) % 5 - 2, offset=-7),
    "et_per_channel": ExplicitTable(np.arange(30).reshape(3, 10) * [[1], [-1], [2]], offset=3),
}


@pytest.mark.parametrize("name", sorted(TABLE_FUNCTIONS))
@pytest.mark.parametrize("lo, hi, step", [(-40, 40, 1), (-32, 40, 4), (0, 0, 1), (-64, 64, 8),
                                          (-30, 31, 3)])
def test_table_equals_pointwise(name, lo, hi, step):
    f = TABLE_FUNCTIONS[name]
    # ExplicitTable's `table` field shadows the method: call the base implementation.
    tab = f.tabulate(lo, hi, step)
    domain = np.arange(lo, hi + 1, step)
    channels = f.n_channels or 1
    assert tab.shape == (channels, domain.size)
    assert tab.dtype == np.int64
    for c in range(channels):
        if f.n_channels is None:
            expected = f(domain)
        else:
            grid = np.zeros((domain.size, channels), dtype=np.int64)
            grid[:, c] = domain
            expected = f(grid)[:, c]
        assert np.array_equal(tab[c], expected)


def test_quant_activation_table_method():
    f = TABLE_FUNCTIONS["qa_shared"]
    assert np.array_equal(f.tabulate(-8, 8, 2)[0], f(np.arange(-8, 9, 2)))


# ------------------------------------------------------------------- output_bounds
def _check_bounds(f, lo, hi, exhaustive=True):
    out_lo, out_hi = f.output_bounds(lo, hi)
    out_lo, out_hi = np.asarray(out_lo), np.asarray(out_hi)
    assert out_lo.shape == lo.shape and out_hi.shape == hi.shape
    channels = lo.size
    for c in range(channels):
        if exhaustive:
            dom = np.arange(lo[c], hi[c] + 1)
        else:
            rng = np.random.default_rng(c)
            dom = np.concatenate([[lo[c], hi[c]], rng.integers(lo[c], hi[c] + 1, 2000)])
        grid = np.zeros((dom.size, channels), dtype=np.int64)
        grid[:] = lo  # other channels: any valid value
        grid[:, c] = dom
        vals = f(grid)[:, c]
        assert out_lo[c] <= vals.min() and vals.max() <= out_hi[c], (c, f)
        if exhaustive:  # the bounds are attained: tight
            assert out_lo[c] == vals.min() and out_hi[c] == vals.max()


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_output_bounds_sound_and_tight_small_spans(act):
    rng = np.random.default_rng(_seed(act))
    for _ in range(15):
        channels = int(rng.integers(1, 4))
        per_channel = rng.random() < 0.5
        ins = rng.uniform(0.001, 0.5, channels) if per_channel else float(rng.uniform(0.001, 0.5))
        f = QuantActivation(act, ins, float(rng.uniform(0.01, 0.5)), n_bits=int(rng.integers(2, 6)),
                            signed=bool(rng.random() < 0.5), output_zero_point=0)
        a = rng.integers(-500, 500, channels)
        b = a + rng.integers(0, 600, channels)
        _check_bounds(f, a, b)


def test_monotone_set_is_really_monotone():
    x = np.linspace(-50, 50, 20001)
    for act in MONOTONE_ACTIVATIONS:
        assert np.all(np.diff(ACTIVATIONS[act](x)) >= 0), act
    for act in set(ACTIVATIONS) - MONOTONE_ACTIVATIONS:
        assert np.any(np.diff(ACTIVATIONS[act](x)) < 0), act


@pytest.mark.parametrize("act", ["gelu", "silu"])
def test_output_bounds_non_monotone_interior_minimum(act):
    # gelu/silu have their minimum inside the interval: ends alone would be unsound
    f = QuantActivation(act, 0.01, 0.01, n_bits=6, signed=True)
    lo, hi = np.array([-300]), np.array([300])
    ends = f(np.concatenate([lo, hi]))
    out_lo, out_hi = f.output_bounds(lo, hi)
    assert out_lo[0] < ends.min()
    _check_bounds(f, lo, hi)


@pytest.mark.parametrize("act", ["gelu", "silu", "relu", "tanh"])
def test_output_bounds_sound_large_spans(act):
    f = QuantActivation(act, [1e-5, 1e-4], 0.05, n_bits=5, signed=True)
    lo = np.array([-(2**20), -(2**17)])
    hi = np.array([2**20, 2**17 + 5])
    _check_bounds(f, lo, hi, exhaustive=False)
    if act not in MONOTONE_ACTIVATIONS:  # span > 2**16: falls back to the quantizer range
        out_lo, out_hi = f.output_bounds(lo, hi)
        assert out_lo.tolist() == [f.qrange[0]] * 2 and out_hi.tolist() == [f.qrange[1]] * 2


def test_explicit_table_output_bounds_sound_and_tight():
    rng = np.random.default_rng(3)
    for _ in range(30):
        size = int(rng.integers(1, 15))
        channels = int(rng.integers(1, 4))
        shared = rng.random() < 0.5
        table = rng.integers(-50, 50, size if shared else (channels, size))
        t = ExplicitTable(table, offset=int(rng.integers(-10, 10)))
        a = rng.integers(-30, 30, channels)
        b = a + rng.integers(0, 25, channels)  # includes intervals fully outside the domain
        _check_bounds(t, a, b)


def test_explicit_table_bounds_outside_domain_are_end_values():
    t = ExplicitTable(np.array([4, -1, 9, 2]), offset=0)
    lo, hi = t.output_bounds(np.array([-10, 10]), np.array([-5, 20]))
    assert lo.tolist() == [4, 2] and hi.tolist() == [4, 2]


# --------------------------------------------------------------- dict / same_as
@pytest.mark.parametrize("name", sorted(TABLE_FUNCTIONS))
def test_function_dict_round_trip(name):
    f = TABLE_FUNCTIONS[name]
    meta, arrays = f.to_dict()
    g = UnivariateFunction.from_dict(meta, arrays)
    assert type(g) is type(f) and g.same_as(f) and f.same_as(g)
    v = np.arange(-60, 60).reshape(-1, 1).repeat(f.n_channels or 1, axis=1)
    assert np.array_equal(f(v), g(v))


def test_from_dict_unknown_kind():
    with pytest.raises(ValueError, match="unknown univariate function kind"):
        UnivariateFunction.from_dict({"kind": "spline"}, {})


def test_same_as_detects_differences():
    f = QuantActivation("relu", 0.1, 0.2, n_bits=3)
    assert f.same_as(QuantActivation("relu", 0.1, 0.2, n_bits=3))
    assert not f.same_as(QuantActivation("relu", 0.1, 0.2, n_bits=4))
    assert not f.same_as(QuantActivation("relu", 0.1, 0.25, n_bits=3))
    assert not f.same_as(QuantActivation("tanh", 0.1, 0.2, n_bits=3))
    assert not f.same_as(QuantActivation("relu", [0.1, 0.1], 0.2, n_bits=3))
    assert not f.same_as(ExplicitTable(np.array([1])))
    t = ExplicitTable(np.array([1, 2]))
    assert t.same_as(ExplicitTable(np.array([1, 2])))
    assert not t.same_as(ExplicitTable(np.array([1, 2]), offset=1))
    assert not t.same_as(ExplicitTable(np.array([[1, 2]])))


def test_base_class_is_abstract():
    base = UnivariateFunction()
    with pytest.raises(NotImplementedError):
        base(np.zeros(1))
    with pytest.raises(NotImplementedError):
        base.to_dict()

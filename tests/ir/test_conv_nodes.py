"""Convolution and pooling nodes (latentopt.ir.conv_nodes): validation, semantics against
the loop-by-loop reference, exact worst-case ranges, the report, serialisation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from circuit_reference import reference_run, reference_window
from conv_circuits import conv_circuit, random_window_node

from latentopt.ir import (
    Circuit,
    Conv,
    Dequantize,
    Gemm,
    Interval,
    MaxPool,
    Node,
    QuantizeInput,
    SumPool,
    bit_width,
    load,
    save,
)
from latentopt.ir.ranges import propagate

KINDS = ["conv", "sum_pool", "max_pool"]


def sample_q(circuit: Circuit, n: int, seed: int) -> np.ndarray:
    lo, hi = circuit.input_quantizer.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, circuit.n_features))


# ------------------------------------------------------------------ geometry
def test_output_shapes_and_flat_sizes():
    c = Conv("c", ("x",), np.ones((6, 2, 3, 2)), input_shape=(4, 7, 5), stride=(2, 1),
             padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    # H: (7 + 1 + 2 - 2 - 1) // 2 + 1 = 4;  W: (5 + 0 + 1 - 2 - 1) // 1 + 1 = 4
    assert c.output_shape == (6, 4, 4)
    assert (c.in_features, c.out_features, c.window) == (140, 96, 6)
    assert c.padding == (1, 0, 2, 1) and c.stride == (2, 1) and c.dilation == (1, 2)
    p = SumPool("p", ("x",), input_shape=(3, 8), kernel_size=2)
    assert p.stride == (2,) and p.padding == (0, 0) and p.output_shape == (3, 4)
    m = MaxPool("m", ("x",), input_shape=(2, 5, 5), kernel_size=3, stride=2, padding=1)
    assert m.output_shape == (2, 3, 3) and m.pbs_count == 18 * 9  # 8 maxima + 1 cast
    assert m.geometry() == {"kernel_shape": (3, 3), "strides": (2, 2),
                            "pads": (1, 1, 1, 1), "dilations": (1, 1)}


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight=np.ones((2, 3, 3)), input_shape=(2, 5)), "does not fit"),
    (dict(weight=np.ones((3, 1, 3)), input_shape=(2, 5), groups=2), "does not fit"),
    (dict(weight=np.ones((2, 2, 3)), input_shape=(2, 5), groups=0), "does not fit"),
    (dict(weight=np.ones((2, 2, 7)), input_shape=(2, 5)), "larger than padded axis 0"),
    (dict(weight=np.ones((2, 2, 3)), input_shape=(2, 5), dilation=3), "larger than"),
    (dict(weight=np.ones((2, 2, 3, 3)), input_shape=(2, 5)), "1-D input needs a 1-D kernel"),
    (dict(weight=np.ones((2, 2, 1, 1, 1)), input_shape=(2, 5, 5, 5)), "3-D or 4-D"),
    (dict(weight=np.ones((2, 2, 1)), input_shape=(2, 5, 5, 5)), "3-D or 4-D|\\(C, L\\)"),
    (dict(weight=np.ones((2, 2, 3)), input_shape=(2, 5), padding=(1, 2, 3)), "padding"),
    (dict(weight=np.ones((2, 2, 3)), input_shape=(2, 5), stride=0), "stride"),
    (dict(weight=np.ones((2, 2, 3)), input_shape=(2, 5), stride=1.5), "stride"),
    (dict(weight=np.ones((2, 2, 3)), input_shape=(2, 5), bias=[1]), "bias"),
    (dict(weight=np.full((2, 2, 3), 0.5), input_shape=(2, 5)), "integers"),
])
def test_conv_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv("c", ("x",), **kwargs)


def test_max_pool_rejects_windows_in_padding():
    with pytest.raises(ValueError, match="entirely in the padding"):
        MaxPool("m", ("x",), input_shape=(1, 4), kernel_size=2, padding=(2, 0))
    MaxPool("m", ("x",), input_shape=(1, 4), kernel_size=2, padding=(1, 1))  # fine


def test_nodes_are_immutable():
    c = Conv("c", ("x",), np.ones((1, 1, 2)), input_shape=(1, 3))
    with pytest.raises(AttributeError):
        c.groups = 2  # type: ignore[misc]
    assert not c.weight.flags.writeable


# ----------------------------------------------------------------- semantics
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(12))
def test_apply_matches_loop_reference(kind, seed):
    rng = np.random.default_rng(seed)
    node = random_window_node(rng, kind)
    x = rng.integers(-20, 21, (3, node.in_features))
    out = node.apply(x)
    assert out.dtype == np.int64 and out.shape == (3, node.out_features)
    np.testing.assert_array_equal(out, reference_window(node, x).astype(np.int64))


def test_padding_is_the_zero_point():
    """A padded position holds the real zero: the integer input zero point."""
    conv = Conv("c", ("x",), [[[1, 1, 1]]], input_shape=(1, 3), input_zero_point=5, padding=1)
    # x - zp = [1, 2, 3], zero padded: [0+1+2, 1+2+3, 2+3+0]
    assert conv.apply(np.array([[6, 7, 8]])).tolist() == [[3, 6, 5]]
    pool = SumPool("s", ("x",), input_shape=(1, 3), kernel_size=2, stride=1, padding=1,
                   input_zero_point=5)
    assert pool.apply(np.array([[6, 7, 8]])).tolist() == [[1, 3, 5, 3]]
    mp = MaxPool("m", ("x",), input_shape=(1, 3), kernel_size=2, stride=1, padding=1)
    assert mp.apply(np.array([[-6, -7, -8]])).tolist() == [[-6, -6, -7, -8]]


def test_overflow_is_detected():
    conv = Conv("c", ("x",), [[[2**40]]], input_shape=(1, 2))
    with pytest.raises(OverflowError):
        conv.apply(np.array([[2**30, 1]]))


# ------------------------------------------------------------------- ranges
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(8))
def test_worst_case_ranges_are_sound_and_tight(kind, seed):
    rng = np.random.default_rng(100 + seed)
    node = random_window_node(rng, kind)
    lo = rng.integers(-6, 3, node.in_features)
    hi = lo + rng.integers(0, 6, node.in_features)
    out = propagate(node, Interval(lo, hi), node.in_features)
    # sound: random inputs in the box stay inside
    x = rng.integers(lo, hi + 1, (200, node.in_features))
    y = node.apply(x)
    assert np.all(y >= out.lo) and np.all(y <= out.hi)
    # tight: every output reaches both ends
    if isinstance(node, Conv):
        zp = node.input_zero_point
        basis = np.eye(node.in_features, dtype=np.int64)
        coef = node.apply(basis + zp) - node.apply(np.full((1, node.in_features), zp))
        for j in range(node.out_features):
            x_hi = np.where(coef[:, j] > 0, hi, lo)[None, :]
            x_lo = np.where(coef[:, j] > 0, lo, hi)[None, :]
            assert node.apply(x_hi)[0, j] == out.hi[j]
            assert node.apply(x_lo)[0, j] == out.lo[j]
    else:
        np.testing.assert_array_equal(node.apply(hi[None, :])[0], out.hi)
        np.testing.assert_array_equal(node.apply(lo[None, :])[0], out.lo)


def test_ranges_broadcast_a_single_channel_interval():
    node = SumPool("s", ("x",), input_shape=(2, 4), kernel_size=2)
    out = propagate(node, Interval([-1], [3]), 8)
    assert out.lo.tolist() == [-2] * 4 and out.hi.tolist() == [6] * 4


@pytest.mark.parametrize("kind", ["conv", "sum_pool"])
@pytest.mark.parametrize("seed", range(5))
def test_partial_sum_bound(kind, seed):
    """The carrier bound is the exact largest sum of |terms| of any output."""
    rng = np.random.default_rng(200 + seed)
    node = random_window_node(rng, kind)
    lo = rng.integers(-6, 3, node.in_features)
    hi = lo + rng.integers(0, 6, node.in_features)
    zp = node.input_zero_point
    mag = np.maximum(np.abs(lo - zp), np.abs(hi - zp))
    x = np.stack([lo, hi])
    terms = reference_window(node, x)  # bound >= |every output|
    bound = node.partial_sum_bound(lo, hi)
    assert bound >= np.abs(terms.astype(np.int64)).max()
    if isinstance(node, Conv):
        absnode = Conv("a", ("x",), np.abs(node.weight), input_shape=node.input_shape,
                       stride=node.stride, padding=node.padding, dilation=node.dilation,
                       groups=node.groups)
        expect = absnode.apply(mag[None, :]).max() + (
            0 if node.bias is None else np.abs(node.bias).max())
    else:
        expect = SumPool("a", ("x",), input_shape=node.input_shape,
                         kernel_size=node.kernel_size, stride=node.stride,
                         padding=node.padding, dilation=node.dilation).apply(mag[None, :]).max()
    assert bound == expect
    mp = random_window_node(rng, "max_pool")
    assert mp.partial_sum_bound(-7, 3) == 7


@pytest.mark.parametrize("nd", [1, 2])
def test_circuit_ranges_contain_reference_values(nd):
    c = conv_circuit(nd=nd)
    worst = c.worst_case_ranges()
    vals = reference_run(c, sample_q(c, 300, nd))
    for name, v in vals.items():
        assert np.all(v >= worst[name].lo) and np.all(v <= worst[name].hi), name
    cal = c.with_calibration(vals).calibration
    assert cal is not None and {"c1", "mp", "c2", "sp"} <= set(cal)
    for name in ("c1", "mp", "c2", "sp"):
        assert np.all(cal[name].lo >= worst[name].lo) and np.all(cal[name].hi <= worst[name].hi)
        assert cal[name].lo.size == c.width(name)


def test_circuit_checks_flat_widths():
    with pytest.raises(ValueError, match="conv 'c' expects 18 inputs, gets 16"):
        Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3),
                 Conv("c", ("q",), np.ones((1, 2, 3)), input_shape=(2, 9)),
                 Dequantize("o", ("c",), 1.0, 0)], n_features=16)
    with pytest.raises(ValueError, match="gemm 'g' expects 7 inputs, gets 8"):
        Circuit([QuantizeInput("q", ("input",), 1.0, 0, 3),
                 MaxPool("m", ("q",), input_shape=(2, 8), kernel_size=2),
                 Gemm("g", ("m",), np.ones((1, 7))),
                 Dequantize("o", ("g",), 1.0, 0)], n_features=16)


# ------------------------------------------------------------------- report
def test_layers_and_report_rows():
    c = conv_circuit()
    groups = c.layers()
    assert [sorted(g) for g in groups] == [["gemm", "round", "tlu"], ["maxpool"], ["gemm"],
                                           ["gemm"], ["gemm"]]
    worst = c.worst_case_ranges()
    rows = {r["name"]: r for r in c.report().layers}
    assert list(rows) == ["c1", "mp", "c2", "sp", "fc"]
    c1 = rows["c1"]
    assert (c1["in_features"], c1["out_features"]) == (50, 100)
    assert c1["nonzero_weights"] == int(np.count_nonzero(c["c1"].weight))
    assert c1["accumulator_bits"] == worst["c1"].bits and c1["tlu_count"] == 100
    mp = rows["mp"]
    a = worst["a1"]
    assert mp["tlu_count"] == c["mp"].pbs_count == 64 * 4
    assert mp["tlu_input_bits"] == bit_width(a.min - a.max, a.max - a.min) == 3
    assert (mp["in_features"], mp["out_features"]) == (100, 64)
    assert rows["sp"]["tlu_count"] == 0 and rows["sp"]["nonzero_weights"] == 0
    report = c.report()
    assert report.tlu_count == 100 + 256
    assert "mp" in str(report)


def test_report_calibrated_max_pool_columns():
    c = conv_circuit(seed=1)
    c = c.with_calibration(reference_run(c, sample_q(c, 50, 0)))
    row = next(r for r in c.report().layers if r["name"] == "mp")
    cal = c.calibration["a1"]
    assert row["tlu_input_bits_calibrated"] == bit_width(cal.min - cal.max, cal.max - cal.min)
    assert row["accumulator_bits_calibrated"] == c.calibration["mp"].bits


# ----------------------------------------------------------- serialisation
@pytest.mark.parametrize("kind", KINDS)
def test_node_dict_round_trip(kind):
    node = random_window_node(np.random.default_rng(3), kind, nd=2)
    meta, arrays = node.to_dict()
    meta = json.loads(json.dumps(meta))  # JSON-able
    back = Node.from_dict(meta, arrays)
    assert type(back) is type(node) and back.same_as(node)
    assert back.padding == node.padding and isinstance(back.stride, tuple)


@pytest.mark.parametrize("nd", [1, 2])
def test_circuit_file_round_trip_with_calibration(nd):
    c = conv_circuit(nd=nd)
    q = sample_q(c, 40, 1)
    c = c.with_calibration(reference_run(c, q))
    buf = io.BytesIO()
    save(c, buf)
    back = load(io.BytesIO(buf.getvalue()))
    assert back.same_as(c)
    assert back.calibration is not None and back.calibration.keys() == c.calibration.keys()
    ra, rb = reference_run(c, q), reference_run(back, q)
    assert all(np.array_equal(ra[k], rb[k]) for k in ra)


def test_with_rounding_keeps_spatial_nodes():
    c = conv_circuit(rounding=False)
    r = c.with_rounding(2)
    assert [n.op for n in r.nodes] == ["quantize_input", "conv", "round", "table_lookup",
                                       "max_pool", "conv", "sum_pool", "gemm", "dequantize"]
    assert all(a.same_as(b) for a, b in zip(
        [n for n in r.nodes if n.op in ("conv", "sum_pool", "max_pool")],
        [n for n in c.nodes if n.op in ("conv", "sum_pool", "max_pool")]))
    assert r.same_as(conv_circuit(rounding=True))

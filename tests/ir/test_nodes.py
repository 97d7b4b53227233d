"""Tests of latentopt.ir.nodes: validation, immutability, (de)serialisation, semantics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from latentopt.ir import (
    Add,
    Concat,
    Conv,
    Dequantize,
    ExplicitTable,
    Gemm,
    MaxPool,
    Node,
    QuantActivation,
    QuantizeInput,
    Round,
    SumPool,
    TableLookup,
)
from latentopt.ir.nodes import NODE_TYPES

ALL_NODES = {
    "quantize": QuantizeInput("q", ("input",), scale=[0.5, 0.25], zero_point=[1, -1], n_bits=4,
                              signed=True, narrow=True),
    "quantize_scalar": QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3,
                                     signed=False),
    "gemm": Gemm("fc", ("q",), weight=[[1, -2, 0], [3, 4, -5]], bias=[7, -8], input_zero_point=3),
    "gemm_nobias": Gemm("fc", ("q",), weight=[[1, 2]]),
    "round": Round("r", ("fc",), lsbs=3, method="approximate"),
    "tlu_qa": TableLookup("t", ("r",), fn=QuantActivation("silu", [0.1, 0.2], 0.3, 2, 4, True)),
    "tlu_et": TableLookup("t", ("r",), fn=ExplicitTable([[1, 2, 3], [4, 5, 6]], offset=-1)),
    "dequantize": Dequantize("out", ("t",), scale=[0.1, 0.2], zero_point=[0, 3]),
}


# --------------------------------------------------------------------- base Node
def test_node_types_registry():
    assert NODE_TYPES == {"quantize_input": QuantizeInput, "gemm": Gemm, "round": Round,
                          "table_lookup": TableLookup, "add": Add, "concat": Concat,
                          "dequantize": Dequantize, "conv": Conv, "sum_pool": SumPool,
                          "max_pool": MaxPool}


@pytest.mark.parametrize("name", ["", None, 3])
def test_node_name_must_be_non_empty_string(name):
    with pytest.raises(ValueError, match="name"):
        Round(name, ("x",), lsbs=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("inputs", [(), ("a", "b")])
def test_node_takes_exactly_one_input(inputs):
    with pytest.raises(ValueError, match="exactly 1 input"):
        Round("r", inputs, lsbs=1)


def test_inputs_normalised_to_tuple():
    node = Round("r", ["x"], lsbs=1)  # type: ignore[arg-type]
    assert node.inputs == ("x",) and isinstance(node.inputs, tuple)


# ------------------------------------------------------------------------- Gemm
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight=[[0.5, 1.0]]), "weight must hold integers"),
        (dict(weight=[[np.nan, 1.0]]), "weight must hold integers"),
        (dict(weight=[[np.inf, 1.0]]), "weight must hold integers"),
        (dict(weight=np.array([["a", "b"]])), "weight must be an integer array"),
        (dict(weight=[1, 2]), "2-D"),
        (dict(weight=np.zeros((0, 2), dtype=int)), "non-empty"),
        (dict(weight=np.zeros((2, 2, 2), dtype=int)), "2-D"),
        (dict(bias=[1, 2, 3]), r"bias must have shape \(2,\)"),
        (dict(bias=[[1, 2]]), r"bias must have shape \(2,\)"),
        (dict(bias=[0.5, 1.0]), "bias must hold integers"),
    ],
)
def test_gemm_validation(kwargs, match):
    args = dict(weight=[[1, 2], [3, 4]], bias=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Gemm("fc", ("x",), **args)


def test_gemm_accepts_integral_floats_and_bools():
    g = Gemm("fc", ("x",), weight=np.array([[1.0, -2.0]]), bias=np.array([3.0]),
             input_zero_point=np.int32(-2))
    assert g.weight.dtype == np.int64 and g.weight.tolist() == [[1, -2]]
    assert g.bias.dtype == np.int64 and g.bias.tolist() == [3]
    assert type(g.input_zero_point) is int and g.input_zero_point == -2
    assert (g.in_features, g.out_features) == (2, 1)
    gb = Gemm("fc", ("x",), weight=np.array([[True, False]]))
    assert gb.weight.tolist() == [[1, 0]]


# ------------------------------------------------------------------------ Round
@pytest.mark.parametrize("lsbs", [-1, -5])
def test_round_negative_lsbs(lsbs):
    with pytest.raises(ValueError, match="lsbs"):
        Round("r", ("x",), lsbs=lsbs)


@pytest.mark.parametrize("method", ["nearest", "EXACT", "", None])
def test_round_bad_method(method):
    with pytest.raises(ValueError, match="method"):
        Round("r", ("x",), lsbs=1, method=method)  # type: ignore[arg-type]


def _round_half_up(x: int, lsbs: int) -> int:
    """Brute force: the multiple m of 2**lsbs nearest x, ties towards +inf."""
    step = 2**lsbs
    below = (x // step) * step  # floor multiple (Python // floors for negatives too)
    above = below + step
    if x == below:
        return x
    return above if (x - below) * 2 >= step else below


@pytest.mark.parametrize("lsbs", range(0, 7))
def test_round_apply_matches_brute_force(lsbs):
    xs = np.arange(-300, 301, dtype=np.int64)
    node = Round("r", ("x",), lsbs=lsbs)
    got = node.apply(xs)
    expected = [_round_half_up(int(x), lsbs) for x in xs]
    assert got.tolist() == expected
    assert all(v % 2**lsbs == 0 for v in got.tolist())
    # Python ints too (used by range analysis)
    assert [node.apply(int(x)) for x in xs[::37]] == expected[::37]


def test_round_apply_ties_go_up():
    node = Round("r", ("x",), lsbs=2)
    assert node.apply(np.array([-6, -2, 2, 6, -5, 5, -7, 7])).tolist() == [
        -4, 0, 4, 8, -4, 4, -8, 8]


def test_round_apply_large_values():
    node = Round("r", ("x",), lsbs=10)
    x = np.array([2**60 + 511, 2**60 + 512, -(2**60) - 513], dtype=np.int64)
    assert node.apply(x).tolist() == [2**60, 2**60 + 1024, -(2**60) - 1024]


def test_round_normalises_lsbs():
    node = Round("r", ("x",), lsbs=np.int64(2))
    assert type(node.lsbs) is int and node.method == "exact"


# ---------------------------------------------------------------- QuantizeInput
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale=0.0), "scale must be > 0"),
        (dict(scale=-0.5), "scale must be > 0"),
        (dict(scale=[0.5, -0.1]), "scale must be > 0"),
        (dict(scale=np.nan), "scale must be finite"),
        (dict(scale=[0.5, np.inf]), "scale must be finite"),
        (dict(zero_point=0.5), "zero_point must hold integers"),
        (dict(zero_point="a"), "zero_point must be an integer array"),
        (dict(n_bits=0), "n_bits"),
    ],
)
def test_quantize_input_validation(kwargs, match):
    args = dict(scale=0.5, zero_point=0, n_bits=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        QuantizeInput("q", ("input",), **args)


def test_quantize_input_apply():
    node = QuantizeInput("q", ("input",), scale=[0.5, 2.0], zero_point=[1, 0], n_bits=3,
                         signed=True)
    x = np.array([[0.25, 3.0], [0.75, 5.0], [-100.0, 100.0], [1.0, -5.0]])
    # column 0: x/0.5 + 1 ; column 1: x/2 (half to even), clipped to [-4, 3]
    assert node.apply(x).tolist() == [[1, 2], [3, 2], [-4, 3], [3, -2]]
    assert node.apply(x).dtype == np.int64
    assert node.qrange == (-4, 3)


def test_quantize_input_apply_unsigned_narrow():
    node = QuantizeInput("q", ("input",), scale=1.0, zero_point=3, n_bits=2, signed=False,
                         narrow=True)
    assert node.qrange == (0, 2)
    assert node.apply(np.array([[-10.0, -3.0, -1.0, 10.0]])).tolist() == [[0, 0, 2, 2]]


@pytest.mark.parametrize("n_bits", [8, 24, 25, 26, 31, 40])
@pytest.mark.parametrize("signed, narrow", [(True, False), (True, True), (False, False),
                                            (False, True)])
def test_quantize_input_saturates_inside_range_for_wide_quantizers(n_bits, signed, narrow):
    node = QuantizeInput("q", ("input",), scale=1.0, zero_point=0, n_bits=n_bits,
                         signed=signed, narrow=narrow)
    lo, hi = node.qrange
    q = node.apply(np.array([[1e30, -1e30, np.inf, -np.inf, float(hi), float(lo)]]))
    assert q.min() >= lo and q.max() <= hi
    assert q[0, 0] == q[0, 2] == q[0, 4] and q[0, 1] == q[0, 3] == q[0, 5]
    if n_bits <= 24:  # exactly representable: saturates at the range ends
        assert q[0, :2].tolist() == [hi, lo]
    else:  # otherwise as close to the ends as float32 (brevitas' dtype) allows
        assert hi - q[0, 0] <= 2 ** (n_bits - 24) and q[0, 1] - lo <= 2 ** (n_bits - 24)


def test_quantize_input_normalises_numpy_scalars():
    """numpy ints/bools (typical of exporters) must serialise like Python ones."""
    node = QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=np.int64(4),
                         signed=np.bool_(False), narrow=np.bool_(True))
    assert type(node.n_bits) is int and type(node.signed) is bool and type(node.narrow) is bool
    meta, _ = node.to_dict()
    json.dumps(meta)
    assert Node.from_dict(*node.to_dict()).same_as(node)


# ------------------------------------------------------------------- Dequantize
def test_dequantize_apply_and_validation():
    node = Dequantize("out", ("x",), scale=[0.5, 2.0], zero_point=[1, -1])
    assert node.apply(np.array([[3, 3]])).tolist() == [[1.0, 8.0]]
    with pytest.raises(ValueError, match="finite"):
        Dequantize("out", ("x",), scale=np.nan, zero_point=0)
    with pytest.raises(ValueError, match="integers"):
        Dequantize("out", ("x",), scale=1.0, zero_point=0.5)


def test_dequantize_offset_applies_and_round_trips():
    node = Dequantize("out", ("x",), scale=[0.5, 2.0], zero_point=[1, -1], offset=[10.0, -1.5])
    assert node.apply(np.array([[3, 3]])).tolist() == [[11.0, 6.5]]
    again = Node.from_dict(*node.to_dict())
    assert again.same_as(node) and again.offset.tolist() == [10.0, -1.5]
    assert not again.same_as(Dequantize("out", ("x",), scale=[0.5, 2.0], zero_point=[1, -1]))
    with pytest.raises(ValueError, match="finite"):
        Dequantize("out", ("x",), scale=1.0, zero_point=0, offset=np.inf)


# ------------------------------------------------------------------ TableLookup
def test_table_lookup_requires_univariate_function():
    with pytest.raises(TypeError, match="UnivariateFunction"):
        TableLookup("t", ("x",), fn=np.tanh)  # type: ignore[arg-type]


# --------------------------------------------------------------- immutability
@pytest.mark.parametrize("key", sorted(ALL_NODES))
def test_nodes_are_frozen(key):
    node = ALL_NODES[key]
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.name = "other"  # type: ignore[misc]
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, np.ndarray):
            assert not value.flags.writeable, f.name
            with pytest.raises(ValueError):
                value[...] = 0


def test_nodes_copy_their_arrays():
    w = np.array([[1, 2], [3, 4]])
    b = np.array([5, 6])
    g = Gemm("fc", ("x",), weight=w, bias=b)
    w[0, 0] = 100
    b[0] = 100
    assert g.weight.tolist() == [[1, 2], [3, 4]] and g.bias.tolist() == [5, 6]
    s = np.array([0.5, 0.5])
    q = QuantizeInput("q", ("input",), scale=s, zero_point=0, n_bits=3)
    s[0] = 9.0
    assert q.scale.tolist() == [0.5, 0.5]


# --------------------------------------------------------- to_dict / from_dict
@pytest.mark.parametrize("key", sorted(ALL_NODES))
def test_dict_round_trip(key):
    node = ALL_NODES[key]
    meta, arrays = node.to_dict()
    json.loads(json.dumps(meta))  # metadata is JSON-able
    assert meta["op"] == node.op and meta["name"] == node.name
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    # through JSON, as the file format does
    back = Node.from_dict(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    assert type(back) is type(node)
    assert back.same_as(node) and node.same_as(back)
    for f in dataclasses.fields(node):
        a, b = getattr(node, f.name), getattr(back, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        elif f.name != "fn":
            assert a == b


def test_dict_round_trip_keeps_function_behaviour():
    node = ALL_NODES["tlu_qa"]
    back = Node.from_dict(*node.to_dict())
    v = np.arange(-100, 100).reshape(-1, 2)
    assert np.array_equal(node.fn(v), back.fn(v))


def test_from_dict_unknown_op():
    with pytest.raises(ValueError, match="unknown node op"):
        Node.from_dict({"op": "conv3d", "name": "c", "inputs": ["x"]}, {})


def test_same_as_detects_differences():
    g = ALL_NODES["gemm"]
    assert g.same_as(Gemm("fc", ("q",), [[1, -2, 0], [3, 4, -5]], [7, -8], 3))
    assert not g.same_as(Gemm("fc", ("q",), [[1, -2, 0], [3, 4, -4]], [7, -8], 3))
    assert not g.same_as(Gemm("fc", ("q",), [[1, -2, 0], [3, 4, -5]], [7, -8], 2))
    assert not g.same_as(Gemm("fc", ("q",), [[1, -2, 0], [3, 4, -5]], None, 3))
    assert not g.same_as(Gemm("fc2", ("q",), [[1, -2, 0], [3, 4, -5]], [7, -8], 3))
    assert not g.same_as(Gemm("fc", ("p",), [[1, -2, 0], [3, 4, -5]], [7, -8], 3))
    assert not g.same_as(ALL_NODES["round"])
    r = ALL_NODES["round"]
    assert not r.same_as(Round("r", ("fc",), lsbs=3, method="exact"))
    assert not ALL_NODES["tlu_qa"].same_as(ALL_NODES["tlu_et"])

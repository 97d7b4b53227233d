"""The lowering schedule: typed steps, layers, lookup domains, carrier, limit, input check."""

from __future__ import annotations

import numpy as np
import pytest

from latentopt.ir import (
    Add,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    Interval,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)
from latentopt.ir.schedule import (
    MAX_TABLE_ENTRIES,
    AddStep,
    DequantizeStep,
    GemmStep,
    InputTypeError,
    LookupStep,
    QuantizeStep,
    RoundStep,
    carrier_dtype,
    check_quantized,
    schedule,
)


def _relu(width=None, **kw):
    scale = 0.25 if width is None else np.linspace(0.1, 0.3, width)
    return QuantActivation("relu", scale, 1.0, n_bits=kw.pop("n_bits", 3), **kw)


def test_step_types_and_layers(three_layer):
    s = schedule(three_layer.with_rounding([2, 0]))
    kinds = [type(step) for step in s.steps]
    assert kinds == [QuantizeStep, GemmStep, RoundStep, LookupStep, GemmStep, LookupStep,
                     GemmStep, DequantizeStep]
    assert [step.layer for step in s.steps] == [
        "q", "fc1", "fc1", "fc1", "fc2", "fc2", "fc3", "out"]
    assert s.quantize is s.steps[0] and s.dequantize is s.steps[-1]
    assert s["act1"].lsbs == 2 and s["act1"].domain.step == 4
    assert s["act2"].lsbs == 0 and s["act2"].domain.step == 1
    assert [step.name for step in s.lookups] == ["act1", "act2"]
    assert s.server_steps == s.steps[1:-1]


def test_residual_add_and_dead_steps():
    c = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 3),
        Gemm("a", ("q",), [[1, 1], [1, -1]]),
        Gemm("dead", ("q",), [[2, 2]]),
        Add("sum", ("a", "q")),
        TableLookup("act", ("sum",), _relu()),
        Dequantize("out", ("act",), 1.0, 0),
    ], n_features=2)
    s = schedule(c)
    assert isinstance(s["sum"], AddStep) and s["sum"].layer == "sum"
    assert s["act"].layer == "act"  # a lookup after an Add is a layer of its own
    assert [step.name for step in s.live_steps()] == ["a", "sum", "act"]


def test_domain_policy_shared_and_per_channel(three_layer):
    """A per-channel function has one table channel per value channel, with its own
    range; a shared function one table channel over the union of the channel ranges."""
    fc1 = three_layer.worst_case_ranges()["fc1"]
    assert len(set(zip(fc1.lo.tolist(), fc1.hi.tolist()))) > 1  # channels differ
    per = schedule(three_layer)["act1"]  # per-channel input scales
    assert per.node.fn.n_channels == 4
    assert per.domain.lo.tolist() == fc1.lo.tolist()
    assert per.domain.hi.tolist() == fc1.hi.tolist()
    assert per.domain.entries == int((fc1.hi - fc1.lo + 1).sum())
    table, starts, fn = per.table(), per.domain.starts, per.node.fn
    for c in range(4):  # the flat table: channel c's values from starts[c] on
        x = np.arange(fc1.lo[c], fc1.hi[c] + 1)
        grid = np.zeros((x.size, 4), np.int64)
        grid[:, c] = x
        assert table[starts[c] : starts[c] + x.size].tolist() == fn(grid)[:, c].tolist()
    nodes = [TableLookup("act1", ("fc1",), QuantActivation("gelu", 0.05, 0.2, n_bits=3))
             if n.name == "act1" else n for n in three_layer.nodes]
    shared = schedule(three_layer.replace(nodes=nodes))["act1"]
    assert shared.domain.lo.tolist() == [fc1.min] and shared.domain.hi.tolist() == [fc1.max]
    assert shared.domain.entries == fc1.max - fc1.min + 1
    assert shared.table().tolist() == shared.node.fn(np.arange(fc1.min, fc1.max + 1)).tolist()


def test_domain_follows_the_given_ranges(three_layer):
    cal = {"fc1": Interval([-3] * 4, [5] * 4)}
    s = schedule(three_layer, {**three_layer.worst_case_ranges(), **cal})
    assert s["act1"].domain.lo.tolist() == [-3] * 4 and s["act1"].domain.hi.tolist() == [5] * 4


@pytest.mark.parametrize("weight, bias, expected", [
    ([[2**24 - 1]], None, np.float32),
    ([[2**24 - 1]], [1], np.float64),
    ([[2**23, 2**23]], None, np.float64),  # partial sums count
    ([[2**52, 2**52]], None, np.int64),
])
def test_carrier_dtype(weight, bias, expected):
    n = len(weight[0])
    c = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 1, signed=False),
        Gemm("g", ("q",), weight, bias=bias),
        Dequantize("out", ("g",), 1.0, 0),
    ], n_features=n)
    assert carrier_dtype(c) is expected
    assert schedule(c).carrier is expected


def test_affine_shortcut_is_proven_or_refused():
    def circuit(fn):
        return Circuit([
            QuantizeInput("q", ("input",), 1.0, 0, 4),
            Gemm("g", ("q",), [[3, -1]]),
            TableLookup("t", ("g",), fn),
            Dequantize("out", ("t",), 1.0, 0),
        ], n_features=2)

    relu = schedule(circuit(_relu()))["t"]
    shortcut = relu.affine(np.float32)
    assert shortcut is not None and (shortcut.qmin, shortcut.qmax) == (0, 7)
    x = relu.domain.grid()
    y = np.clip(np.rint(x.astype(np.float32) * shortcut.ratio) + shortcut.zero_point, 0, 7)
    assert np.array_equal(y, relu.values())
    assert relu.affine(np.int64) is None  # never in an int64 carrier
    assert schedule(circuit(QuantActivation("sigmoid", 0.25, 0.1, n_bits=3)))["t"].affine(
        np.float32) is None
    # a ReLU whose zero point is not the lowest output differs from the clipped affine form
    shifted = QuantActivation("relu", 0.25, 1.0, output_zero_point=2, n_bits=3)
    assert schedule(circuit(shifted))["t"].affine(np.float32) is None
    assert schedule(circuit(ExplicitTable(np.arange(5))))["t"].affine(np.float32) is None


def test_table_limit_error_names_lookup_layer_and_remedy():
    c = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 8),
        Gemm("fc", ("q",), [[2**14, -(2**14)]]),
        TableLookup("act", ("fc",), QuantActivation("sigmoid", 2.0**-20, 0.1, n_bits=3)),
        Dequantize("out", ("act",), 0.1, 0),
    ], n_features=2)
    step = schedule(c)["act"]
    assert step.domain.entries > MAX_TABLE_ENTRIES and not step.fits
    with pytest.raises(ValueError, match=r"'act' \(layer 'fc'\).*table of \d+ entries "
                                         r"\(limit 4194304\).*with_rounding"):
        step.check_table_size()
    with pytest.raises(ValueError, match="with_rounding"):
        step.values()
    assert step.affine(np.float64) is None
    rounded = schedule(c.with_rounding(12))["act"]
    assert rounded.fits and rounded.lsbs == 12
    assert rounded.values().shape == (rounded.domain.entries, 1)


def test_input_range_check(mlp):
    lo, hi = mlp.input_quantizer.qrange
    s = schedule(mlp)
    q = np.array([[lo] * mlp.n_features, [hi] * mlp.n_features], dtype=np.int32)
    out = s.check_quantized(q)
    assert out.dtype == np.int64 and out.tolist() == q.tolist()
    with pytest.raises(ValueError, match=rf"must lie in \[{lo}, {hi}\] \(the input quantizer"):
        s.check_quantized(q + 1)
    with pytest.raises(InputTypeError, match="integer inputs") as info:
        s.check_quantized(q.astype(np.float64))
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match=rf"shape \(n_samples, {mlp.n_features}\)"):
        s.check_quantized(q[:, :-1])
    with pytest.raises(ValueError, match=r"\[0, 1\] \(compiled range\)"):
        check_quantized([[0, 2]], 2, (0, 1), reason="compiled range")
    assert check_quantized(np.zeros((0, 2), np.int64), 2, (0, 1)).shape == (0, 2)


def test_unknown_node_type_has_no_step():
    class Weird(Round):
        pass

    c = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 3),
        Weird("w", ("q",), lsbs=1),
        Dequantize("out", ("w",), 1.0, 0),
    ], n_features=1)
    assert isinstance(schedule(c)["w"], RoundStep)  # subclasses use their parent's step


def test_layers_are_typed(three_layer):
    layers = schedule(three_layer.with_rounding([1, 0])).layers
    first = layers[0]
    assert (first.gemm.name, first.round.name, first.lookup.name) == (
        "fc1", "act1.round", "act1")
    assert first.source is None and first.name == "fc1" and first.accumulator is first.gemm
    assert [n.name for n in first.members] == ["fc1", "act1.round", "act1"]
    assert layers[2].lookup is None and layers[2].name == "fc3"
    with pytest.raises(KeyError):
        layers[2]["tlu"]

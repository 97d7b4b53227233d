"""Tests of latentopt.ir.circuit: validation, report, with_rounding, layers, same_as."""

from __future__ import annotations

import numpy as np
import pytest

from latentopt.ir import (
    INPUT,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    Interval,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
    bit_width,
)


def Q(name="q", n_features=None, **kw):
    args = dict(scale=0.5, zero_point=0, n_bits=3)
    args.update(kw)
    return QuantizeInput(name, (INPUT,), **args)


def D(src, name="out", **kw):
    args = dict(scale=1.0, zero_point=0)
    args.update(kw)
    return Dequantize(name, (src,), **args)


# ------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "nodes, n_features, match",
    [
        (lambda: [Q(), D("q")], 0, "n_features"),
        (lambda: [Q()], 2, "at least"),
        (lambda: [], 2, "at least"),
        (lambda: [Gemm("g", (INPUT,), [[1, 1]]), D("g")], 2, "first node must be a QuantizeInput"),
        (lambda: [QuantizeInput("q", ("x",), 0.5, 0, 3), D("q")], 2, "first node"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1]])], 2, "last node must be a Dequantize"),
        (lambda: [Q(), Gemm("g", ("nope",), [[1, 1]]), D("g")], 2, "reads 'nope'"),
        (lambda: [Q(), Gemm("g", ("h",), [[1]]), Gemm("h", ("q",), [[1, 1]]), D("g")], 2,
         "before it is defined"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1]]), Gemm("g", ("g",), [[1]]), D("g")], 2,
         "unique"),
        (lambda: [Q(), Gemm("q", ("q",), [[1, 1]]), D("q")], 2, "unique"),
        (lambda: [Q(), Gemm("input", ("q",), [[1, 1]]), D("input")], 2, "'input'"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1, 1]]), D("g")], 2, "expects 3 inputs, gets 2"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1], [1, 1]]), Gemm("h", ("g",), [[1, 1, 1]]),
                  D("h")], 2, "expects 3 inputs, gets 2"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1], [2, 2]]),
                  TableLookup("t", ("g",), QuantActivation("relu", [1.0, 1.0, 1.0], 1.0, 3)),
                  D("t")], 2, "3 channel functions, not 2"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1]]),
                  TableLookup("t", ("g",), ExplicitTable(np.zeros((2, 4), dtype=int))),
                  D("t")], 2, "2 channel functions, not 1"),
        (lambda: [Q(scale=[0.5, 0.5, 0.5]), D("q")], 2, "scale has 3 entries"),
        (lambda: [Q(zero_point=[0]), D("q")], 2, "zero_point has 1 entries"),
        (lambda: [Q(), Gemm("g", ("q",), [[1, 1]]), D("g", scale=[1.0, 1.0])], 2,
         "scale has 2 entries"),
        (lambda: [Q(), Q("q2"), D("q2")], 2, "only the first node"),
        (lambda: [Q(), D("q", name="d1"), Gemm("g", ("q",), [[1, 1]]), D("g")], 2,
         "only the last node"),
    ],
)
def test_validation_errors(nodes, n_features, match):
    with pytest.raises(ValueError, match=match):
        Circuit(nodes(), n_features=n_features)


def test_minimal_circuit_and_accessors(mlp):
    assert len(mlp) == 5 and [n.name for n in mlp] == ["q", "fc1", "act1", "fc2", "out"]
    assert mlp["fc1"] is mlp.nodes[1]
    assert mlp.input_quantizer is mlp.nodes[0] and mlp.output is mlp.nodes[-1]
    assert (mlp.n_features, mlp.n_outputs) == (2, 1)
    assert [mlp.width(n) for n in ("input", "q", "fc1", "act1", "fc2", "out")] == [2, 2, 2, 2, 1, 1]
    assert [n.name for n in mlp.consumers("act1")] == ["fc2"]
    assert mlp.consumers("out") == []
    assert repr(mlp) == ("Circuit(n_features=2, nodes=[quantize_input:q, gemm:fc1, "
                         "table_lookup:act1, gemm:fc2, dequantize:out])")
    with pytest.raises(KeyError):
        mlp["nope"]


def test_metadata_and_calibration_are_copies(three_layer):
    md = three_layer.metadata
    md["source"] = "changed"
    assert three_layer.metadata == {"source": "conftest"}
    assert three_layer.calibration is None
    cal = {"fc1": Interval([0, 0, 0, 0], [1, 1, 1, 1])}
    c = three_layer.replace(calibration=cal)
    got = c.calibration
    got.clear()
    assert set(c.calibration) == {"fc1"}
    cal.clear()
    assert set(c.calibration) == {"fc1"}


def test_replace_keeps_or_drops_calibration(mlp):
    cal = {"fc1": Interval([-1, -1], [1, 1])}
    c = mlp.replace(calibration=cal, metadata={"a": 1})
    assert c.replace().calibration.keys() == {"fc1"}
    assert c.replace().metadata == {"a": 1}
    assert c.replace(calibration=None).calibration is None
    assert c.replace(metadata={"b": 2}).metadata == {"b": 2}
    assert c.same_as(mlp)


def test_worst_case_ranges_cached_copy(mlp):
    a = mlp.worst_case_ranges()
    a.pop("fc1")
    assert "fc1" in mlp.worst_case_ranges()


# ----------------------------------------------------------------------- report
def test_report_hand_checked(mlp):
    rep = mlp.report()
    assert rep.n_features == 2 and rep.input_bits == 3
    assert len(rep.layers) == 2
    l0, l1 = rep.layers
    assert l0 == {
        "layer": 0, "name": "fc1", "in_features": 2, "out_features": 2, "nonzero_weights": 3,
        "accumulator_bits": 5, "accumulator_bits_calibrated": None, "rounding_lsbs": 0,
        "tlu_input_bits": 5, "tlu_input_bits_calibrated": None, "tlu_count": 2,
        "output_bits": 2,
    }
    assert l1["accumulator_bits"] == 3 and l1["tlu_input_bits"] is None
    assert l1["tlu_count"] == 0 and l1["output_bits"] is None
    assert (rep.max_accumulator_bits, rep.max_tlu_input_bits, rep.tlu_count) == (5, 5, 2)
    text = str(rep)
    assert "acc_bits" in text and "fc1" in text and "TLUs/sample 2" in text
    assert "input: 2 features x 3 bits" in text


def test_report_with_rounding_hand_checked(mlp):
    # fc1 in [-12, 12]; rounding 2 LSBs -> [-12, 12] multiples of 4 -> [-3, 3] -> 3 bits
    rep = mlp.with_rounding(2).report()
    assert rep.layers[0]["rounding_lsbs"] == 2
    assert rep.layers[0]["accumulator_bits"] == 5
    assert rep.layers[0]["tlu_input_bits"] == 3
    # 4 LSBs: [-12, 12] -> [-16, 16] -> [-1, 1] -> 2 bits
    assert mlp.with_rounding(4).report().layers[0]["tlu_input_bits"] == 2
    # more LSBs than the accumulator has: still at least 1 bit
    assert mlp.with_rounding(9).report().layers[0]["tlu_input_bits"] >= 1


@pytest.mark.parametrize("seed", range(25))
def test_report_matches_ranges_on_random_circuits(seed, random_circuit):
    rng = np.random.default_rng(seed)
    c = random_circuit(rng)
    worst = c.worst_case_ranges()
    rep = c.report()
    gemms = [n for n in c.nodes if isinstance(n, Gemm)]
    assert [r["name"] for r in rep.layers] == [g.name for g in gemms]
    for row, g in zip(rep.layers, gemms):
        assert row["accumulator_bits"] == bit_width(worst[g.name].min, worst[g.name].max)
        assert row["nonzero_weights"] == int(np.count_nonzero(g.weight))
        tlus = [n for n in c.nodes if isinstance(n, TableLookup)
                and n.inputs[0] in (g.name, f"{g.name}.r")]
        if not tlus:
            assert row["tlu_input_bits"] is None and row["tlu_count"] == 0
            continue
        src = tlus[0].inputs[0]
        lsbs = c[src].lsbs if isinstance(c[src], Round) else 0
        assert row["rounding_lsbs"] == lsbs
        # the TLU sees x >> lsbs: brute-force width of that set of integers
        shifted = range(worst[src].min >> lsbs, (worst[src].max >> lsbs) + 1)
        assert row["tlu_input_bits"] == bit_width(min(shifted), max(shifted))
        assert row["tlu_count"] == g.out_features
    assert rep.tlu_count == sum(c.width(n.name) for n in c.nodes if isinstance(n, TableLookup))


def test_report_calibrated_columns(three_layer, reference_run, quantized_inputs):
    rng = np.random.default_rng(0)
    q = quantized_inputs(three_layer, rng, 100)
    values = reference_run(three_layer, q)
    cal = three_layer.with_calibration(values)
    assert set(cal.calibration) == set(values)
    rep = cal.report()
    for row in rep.layers:
        v = values[row["name"]]
        assert row["accumulator_bits_calibrated"] == bit_width(v.min(), v.max())
        assert row["accumulator_bits_calibrated"] <= row["accumulator_bits"]
    first = rep.layers[0]
    assert first["tlu_input_bits_calibrated"] == first["accumulator_bits_calibrated"]
    # with rounding: calibrated Round ranges are derived from the accumulators'
    rounded = cal.with_rounding(2)
    rrep = rounded.report()
    for row in rrep.layers[:2]:
        v = values[row["name"]]
        r = Round("r", ("x",), lsbs=2).apply(v)
        assert row["tlu_input_bits_calibrated"] == max(1, bit_width(r.min(), r.max()) - 2)
        iv = rounded.calibration[row["name"].replace("fc", "act") + ".round"]
        assert iv.lo.tolist() == r.min(axis=0).tolist() and iv.hi.tolist() == r.max(axis=0).tolist()
    assert rrep.layers[2]["tlu_input_bits_calibrated"] is None  # no TLU on the last layer
    assert "-" in str(rrep)  # missing values rendered as "-"


def test_with_calibration_ignores_unknown_and_dequantize(mlp):
    vals = {"fc1": np.array([[1, 2], [3, -4]]), "out": np.array([[1]]), "zzz": np.array([[0]])}
    c = mlp.with_calibration(vals)
    assert set(c.calibration) == {"fc1"}
    assert c.calibration["fc1"].to_list() == [[1, -4], [3, 2]]


# ---------------------------------------------------------------- with_rounding
def _rounds(c):
    return {n.name: n for n in c.nodes if isinstance(n, Round)}


def test_with_rounding_int(three_layer):
    c = three_layer.with_rounding(3, method="approximate")
    r = _rounds(c)
    assert set(r) == {"act1.round", "act2.round"}
    assert all(n.lsbs == 3 and n.method == "approximate" for n in r.values())
    assert c["act1.round"].inputs == ("fc1",) and c["act1"].inputs == ("act1.round",)
    assert c["act2.round"].inputs == ("fc2",) and c["act2"].inputs == ("act2.round",)
    order = [n.name for n in c.nodes]
    assert order.index("fc1") < order.index("act1.round") < order.index("act1")
    assert c.metadata == three_layer.metadata
    assert three_layer.with_rounding(np.int64(1)).report().layers[0]["rounding_lsbs"] == 1


def test_with_rounding_list_and_dict(three_layer):
    c = three_layer.with_rounding([0, 2])
    assert {k: v.lsbs for k, v in _rounds(c).items()} == {"act2.round": 2}
    assert c["act1"].inputs == ("fc1",)
    d = three_layer.with_rounding({"act1": 4})
    assert {k: v.lsbs for k, v in _rounds(d).items()} == {"act1.round": 4}
    assert [r["rounding_lsbs"] for r in d.report().layers] == [4, 0, 0]


def test_with_rounding_replaces_existing_and_zero_removes(three_layer):
    c = three_layer.with_rounding(2).with_rounding([1, 3])
    assert {k: v.lsbs for k, v in _rounds(c).items()} == {"act1.round": 1, "act2.round": 3}
    assert len(c) == len(three_layer) + 2
    removed = c.with_rounding(0)
    assert _rounds(removed) == {}
    assert removed.same_as(three_layer)
    # a hand-written Round node with another name is replaced as well
    nodes = list(three_layer.nodes)
    nodes.insert(2, Round("myround", ("fc1",), lsbs=5))
    nodes[3] = TableLookup("act1", ("myround",), fn=nodes[3].fn)
    custom = Circuit(nodes, 3)
    assert set(_rounds(custom.with_rounding(1))) == {"act1.round", "act2.round"}
    assert custom.with_rounding(0).same_as(three_layer)


def test_with_rounding_errors(three_layer):
    with pytest.raises(ValueError, match="unknown table lookups"):
        three_layer.with_rounding({"act9": 1})
    with pytest.raises(ValueError, match="unknown table lookups"):
        three_layer.with_rounding({"fc1": 1})
    with pytest.raises(ValueError, match="expected 2 rounding entries"):
        three_layer.with_rounding([1])
    with pytest.raises(ValueError, match="lsbs must be >= 0"):
        three_layer.with_rounding(-1)
    with pytest.raises(ValueError, match="lsbs must be >= 0"):
        three_layer.with_rounding({"act2": -2})
    with pytest.raises(ValueError, match="method"):
        three_layer.with_rounding(1, method="sloppy")


def test_with_rounding_semantics(three_layer, reference_run, quantized_inputs):
    """Rounded circuit computes TLU(round(acc)); lsbs=0 leaves integers unchanged."""
    rng = np.random.default_rng(1)
    q = quantized_inputs(three_layer, rng, 200)
    base = reference_run(three_layer, q)
    assert all(np.array_equal(base[k], v)
               for k, v in reference_run(three_layer.with_rounding(0), q).items())
    rounded = three_layer.with_rounding(2)
    vals = reference_run(rounded, q)
    assert np.array_equal(vals["fc1"], base["fc1"])
    expected_r = Round("r", ("x",), lsbs=2).apply(base["fc1"])
    assert np.array_equal(vals["act1.round"], expected_r)
    assert np.array_equal(vals["act1"], three_layer["act1"].fn(expected_r))
    assert not np.array_equal(vals["act1"], base["act1"])  # rounding really happened


def test_with_rounding_drops_stale_round_calibration(three_layer):
    cal = {"fc1": Interval([-9, -9, -9, -9], [9, 9, 9, 9]),
           "act1.round": Interval([-8, -8, -8, -8], [8, 8, 8, 8])}
    c = three_layer.with_rounding({"act1": 2}).replace(calibration=cal)
    c2 = c.with_rounding({"act1": 1})
    # recomputed from fc1, not the stale [-8, 8]: round1(-9) = -8, round1(9) = 10
    assert c2.calibration["act1.round"].to_list() == [[-8] * 4, [10] * 4]
    c3 = c.with_rounding(0)
    assert set(c3.calibration) == {"fc1"}


# -------------------------------------------------------------------- layers
def test_layers(three_layer):
    groups = three_layer.layers()
    assert [sorted(g) for g in groups] == [["gemm", "tlu"], ["gemm", "tlu"], ["gemm"]]
    assert [g["gemm"].name for g in groups] == ["fc1", "fc2", "fc3"]
    assert [g["tlu"].name for g in groups[:2]] == ["act1", "act2"]
    rounded = three_layer.with_rounding([1, 0]).layers()
    assert sorted(rounded[0]) == ["gemm", "round", "tlu"]
    assert rounded[0]["round"].name == "act1.round" and rounded[0]["tlu"].name == "act1"
    assert sorted(rounded[1]) == ["gemm", "tlu"]


# -------------------------------------------------------------------- same_as
def test_same_as(three_layer, make_mlp, make_three_layer):
    other = make_three_layer()
    assert three_layer.same_as(other)
    cal = other.replace(calibration={"fc1": Interval([0] * 4, [1] * 4)}, metadata={"x": 1})
    assert three_layer.same_as(cal)  # calibration and metadata are ignored
    assert not three_layer.same_as(three_layer.with_rounding(1))
    assert not three_layer.same_as(make_mlp())
    assert not three_layer.same_as("circuit")  # type: ignore[arg-type]
    nodes = list(three_layer.nodes)
    g = nodes[1]
    w = g.weight.copy()
    w[0, 0] += 1
    nodes[1] = Gemm(g.name, g.inputs, w, g.bias, g.input_zero_point)
    assert not three_layer.same_as(Circuit(nodes, 3))
    one = Circuit([Q(), D("q")], n_features=1)
    two = Circuit([Q(), D("q")], n_features=2)
    assert not one.same_as(two)

"""ONNX export: onnxruntime must reproduce the integer backend exactly."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from circuit_reference import reference_run

from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_export import OnnxRunner, circuit_to_onnx, save_onnx
from latentopt.ir import (
    ACTIVATIONS,
    Add,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)

CARRIERS = ("float32", "float64", "int64")


# ------------------------------------------------------------------ random circuits
def _random_fn(rng: np.random.Generator, width: int):
    if rng.random() < 0.7:
        names = ["relu", "sigmoid", "tanh", "gelu", str(rng.choice(sorted(ACTIVATIONS)))]
        act = names[int(rng.integers(len(names)))]
        ins = rng.uniform(0.01, 0.3, width) if rng.random() < 0.5 else rng.uniform(0.01, 0.3)
        outs = rng.uniform(0.05, 0.5, width) if rng.random() < 0.3 else rng.uniform(0.05, 0.5)
        signed = bool(rng.random() < 0.5)
        zp = 0 if signed else int(rng.integers(3))
        return QuantActivation(act, ins, outs, output_zero_point=zp, signed=signed,
                               n_bits=int(rng.integers(2, 5)), narrow=bool(rng.random() < 0.3))
    size = int(rng.integers(1, 12))
    shape = (width, size) if rng.random() < 0.5 else (size,)
    return ExplicitTable(rng.integers(-8, 9, shape), offset=int(rng.integers(-10, 5)))


def random_circuit(seed: int) -> Circuit:
    """Gemm [-> Round] -> TLU layers; sometimes a second lookup of the same value and an
    Add (the value is read by several nodes), or a skip Add of the accumulator."""
    rng = np.random.default_rng(seed)
    n_features = int(rng.integers(1, 6))
    signed = bool(rng.random() < 0.5)
    n_bits = int(rng.integers(2, 6))
    scale = rng.uniform(0.05, 1.0, n_features) if rng.random() < 0.5 else 0.3
    zp = 0 if signed else rng.integers(0, 2**n_bits, n_features)
    nodes: list = [QuantizeInput("q", ("input",), scale, zp, n_bits, signed=signed,
                                 narrow=bool(rng.random() < 0.3))]
    prev, width = "q", n_features
    n_layers = int(rng.integers(1, 4))
    for i in range(n_layers):
        out = int(rng.integers(1, 6))
        bias = rng.integers(-20, 21, out) if rng.random() < 0.7 else None
        nodes.append(Gemm(f"fc{i}", (prev,), rng.integers(-3, 4, (out, width)), bias,
                          int(rng.integers(-2, 3))))
        prev = src = f"fc{i}"
        width = out
        if i == n_layers - 1:
            break
        if rng.random() < 0.5:
            method = "exact" if rng.random() < 0.5 else "approximate"
            nodes.append(Round(f"fc{i}.r", (src,), lsbs=int(rng.integers(0, 4)), method=method))
            src = f"fc{i}.r"
        nodes.append(TableLookup(f"act{i}", (src,), fn=_random_fn(rng, width)))
        prev = f"act{i}"
        if rng.random() < 0.3:
            nodes.append(TableLookup(f"alt{i}", (src,), fn=_random_fn(rng, width)))
            nodes.append(Add(f"sum{i}", (prev, f"alt{i}")))
            prev = f"sum{i}"
        elif rng.random() < 0.2:
            nodes.append(Add(f"skip{i}", (f"fc{i}", prev)))
            prev = f"skip{i}"
    nodes.append(Dequantize("out", (prev,), scale=rng.uniform(0.1, 1.0, width),
                            zero_point=rng.integers(-2, 3, width)))
    return Circuit(nodes, n_features)


def float_inputs(circuit: Circuit, n: int, seed: int = 0) -> np.ndarray:
    """Normal features spanning the quantizer range and well beyond it (clipping)."""
    rng = np.random.default_rng(seed)
    q = circuit.input_quantizer
    lo, hi = q.qrange
    span = np.broadcast_to(q.scale * (hi - lo), (circuit.n_features,))
    X = rng.normal(0, 1, (n, circuit.n_features)) * span
    extremes = np.array([np.inf, -np.inf, 1e6, -1e6])
    X[: min(n, 4) // 2] = extremes[rng.integers(0, 4, (min(n, 4) // 2, circuit.n_features))]
    return X


def assert_matches_backend(circuit: Circuit, runner: OnnxRunner, X: np.ndarray) -> None:
    backend = IntegerBackend(circuit)
    out, ints = runner.run(X)
    assert ints.dtype == np.int64 and out.dtype == np.float64
    assert np.array_equal(ints, backend.run_integers(backend.quantize(X)))
    assert np.array_equal(out, backend.predict(X))
    assert np.array_equal(runner.predict(X), out)
    q = backend.quantize(X)
    assert np.array_equal(runner.run_integers(q), ints)


def _has_add(circuit: Circuit) -> bool:
    return any(isinstance(n, Add) for n in circuit.nodes)


# -------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("lookup", ["auto", "gather"])
def test_random_circuits_match_integer_backend(seed, lookup):
    circuit = random_circuit(seed)
    model = circuit_to_onnx(circuit, lookup=lookup)
    onnx.checker.check_model(model, full_check=True)
    runner = OnnxRunner(model)
    for n in (1, 3, 257):
        assert_matches_backend(circuit, runner, float_inputs(circuit, n, seed=seed + n))
    if not _has_add(circuit):  # independent Python-int reference of the node semantics
        lo, hi = circuit.input_quantizer.qrange
        corners = np.array(list(itertools.product([lo, hi], repeat=circuit.n_features)))
        ref = reference_run(circuit, corners)[circuit.output.inputs[0]]
        assert np.array_equal(runner.run_integers(corners), ref)


def test_random_circuits_cover_the_features():
    """The generator above does produce what the brief asks to test."""
    circuits = [random_circuit(s) for s in range(40)]
    nodes = [n for c in circuits for n in c.nodes]
    fns = [n.fn for n in nodes if isinstance(n, TableLookup)]
    assert any(isinstance(n, Add) for n in nodes)
    assert any(isinstance(n, Round) and n.lsbs > 0 and n.method == "approximate" for n in nodes)
    assert any(isinstance(n, Round) and n.lsbs > 0 and n.method == "exact" for n in nodes)
    assert any(isinstance(f, ExplicitTable) and f.n_channels for f in fns)
    assert any(isinstance(f, ExplicitTable) and f.n_channels is None for f in fns)
    assert any(isinstance(f, QuantActivation) and f.n_channels for f in fns)
    assert {"relu", "sigmoid", "tanh", "gelu"} <= {
        f.activation for f in fns if isinstance(f, QuantActivation)
    }
    assert {c.input_quantizer.signed for c in circuits} == {True, False}
    assert any(np.any(c.input_quantizer.zero_point) for c in circuits)
    assert any(len(c.consumers(n.name)) > 1 for c in circuits for n in c.nodes)


@pytest.mark.parametrize("seed", range(8))
def test_every_exact_carrier_gives_the_same_integers(seed):
    circuit = random_circuit(100 + seed)
    X = float_inputs(circuit, 64, seed)
    expected = IntegerBackend(circuit).predict(X)
    for carrier in CARRIERS:
        model = circuit_to_onnx(circuit, carrier=carrier)
        assert {p.key: p.value for p in model.metadata_props}["latentopt.carrier"] == carrier
        assert np.array_equal(OnnxRunner(model).predict(X), expected)


def _wide_circuit(weight_bits: int, lsbs: int) -> Circuit:
    """Accumulators of about ``weight_bits + 9`` bits, rounded before the lookups."""
    rng = np.random.default_rng(weight_bits)
    w = rng.integers(-(2**weight_bits), 2**weight_bits, (5, 4))
    return Circuit([
        QuantizeInput("q", ("input",), 0.1, 0, 8, signed=True),
        Gemm("fc0", ("q",), w, bias=rng.integers(-(2**weight_bits), 2**weight_bits, 5)),
        Round("fc0.r", ("fc0",), lsbs=lsbs),
        TableLookup("act0", ("fc0.r",), QuantActivation(
            "gelu", rng.uniform(0.5, 2, 5) * 2.0**-lsbs, 0.3, n_bits=4, signed=True)),
        TableLookup("tab", ("fc0",), ExplicitTable(rng.integers(-5, 6, (5, 9)), offset=-4)),
        Add("sum", ("act0", "tab")),
        Gemm("fc1", ("sum",), rng.integers(-3, 4, (2, 5)), input_zero_point=1),
        Dequantize("out", ("fc1",), scale=0.5, zero_point=0),
    ], n_features=4)


def reference_with_add(circuit: Circuit, q: np.ndarray) -> np.ndarray:
    """Output integers from the node definitions in Python ints (``reference_run``,
    which predates :class:`Add`, extended with it)."""
    vals = {circuit.nodes[0].name: np.asarray(q).astype(object)}
    for node in circuit.nodes[1:-1]:
        x = vals[node.inputs[0]]
        if isinstance(node, Add):
            vals[node.name] = x + vals[node.inputs[1]]
        elif isinstance(node, Gemm):
            acc = (x - node.input_zero_point) @ node.weight.T.astype(object)
            vals[node.name] = acc if node.bias is None else acc + node.bias.astype(object)
        elif isinstance(node, Round):
            step = 1 << node.lsbs
            vals[node.name] = ((x + step // 2) // step) * step if node.lsbs else x
        else:
            vals[node.name] = node.fn(x.astype(np.int64)).astype(object)
    return vals[circuit.output.inputs[0]].astype(np.int64)


@pytest.mark.parametrize(("weight_bits", "carrier"), [(10, "float32"), (20, "float64"),
                                                      (46, "int64")])
def test_wide_accumulators_pick_an_exact_carrier(weight_bits, carrier):
    circuit = _wide_circuit(weight_bits, lsbs=weight_bits + 2)
    model = circuit_to_onnx(circuit)
    assert {p.key: p.value for p in model.metadata_props}["latentopt.carrier"] == carrier
    assert IntegerBackend(circuit).dtype is np.dtype(carrier).type
    runner = OnnxRunner(model)
    backend = IntegerBackend(circuit)
    q = backend.quantize(float_inputs(circuit, 300))
    values = backend.run_integers(q, return_all=True)[1]
    assert np.abs(values["fc0"]).max() > 2 ** (weight_bits + 5)  # really that wide
    assert np.array_equal(runner.run_integers(q), reference_with_add(circuit, q))
    assert np.array_equal(runner.run(float_inputs(circuit, 300))[1],
                          reference_with_add(circuit, q))
    for other in CARRIERS[: CARRIERS.index(carrier)]:
        with pytest.raises(ValueError, match="not exact"):
            circuit_to_onnx(circuit, carrier=other)


@pytest.mark.parametrize("weight_bits", [10, 20, 46])
def test_wide_accumulators_match_integer_backend(weight_bits):
    circuit = _wide_circuit(weight_bits, lsbs=weight_bits + 2)
    if weight_bits == 46:  # beyond 2**53: tables once came out one entry short
        q = IntegerBackend(circuit).quantize(float_inputs(circuit, 300))
        np.testing.assert_array_equal(IntegerBackend(circuit).run_integers(q),
                                      reference_with_add(circuit, q))
    assert_matches_backend(circuit, OnnxRunner(circuit), float_inputs(circuit, 300))


@pytest.mark.parametrize("carrier", CARRIERS)
def test_round_of_negative_values_is_floor_based(carrier):
    """Round half up, also below zero: -6 -> -4, -5 -> -4, -7 -> -8 for lsbs=2."""
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 6, signed=True),
        Round("r", ("q",), lsbs=2, method="approximate"),
        Round("r0", ("r",), lsbs=0),
        Dequantize("out", ("r0",), 1.0, 0),
    ], n_features=1)
    q = np.arange(-32, 32)[:, None]
    out = OnnxRunner(circuit_to_onnx(circuit, carrier=carrier)).run_integers(q)
    assert np.array_equal(out[:, 0], ((q[:, 0] + 2) // 4) * 4)
    assert out[q[:, 0] == -6, 0] == -4 and out[q[:, 0] == -7, 0] == -8
    assert out[q[:, 0] == -5, 0] == -4 and out[q[:, 0] == -2, 0] == 0


def test_quantizer_ties_and_float32_division():
    """Half-way values round to even, and the division happens in float32."""
    scale = np.array([0.1, 0.3, 0.7])
    circuit = Circuit([QuantizeInput("q", ("input",), scale, [3, 0, 5], 5, signed=False),
                       Dequantize("out", ("q",), scale, [3, 0, 5])], n_features=3)
    k = np.arange(-40, 40)[:, None]
    s32 = scale.astype(np.float32)
    X = np.concatenate([(k + 0.5) * s32, (k + 0.5) * scale, k * scale + 1e-9])
    runner = OnnxRunner(circuit)
    assert_matches_backend(circuit, runner, X)
    # ties really occur and go to even (not all away from zero)
    ties = runner.run(((k + 0.5) * s32).astype(np.float32))[1] - [3, 0, 5]
    inner = (k[:, 0] > -3) & (k[:, 0] < 3)
    assert np.array_equal(ties[inner, 0], np.rint(k[inner, 0] + 0.5).astype(np.int64))


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_lookup_modes():
    """ReLU requantization: affine in "auto" mode, gathered in "gather" mode; a sigmoid
    is always gathered.  Both give the backend's integers."""
    relu = Circuit([
        QuantizeInput("q", ("input",), 0.1, 0, 6),
        Gemm("fc", ("q",), [[1, -2, 3], [2, 2, -1]], bias=[3, -4]),
        Round("fc.r", ("fc",), lsbs=2),
        TableLookup("act", ("fc.r",), QuantActivation("relu", [0.01, 0.02], 0.1, n_bits=3)),
        Dequantize("out", ("act",), 0.1, 0),
    ], n_features=3)
    sigmoid = relu.replace(nodes=[*relu.nodes[:3], TableLookup("act", ("fc.r",), QuantActivation(
        "sigmoid", [0.01, 0.02], 0.1, n_bits=3)), relu.nodes[-1]])
    X = float_inputs(relu, 300)
    auto, gather = circuit_to_onnx(relu), circuit_to_onnx(relu, lookup="gather")
    assert "GatherElements" not in _ops(auto) and "GatherElements" in _ops(gather)
    assert "GatherElements" in _ops(circuit_to_onnx(sigmoid))
    for model in (auto, gather):
        assert_matches_backend(relu, OnnxRunner(model), X)
    assert_matches_backend(sigmoid, OnnxRunner(sigmoid), X)
    with pytest.raises(ValueError, match="lookup"):
        circuit_to_onnx(relu, lookup="affine")


def test_index_falls_back_to_int64_when_float_is_inexact():
    """An explicit-table offset float32 cannot hold: the index is computed in int64."""
    offset = -(2**25 + 1)
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 4),
        Gemm("fc", ("q",), [[1, 1]], bias=[-offset - 3]),
        TableLookup("tab", ("fc",), ExplicitTable(np.arange(10) * 3 - 7, offset=offset)),
        Dequantize("out", ("tab",), 1.0, 0),
    ], n_features=2)
    assert IntegerBackend(circuit).dtype is np.float64  # the bias alone exceeds 2**24
    for carrier, index_type in (("float64", onnx.TensorProto.DOUBLE),
                                ("int64", onnx.TensorProto.INT64)):
        model = circuit_to_onnx(circuit, carrier=carrier)
        inits = {t.name: t for t in model.graph.initializer}
        assert inits["tab/offset"].data_type == index_type
        assert_matches_backend(circuit, OnnxRunner(model), float_inputs(circuit, 200))
    small = Circuit([*circuit.nodes[:1], Gemm("fc", ("q",), [[1, 1]], bias=[5]),
                     TableLookup("tab", ("fc",), ExplicitTable(np.arange(10), offset=offset)),
                     circuit.nodes[-1]], n_features=2)
    model = circuit_to_onnx(small)
    assert {t.name: t for t in model.graph.initializer}["tab/offset"].data_type == (
        onnx.TensorProto.INT64)
    assert_matches_backend(small, OnnxRunner(model), float_inputs(small, 200))


def test_backend_fixture_circuits(make_mlp, make_table_circuit):
    for circuit in (make_mlp(seed=3), make_table_circuit(seed=4)):
        runner = OnnxRunner(circuit_to_onnx(circuit))
        assert_matches_backend(circuit, runner, float_inputs(circuit, 500))


def test_save_load_round_trip(tmp_path):
    circuit = random_circuit(7)
    X = float_inputs(circuit, 100)
    path = save_onnx(circuit, tmp_path / "model.onnx")
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.producer_name == "latentopt"
    assert [i.name for i in loaded.graph.input] == ["input"]
    assert [o.name for o in loaded.graph.output] == ["output", "output_integers"]
    assert_matches_backend(circuit, OnnxRunner(path), X)
    assert_matches_backend(circuit, OnnxRunner(loaded.SerializeToString()), X)


def test_integer_input_model(tmp_path):
    circuit = random_circuit(11)
    model = circuit_to_onnx(circuit, integer_input=True)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input_integers"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert not any(n.op_type in ("Div", "Round") for n in model.graph.node[:3])
    path = tmp_path / "int.onnx"
    onnx.save_model(model, path)
    runner = OnnxRunner(path)
    backend = IntegerBackend(circuit)
    q = backend.quantize(float_inputs(circuit, 200))
    assert np.array_equal(runner.run_integers(q), backend.run_integers(q))
    with pytest.raises(ValueError, match="integer_input"):
        runner.predict(np.zeros((1, circuit.n_features)))


def test_fixed_batch_and_opset():
    circuit = random_circuit(5)
    model = circuit_to_onnx(circuit, batch=4, opset=13)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, circuit.n_features]
    assert_matches_backend(circuit, OnnxRunner(model), float_inputs(circuit, 4))


def test_empty_batch():
    circuit = random_circuit(2)
    out = OnnxRunner(circuit).predict(np.zeros((0, circuit.n_features)))
    assert out.shape == (0, circuit.n_outputs)


def test_clear_errors():
    circuit = random_circuit(3)
    runner = OnnxRunner(circuit)
    lo, hi = circuit.input_quantizer.qrange
    with pytest.raises(ValueError, match="NaN"):
        runner.predict(np.full((2, circuit.n_features), np.nan))
    with pytest.raises(ValueError, match="shape"):
        runner.predict(np.zeros((2, circuit.n_features + 1)))
    with pytest.raises(ValueError, match="must lie in"):
        runner.run_integers(np.full((2, circuit.n_features), hi + 1))
    with pytest.raises(TypeError, match="integer"):
        runner.run_integers(np.zeros((2, circuit.n_features)))
    with pytest.raises(ValueError, match="opset"):
        circuit_to_onnx(circuit, opset=9)
    with pytest.raises(ValueError, match="carrier"):
        circuit_to_onnx(circuit, carrier="int32")
    with pytest.raises(ValueError, match="batch"):
        circuit_to_onnx(circuit, batch=0)


def test_runner_refuses_what_is_not_a_latentopt_export(tmp_path):
    from onnx import TensorProto, helper

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not an ONNX model"):
        OnnxRunner(empty)
    with pytest.raises(ValueError, match="not an ONNX model"):
        OnnxRunner(b"\xffnot onnx")
    with pytest.raises(TypeError, match="path"):
        OnnxRunner(None)
    foreign = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])]))
    for model in (foreign, foreign.SerializeToString()):
        with pytest.raises(ValueError, match="not a latentopt export") as info:
            OnnxRunner(model)
        assert "integer_input" not in str(info.value)
        assert "'output_integers'" in str(info.value)  # says what it expects


def test_runner_argument_errors():
    circuit = random_circuit(3)
    with pytest.raises(ValueError, match="intra_op_num_threads"):
        OnnxRunner(circuit, intra_op_num_threads=-1)
    with pytest.raises(TypeError, match="intra_op_num_threads"):
        OnnxRunner(circuit, intra_op_num_threads=2.5)
    assert OnnxRunner(circuit, intra_op_num_threads=np.int64(1)).run(
        np.zeros((1, circuit.n_features)))[1].shape == (1, circuit.n_outputs)


def test_opset_range_is_the_documented_one():
    circuit = random_circuit(3)
    X = float_inputs(circuit, 10)
    assert_matches_backend(circuit, OnnxRunner(circuit_to_onnx(circuit, opset=26)), X)
    for opset in (12, 27, 28):
        with pytest.raises(ValueError, match=r"opset must be in \[13, 26\]"):
            circuit_to_onnx(circuit, opset=opset)
    with pytest.raises(TypeError, match="opset"):
        circuit_to_onnx(circuit, opset="17")


def test_nan_features_are_refused_by_the_runner_not_by_a_raw_session():
    import onnxruntime as ort

    circuit = random_circuit(3)
    X = np.zeros((3, circuit.n_features), np.float32)
    X[1, 0] = np.nan
    session = ort.InferenceSession(circuit_to_onnx(circuit).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    _, ints = session.run(None, {"input": X})  # no error: the documented hazard
    assert ints.shape == (3, circuit.n_outputs)
    with pytest.raises(ValueError, match="NaN"):
        OnnxRunner(circuit).predict(X)


def test_huge_lookup_domain_is_refused_with_advice():
    """A sigmoid of a 30-bit accumulator cannot be tabulated; rounding makes it fit."""
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, 8),
        Gemm("fc", ("q",), [[2**22, -(2**22)]]),
        TableLookup("act", ("fc",), QuantActivation("sigmoid", 2.0**-24, 0.1, n_bits=3)),
        Dequantize("out", ("act",), 0.1, 0),
    ], n_features=2)
    with pytest.raises(ValueError, match=r"4194304.*compile\(rounding_bits=") as info:
        circuit_to_onnx(circuit)
    assert "with_rounding" not in str(info.value)  # the user-facing remedy, not the IR's
    rounded = circuit.with_rounding(20, method="approximate")
    assert_matches_backend(rounded, OnnxRunner(rounded), float_inputs(rounded, 200))


# ------------------------------------------------------------- trained estimator
@pytest.fixture(scope="module")
def trained_breast_cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    from latentopt import QuantizedMLPClassifier

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    est = QuantizedMLPClassifier(hidden_layer_sizes=(8,), max_epochs=3, verbose=0,
                                 random_state=0).fit(X, y)
    return est, X


def test_trained_estimator_circuits(trained_breast_cancer, tmp_path):
    est, X = trained_breast_cancer
    X_far = np.concatenate([X, 10 * X[:50], X[:1]])  # outside the calibrated range too
    plain = est.circuit_
    assert_matches_backend(plain, OnnxRunner(save_onnx(plain, tmp_path / "plain.onnx")), X_far)
    est.compile(rounding_bits=4, p_error=0.01)
    rounded = est.active_circuit_
    assert any(isinstance(n, Round) and n.lsbs > 0 for n in rounded.nodes)
    runner = OnnxRunner(rounded)
    assert_matches_backend(rounded, runner, X_far)
    assert_matches_backend(rounded, runner, X_far[:1])
    # the rounding does change some integers, so equality above is not vacuous
    assert not np.array_equal(runner.run(X)[1], OnnxRunner(plain).run(X)[1])
    # the estimator's own export writes the circuit its predictions run
    assert_matches_backend(rounded, OnnxRunner(est.to_onnx(tmp_path / "est.onnx")), X_far)

"""Tests of latentopt.backends.fhe: lowering exactness, errors, report, execution.

Exactness contract: with no rounding or exact rounding and a tiny p_error, FHE
simulation reproduces ``IntegerBackend.run_integers`` bit for bit; real execution
(``@pytest.mark.fhe``, tiny circuits, cached insecure keys) reproduces simulation.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from latentopt.backends.fhe import (
    FHEBitWidthError,
    FHECircuit,
    FHEParametersError,
    plan_calls,
)
from latentopt.backends.integer import IntegerBackend
from latentopt.ir import (
    Circuit,
    Dequantize,
    Gemm,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)

TINY_P = 2.0**-40


def compile_(circuit: Circuit, q: np.ndarray, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("p_error", TINY_P)
    return FHECircuit.compile(circuit, q, **kw)


# ----------------------------------------------------------------- exactness
@pytest.mark.parametrize("rounding", [None, 1, 2, {"act1": 3}])
@pytest.mark.parametrize("range_mode", ["calibrated", "worst_case"])
def test_simulation_equals_integer_backend(make_mlp, sample_q, rounding, range_mode):
    circuit = make_mlp()
    if rounding is not None:
        circuit = circuit.with_rounding(rounding, "exact")
    q_cal = sample_q(circuit, 300, seed=1)
    fc = compile_(circuit, q_cal, range_mode=range_mode, batch_size=8)
    # calibrated: exact on the calibration data; worst case: on any input in range
    q = q_cal if range_mode == "calibrated" else sample_q(circuit, 300, seed=2)
    expected = IntegerBackend(circuit).run_integers(q)
    np.testing.assert_array_equal(fc.simulate(q), expected)
    # odd sizes go through single-sample and padded calls: same integers
    np.testing.assert_array_equal(fc.simulate(q[:5]), expected[:5])
    np.testing.assert_array_equal(fc.simulate(q[:1]), expected[:1])


def test_per_channel_tables_and_lookup_on_raw_input(make_table_circuit, sample_q):
    circuit = make_table_circuit()
    q = sample_q(circuit, 200)
    expected = IntegerBackend(circuit).run_integers(q)
    for mode in ("calibrated", "worst_case"):
        fc = compile_(circuit, q, range_mode=mode, batch_size=4)
        np.testing.assert_array_equal(fc.simulate(q), expected)


def test_worst_case_is_exact_beyond_calibration(make_mlp, sample_q):
    circuit = make_mlp(seed=3).with_rounding(1, "exact")
    narrow = np.random.default_rng(0).integers(0, 2, (50, circuit.n_features))  # 0 and 1 only
    wide = sample_q(circuit, 300, seed=4)
    fc = compile_(circuit, narrow, range_mode="worst_case", batch_size=8)
    np.testing.assert_array_equal(fc.simulate(wide), IntegerBackend(circuit).run_integers(wide))
    cal = compile_(circuit, narrow, range_mode="calibrated", batch_size=8)
    np.testing.assert_array_equal(cal.simulate(narrow),
                                  IntegerBackend(circuit).run_integers(narrow))
    # calibration saw fewer values: never wider lookups than the worst case
    assert cal.report["max_tlu_input_bits"] < fc.report["max_tlu_input_bits"]
    # inputs unlike the calibration data are flagged; the others are exact
    inside = wide[(wide >= 0).all(axis=1)]
    flagged = cal.overflows(inside)
    assert flagged.any() and not cal.overflows(narrow).any() and not fc.overflows(wide).any()
    np.testing.assert_array_equal(cal.simulate(inside[~flagged]),
                                  IntegerBackend(circuit).run_integers(inside[~flagged]))
    with pytest.raises(ValueError, match="range this FHE circuit was compiled for"):
        cal.simulate(np.full((1, circuit.n_features), -4))  # negative: not encryptable


def test_centring_saves_bits_and_stays_exact():
    """Channels in [-120, -60] and [60, 120]: 8 signed bits in the IR, 6 once centred."""
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, n_bits=2, signed=False),
        Gemm("fc1", ("q",), [[20, 0], [0, 20]], bias=[-120, 60]),
        TableLookup("act", ("fc1",), QuantActivation("relu", 0.1, 1.0, n_bits=4)),
        Dequantize("out", ("act",), 1.0, 0),
    ], n_features=2)
    q = np.array([[a, b] for a in range(4) for b in range(4)])
    fc = compile_(circuit, q, range_mode="worst_case", batch_size=4)
    assert circuit.report().layers[0]["tlu_input_bits"] == 8
    assert fc.report["layers"][0]["tlu_input_bits"] == 6
    assert fc.report["max_bit_width"] <= 6
    np.testing.assert_array_equal(fc.simulate(q), IntegerBackend(circuit).run_integers(q))


def test_the_report_says_what_concrete_allocates_per_layer():
    """A lopsided product: x0 * 30 - x1 * 10 in [-30, 90] needs 8 signed bits before the
    bias that centres it to [0, 120] (7 bits); concrete gives both one width."""
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, n_bits=2, signed=False),
        Gemm("fc1", ("q",), [[30, -10]], bias=[-30]),
        TableLookup("act", ("fc1",), QuantActivation("relu", 0.1, 1.0, n_bits=3)),
        Gemm("fc2", ("act",), [[1]]),
        Dequantize("out", ("fc2",), 1.0, 0),
    ], n_features=2)
    q = np.array([[a, b] for a in range(4) for b in range(4)])
    fc = compile_(circuit, q, range_mode="worst_case", batch_size=4)
    first, last = fc.report["layers"]
    assert first["accumulator_bits"] == 7
    assert first["compiled_bits"] == 8 == fc.report["max_bit_width"]
    assert last["compiled_bits"] <= 8
    np.testing.assert_array_equal(fc.simulate(q), IntegerBackend(circuit).run_integers(q))


def test_calibrated_bounds_follow_the_centred_values():
    """Raw extremes at one sample, centred extremes at another: both must be traced.

    fc: ch0 = 4 x0 in [0, 12], ch1 = 8 x1 - 40 in [-40, -16].  Raw min and max are both
    reached at x = (3, 0), the centred max of ch1 (24, 5 bits) at x = (0, 3).  Tracing
    only the former gives a 4-bit accumulator, and rounding it then goes wrong.
    """
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, n_bits=2, signed=False),
        Gemm("fc", ("q",), [[4, 0], [0, 8]], bias=[0, -40]),
        TableLookup("act", ("fc",), QuantActivation("identity", 1.0, 1.0, n_bits=7,
                                                    signed=True)),
        Dequantize("out", ("act",), 1.0, 0),
    ], n_features=2).with_rounding(2, "exact")
    q = np.array([[3, 0], [0, 3], [1, 1], [2, 2]])
    fc = compile_(circuit, q, range_mode="calibrated", batch_size=2)
    assert fc.report["layers"][0]["accumulator_bits"] == 5
    assert fc.report["layers"][0]["tlu_input_bits"] == 3
    np.testing.assert_array_equal(fc.simulate(q), IntegerBackend(circuit).run_integers(q))


def _random_circuit(seed: int) -> Circuit:
    """Gemm [-> exact Round] -> lookup, twice, then a gemm; random shapes and functions."""
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, 4))
    nodes: list = [QuantizeInput("q", ("input",), 0.5, rng.integers(0, 4, width), n_bits=2,
                                 signed=bool(rng.random() < 0.5))]
    prev = "q"
    for i in range(3):
        out = int(rng.integers(1, 4)) if i < 2 else 2
        zp = int(rng.integers(-1, 2))
        nodes.append(Gemm(f"fc{i}", (prev,), rng.integers(-3, 4, (out, width)),
                          bias=rng.integers(-9, 10, out), input_zero_point=zp))
        prev, width = f"fc{i}", out
        if i == 2:
            break
        if rng.random() < 0.6:
            nodes.append(Round(f"r{i}", (prev,), lsbs=int(rng.integers(1, 4))))
            prev = f"r{i}"
        act = str(rng.choice(["relu", "tanh", "gelu", "identity"]))
        nodes.append(TableLookup(f"act{i}", (prev,), QuantActivation(
            act, rng.uniform(0.05, 0.3, width), 0.3, n_bits=3, signed=act != "relu")))
        prev = f"act{i}"
    nodes.append(Dequantize("out", (prev,), 1.0, 0))
    return Circuit(nodes, n_features=int(nodes[0].zero_point.size))


@pytest.mark.parametrize("seed", range(4))
def test_random_circuits_are_exact(seed, sample_q):
    circuit = _random_circuit(seed)
    q = sample_q(circuit, 100, seed=seed)
    expected = IntegerBackend(circuit).run_integers(q)
    for mode in ("calibrated", "worst_case"):
        fc = compile_(circuit, q if mode == "calibrated" else q[:5], range_mode=mode,
                      batch_size=4)
        np.testing.assert_array_equal(fc.simulate(q), expected)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, match", [
    ({"p_error": 0.01, "global_p_error": 0.01}, "at most one"),
    ({"p_error": 0.0}, "p_error must be a probability"),
    ({"global_p_error": 1.0}, "global_p_error must be a probability"),
    ({"security_level": 100}, "security_level"),
    ({"range_mode": "optimistic"}, "range_mode"),
    ({"batch_size": 0}, "batch_size"),
    # silently coerced before: 2.7 -> 2, True -> 1, "4" -> 4
    ({"batch_size": 2.7}, "batch_size must be None or an int"),
    ({"batch_size": True}, "batch_size must be None or an int"),
    ({"batch_size": "4"}, "batch_size must be None or an int"),
    ({"security_level": 128.0}, "security_level"),
    ({"parameter_strategy": "norm2"}, "parameter_strategy"),
])
def test_invalid_options(make_mlp, sample_q, kwargs, match):
    circuit = make_mlp()
    with pytest.raises(ValueError, match=match):
        FHECircuit.compile(circuit, sample_q(circuit, 10), **kwargs)


def test_numpy_probabilities_are_taken(make_mlp, sample_q):
    circuit = make_mlp()  # np.float32(0.01) was "not a probability in (0, 1)"
    fc = FHECircuit.compile(circuit, sample_q(circuit, 10), p_error=np.float32(0.01))
    assert 0 < fc.report["p_error"] <= 0.01  # (what concrete reached)


def test_invalid_inputset(make_mlp):
    circuit = make_mlp()
    with pytest.raises(TypeError, match="integer"):
        FHECircuit.compile(circuit, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="shape"):
        FHECircuit.compile(circuit, np.zeros((3, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="quantizer's range"):
        FHECircuit.compile(circuit, np.full((3, 4), 9))


def _wide_circuit() -> Circuit:
    """A 4-bit input times 4096: 18-bit accumulators."""
    return Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, n_bits=4, signed=False),
        Gemm("dense", ("q",), [[4096, 4096, 4096]]),
        TableLookup("act", ("dense",), QuantActivation("relu", 2.0**-12, 1.0, n_bits=3)),
        Dequantize("out", ("act",), 1.0, 0),
    ], n_features=3)


def test_too_wide_lookup_names_layer_and_suggests_rounding(sample_q):
    circuit = _wide_circuit()
    q = sample_q(circuit, 50)
    with pytest.raises(FHEBitWidthError, match=r"'dense'.*'act'.*18 bits.*with_rounding"):
        compile_(circuit, q, range_mode="worst_case")
    rounded = circuit.with_rounding(12, "approximate")  # 18 - 12 = 6-bit lookup
    fc = compile_(rounded, q, range_mode="worst_case", batch_size=2)
    assert fc.report["layers"][0]["tlu_input_bits"] == 6
    assert fc.report["max_bit_width"] >= 18  # the accumulator itself stays wide


def test_no_parameters_is_a_clear_error():
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, n_bits=8, signed=False),
        Gemm("dense", ("q",), [[255]]),  # a 16-bit lookup
        TableLookup("act", ("dense",), QuantActivation("relu", 2.0**-13, 1.0, n_bits=3)),
        Dequantize("out", ("act",), 1.0, 0),
    ], n_features=1)
    q = np.arange(256).reshape(-1, 1)
    with pytest.raises(FHEParametersError, match="p_error"):
        compile_(circuit, q, p_error=1e-300, range_mode="worst_case", batch_size=1)


def test_simulate_validates_inputs(make_mlp, sample_q):
    circuit = make_mlp()
    fc = compile_(circuit, sample_q(circuit, 50), range_mode="worst_case", batch_size=2)
    with pytest.raises(TypeError):
        fc.simulate(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="shape"):
        fc.simulate(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[-4, 3\]"):
        fc.simulate(np.full((2, 4), 4))


# ---------------------------------------------------------------------- report
def test_report_counts_and_costs(make_mlp, sample_q):
    circuit = make_mlp(hidden=5)
    q = sample_q(circuit, 100)
    plain = compile_(circuit, q, range_mode="worst_case", batch_size=4)
    rep = plain.report
    assert rep["programmable_bootstrap_count"] == 5  # one PBS per lookup
    assert [row["pbs"] for row in rep["layers"]] == [5, 0]
    assert rep["layers"][0]["tlu_input_bits"] == rep["max_tlu_input_bits"]
    assert rep["max_tlu_input_bits"] <= circuit.report().max_tlu_input_bits
    assert 0 < rep["p_error"] <= TINY_P * 1.01
    assert rep["complexity"] > 0 and rep["compile_seconds"] > 0
    assert rep["size_of_evaluation_keys"] == (rep["size_of_bootstrap_keys"]
                                              + rep["size_of_keyswitch_keys"]) > 0
    # exact rounding costs extra PBS, approximate rounding does not
    exact = compile_(circuit.with_rounding(2, "exact"), q, range_mode="worst_case", batch_size=4)
    approx = compile_(circuit.with_rounding(2, "approximate"), q, range_mode="worst_case",
                      batch_size=4)
    assert exact.report["programmable_bootstrap_count"] > 5
    assert approx.report["programmable_bootstrap_count"] == 5
    assert approx.report["max_tlu_input_bits"] == rep["max_tlu_input_bits"] - 2


def test_global_p_error_is_per_sample_whatever_the_batch(make_mlp, sample_q):
    circuit = make_mlp()
    q = sample_q(circuit, 100)
    one = FHECircuit.compile(circuit, q, global_p_error=0.01, batch_size=1)
    many = FHECircuit.compile(circuit, q, global_p_error=0.01, batch_size=16)
    for fc in (one, many):
        assert fc.report["global_p_error"] <= 0.01 * 1.001
        assert fc.report["global_p_error_requested"] == 0.01
    assert many.report["p_error"] == pytest.approx(one.report["p_error"], rel=0.05)
    assert many.report["complexity"] == pytest.approx(one.report["complexity"], rel=0.05)


def test_auto_batch_size(make_mlp, sample_q):
    narrow = compile_(make_mlp(hidden=4), sample_q(make_mlp(hidden=4), 20))
    wide = compile_(make_mlp(hidden=20), sample_q(make_mlp(hidden=20), 20))
    assert narrow.batch_size == 16 and wide.batch_size == 8


@pytest.mark.parametrize("n, b", [(0, 4), (1, 4), (3, 4), (7, 4), (9, 4), (5, 1), (33, 16)])
def test_plan_calls_covers_every_sample_once(n, b):
    calls = plan_calls(n, b)
    covered = [i for start, stop, _ in calls for i in range(start, stop)]
    assert covered == list(range(n))
    for start, stop, name in calls:
        assert name in ("single", "batch") and (b > 1 or name == "single")
        assert stop - start == 1 if name == "single" else 2 <= stop - start <= b


def test_pickle_recompiles_the_same_circuit(make_mlp, sample_q):
    import pickle

    circuit = make_mlp().with_rounding(2, "exact")
    q = sample_q(circuit, 200)
    fc = compile_(circuit, q, range_mode="calibrated", batch_size=4)
    clone = pickle.loads(pickle.dumps(fc))
    assert clone.batch_size == 4 and not clone.keys_generated
    for key in ("layers", "programmable_bootstrap_count", "p_error", "input_range"):
        assert clone.report[key] == fc.report[key]
    np.testing.assert_array_equal(clone.simulate(q), fc.simulate(q))


def test_parameter_strategy_auto_keeps_the_cheaper_partitions(make_mlp, make_two_lookup_layers,
                                                              sample_q):
    import pickle

    circuit = make_two_lookup_layers()
    q = sample_q(circuit, 200)
    by = {s: compile_(circuit, q, parameter_strategy=s)
          for s in ("precision", "precision_and_norm2", "auto")}
    for name, fc in by.items():  # every partitioning is exact
        np.testing.assert_array_equal(fc.simulate(q), IntegerBackend(circuit).run_integers(q))
        assert fc.report["parameter_strategy"] == (name if name != "auto" else
                                                   "precision_and_norm2")
    cx = {s: fc.report["complexity"] for s, fc in by.items()}
    assert cx["precision_and_norm2"] < 0.95 * cx["precision"]  # worth its extra keys
    assert cx["auto"] == cx["precision_and_norm2"]
    clone = pickle.loads(pickle.dumps(by["auto"]))  # recompiled with the kept strategy
    assert clone.report["parameter_strategy"] == "precision_and_norm2"
    assert clone.report["complexity"] == cx["auto"]
    old = by["auto"].__getstate__()  # pickled before the option: concrete's default
    del old["parameter_strategy"]
    revived = FHECircuit.__new__(FHECircuit)
    revived.__setstate__(old)
    assert revived.report["parameter_strategy"] == "precision"
    # one lookup layer: one partition either way, compiled once with concrete's default
    single = make_mlp()
    assert compile_(single, sample_q(single, 50)).report["parameter_strategy"] == "precision"


def test_importing_the_backend_does_not_import_concrete():
    code = ("import sys, latentopt.backends.fhe, latentopt.backends.fhe_deploy, "
            "latentopt.backends.fhe_lowering; assert 'concrete' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -------------------------------------------------------------- real execution
@pytest.fixture(scope="module")
def tiny_fhe(key_cache, make_mlp, sample_q):  # type: ignore[no-untyped-def]
    """Exact-rounded 4-3-2 MLP with real (cached) keys; batch of 4."""
    circuit = make_mlp(seed=5, hidden=3).with_rounding(1, "exact")
    q = sample_q(circuit, 100, seed=6)
    fc = FHECircuit.compile(circuit, q, p_error=TINY_P, range_mode="worst_case", batch_size=4,
                            compress=False, insecure_key_cache=key_cache)
    return circuit, fc


@pytest.mark.fhe
def test_threads_compile_and_generate_keys_once(key_cache, make_mlp, sample_q):
    """Compiling in a thread other than the one that imported concrete failed inside
    concrete's tracer ('_thread._local' object has no attribute 'stack'); two threads'
    first execute() each generated keys, and one encrypted with keys the other then
    replaced (wrong rows, no error)."""
    import threading

    circuit = make_mlp(seed=5, hidden=3).with_rounding(1, "exact")
    q = sample_q(circuit, 50, seed=6)
    compiled: list = []
    worker = threading.Thread(target=lambda: compiled.append(compile_(
        circuit, q, range_mode="worst_case", compress=False, insecure_key_cache=key_cache)))
    worker.start()
    worker.join()
    assert len(compiled) == 1
    fc = compiled[0]
    calls = []
    original = fc.module.keygen

    def slow_keygen(*args, **kwargs):  # a window in which other threads arrive
        calls.append(threading.get_ident())
        __import__("time").sleep(0.3)
        return original(*args, **kwargs)

    fc.module.keygen = slow_keygen
    out: dict = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fc.execute(q[:4])))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    for i in range(3):
        np.testing.assert_array_equal(out[i], IntegerBackend(circuit).run_integers(q[:4]))


@pytest.mark.fhe
def test_execute_equals_simulation(tiny_fhe, capsys):
    circuit, fc = tiny_fhe
    assert not fc.keys_generated
    q = np.random.default_rng(7).integers(-4, 4, (11, circuit.n_features))
    fc.verbose = 1
    out = fc.execute(q)  # 2 batches + padded batch of 3, lazy keygen
    fc.verbose = 0
    assert fc.keys_generated and fc.report["keygen_seconds"] > 0
    assert "FHE execute" in capsys.readouterr().err  # progress bar
    np.testing.assert_array_equal(out, fc.simulate(q))
    np.testing.assert_array_equal(out, IntegerBackend(circuit).run_integers(q))
    # the single-sample path, run concurrently
    np.testing.assert_array_equal(fc.execute(q[:2], n_jobs=2), out[:2])
    assert fc.keygen() == 0.0  # already generated


@pytest.mark.fhe
def test_fortran_ordered_inputs_are_not_scrambled(tiny_fhe):
    """concrete-python reads a tensor's buffer in C order whatever its strides: a
    Fortran-ordered batch (a column selection of a C array, a pandas frame) was
    simulated and executed with its samples mixed up, silently (found through a
    deployed wine model whose ``X[:, [0, 6, 9]]`` inputs were Fortran-ordered)."""
    circuit, fc = tiny_fhe
    q = np.random.default_rng(11).integers(-4, 4, (circuit.n_features, 12)).T  # F order
    assert q.flags["F_CONTIGUOUS"] and not q.flags["C_CONTIGUOUS"]
    exact = IntegerBackend(circuit).run_integers(np.ascontiguousarray(q))
    assert len({tuple(r) for r in exact}) > 1  # distinct samples: a mix-up would show
    np.testing.assert_array_equal(fc.simulate(q), exact)
    np.testing.assert_array_equal(fc.execute(q[:fc.batch_size]), exact[:fc.batch_size])


@pytest.mark.fhe
def test_approximate_rounding_is_off_by_at_most_one_step(key_cache):
    """One layer, the lookup is the output: each value is f at the exact rounding +- 1 step."""
    act = QuantActivation("relu", 0.25, 1.0, n_bits=3)
    circuit = Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, n_bits=3, signed=False),
        Gemm("fc", ("q",), [[1, 2], [2, -1], [-1, 1]]),
        TableLookup("act", ("fc",), act),
        Dequantize("out", ("act",), 1.0, 0),
    ], n_features=2).with_rounding(2, "approximate")
    q = np.array([[a, b] for a in range(8) for b in range(8)])
    fc = FHECircuit.compile(circuit, q, p_error=TINY_P, range_mode="worst_case", batch_size=16,
                            compress=False, insecure_key_cache=key_cache)
    out = fc.execute(q[:16])
    _, values = IntegerBackend(circuit).run_integers(q[:16], return_all=True)
    r = values["act.round"]
    candidates = np.stack([act(r - 4), act(r), act(r + 4)])
    assert np.all((out[None] == candidates).any(axis=0))


def test_per_channel_tables_after_an_overflowing_approximate_rounding_compile():
    """concrete-python 2.11 fails on per-channel tables after an approximate rounding
    that overflows ("could not broadcast input array", in its MLIR converter); the
    compile falls back to logical clipping, which concrete supports there.

    The fixture is the circuit of a real (16,) 3-bit MLP (24 features, 3 classes,
    rounding 6) that hit it inside a search, with its 720 quantized training rows.
    """
    from pathlib import Path

    data = Path(__file__).parent / "data"
    circuit = Circuit.load(data / "multi_table_clipping.circuit")
    q = np.load(data / "multi_table_clipping_inputs.npy").astype(np.int64)
    fc = FHECircuit.compile(circuit, q, range_margin=0.25)
    assert fc.report["approximate_active_clipping"] is False
    ref = IntegerBackend(circuit).run_integers(q)
    sim = fc.simulate(q)
    assert sim.shape == ref.shape
    # approximate rounding may move a value by one step; the decisions hold
    assert np.mean(sim.argmax(axis=1) == ref.argmax(axis=1)) >= 0.9
    # a circuit without the overflow keeps concrete's default (active clipping)
    assert FHECircuit.compile(circuit, q[:32], range_margin=0.25).report[
        "approximate_active_clipping"] is True


def test_a_failing_script_keeps_its_exit_status_after_an_fhe_run(tmp_path):
    """concrete-python's atexit handler ended every process that had run a circuit with
    status 0: a script that raised after ``simulate`` looked successful to its shell."""
    import subprocess
    import sys

    script = tmp_path / "fails.py"
    script.write_text(
        "import numpy as np\n"
        "from latentopt import QuantizedMLPClassifier\n"
        "X = np.random.default_rng(0).normal(size=(60, 3)); y = (X[:, 0] > 0).astype(int)\n"
        "clf = QuantizedMLPClassifier(hidden_layer_sizes=(3,), n_w_bits=2, n_a_bits=2,\n"
        "                             n_input_bits=3, max_epochs=2, verbose=0).fit(X, y)\n"
        "clf.compile(X, rounding_bits=3).predict(X[:2], fhe='simulate')\n"
        "raise SystemExit(3)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 3, done.stderr[-2000:]

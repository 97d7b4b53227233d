"""The latency breakdown of one encrypted sample (``FHECircuit.profile``)."""

from __future__ import annotations

import numpy as np
import pytest

from latentopt.backends.fhe import FHECircuit
from latentopt.backends.fhe_profile import LatencyProfile
from latentopt.backends.integer import IntegerBackend
from latentopt.search.cost import PRIOR, CostModel
from latentopt.search.profile import layer_lookups

TINY_P = 2.0**-40


def prior_model() -> CostModel:
    """The cost model's prior coefficients, on 2 effective cores (no calibration)."""
    return CostModel(PRIOR, speedup=2.0, fingerprint={})


@pytest.fixture(scope="module")
def two_layer(make_mlp, sample_q):  # type: ignore[no-untyped-def]
    """Two lookup layers (3 and 2 lookups), so the critical path has two steps."""
    from latentopt.ir import Circuit, Gemm, QuantActivation, TableLookup

    base = make_mlp(seed=3, hidden=3)
    nodes = list(base.nodes)
    relu = QuantActivation("relu", input_scale=0.5, output_scale=0.5, n_bits=2, signed=False)
    nodes[-1:-1] = [TableLookup("act2", ("fc2",), relu),
                    Gemm("fc3", ("act2",), [[1, -1]])]
    nodes[-1] = type(nodes[-1])("out", ("fc3",), scale=0.25, zero_point=0)
    circuit = Circuit(nodes, n_features=base.n_features)
    q = sample_q(circuit, 64, seed=1)
    return circuit, q, FHECircuit.compile(circuit, q, p_error=TINY_P, range_mode="worst_case",
                                          batch_size=1)


def test_layer_lookups_follow_the_layers(two_layer):
    circuit, _, fc = two_layer
    rows = {r["layer"]: r for r in layer_lookups(fc.module)}
    counts = {name: sum(op[4] for op in r["pbs"]) for name, r in rows.items()}
    per_layer = {row["name"]: row["pbs"] for row in fc.report["layers"] if row["pbs"]}
    assert counts == per_layer and sum(counts.values()) == 3 + 2
    assert sum(counts.values()) == fc.report["programmable_bootstrap_count"]
    for r in rows.values():  # one key switch per bootstrap
        assert sum(k[3] for k in r["ks"]) == sum(op[4] for op in r["pbs"])


def test_floor_is_the_critical_path_over_the_cores(two_layer):
    _, _, fc = two_layer
    model = prior_model()
    pbs1, ks1, linear, rows = model.critical_path(fc, cores=1)
    pbs2, ks2, _, _ = model.critical_path(fc, cores=2)
    pbs8, ks8, _, _ = model.critical_path(fc, cores=8)
    assert pbs1 > 0 and ks1 > 0 and linear > 0
    # 3 lookups on 2 cores take 2/3 of one core's time, 2 lookups half of it; beyond the
    # widest layer more cores do not help
    serial = {r["layer"]: r["pbs_seconds"] for r in rows}
    assert pbs2 == pytest.approx(serial["fc1"] / 2 + serial["fc2"] / 2)
    assert pbs8 == pytest.approx(serial["fc1"] / 3 + serial["fc2"] / 2)
    assert pbs1 > pbs2 > pbs8 and ks1 > ks2 > ks8


@pytest.mark.fhe
def test_profile_times_every_stage_and_decrypts_the_right_integers(two_layer, key_cache):
    circuit, q, _ = two_layer
    fc = FHECircuit.compile(circuit, q, p_error=TINY_P, range_mode="worst_case", batch_size=1,
                            insecure_key_cache=key_cache)
    p = fc.profile(q[3:5], repeats=2, cost_model=prior_model())
    assert isinstance(p, LatencyProfile)
    assert list(p.stages) == ["encrypt", "run", "decrypt"]
    assert all(s > 0 for s in p.stages.values())
    assert p.total == pytest.approx(sum(p.stages.values()))
    # the first run after keygen is reported (the keys were cold), later ones are not
    assert p.first_run is not None and p.first_run > 0 and fc.warm
    assert fc.profile(q[3:4], repeats=1).first_run is None
    # the modelled parts of the run add up to the measured run; the floor is positive
    assert set(p.server) == {"pbs", "key switch", "linear", "key conversion", "other"}
    assert p.server["key conversion"] > 0  # every call converts the bootstrap keys
    assert sum(p.server.values()) == pytest.approx(p.stages["run"])
    assert p.floor == pytest.approx(p.server["pbs"] + p.server["key switch"]) and p.floor > 0
    # the sample really went through: the decrypted integers are the circuit's
    out = np.asarray(p.info["output"]) + fc.plan.output_offset
    np.testing.assert_array_equal(out, IntegerBackend(circuit).run_integers(q[3:4]))
    # compressed evaluation keys ship smaller than concrete's in-memory size
    assert 0 < p.info["evaluation_keys_serialized"] < p.info["size_of_evaluation_keys"]
    text = p.table()
    assert "pbs (model)" in text and "floor" in text and "first run" in text
    assert "floor + key conversion" in text
    # keygen warms new keys up by default: the first prediction does not pay for them
    fc.keygen(force=True)
    assert fc.warm and fc.report["warmup_seconds"] > 0
    again = fc.profile(q[3:4], repeats=1)
    assert again.first_run is None and again.info["warmup_seconds"] > 0
    fc.keygen(force=True, warm=False)
    assert not fc.warm

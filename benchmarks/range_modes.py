"""Accuracy, cost and safety of ``range_mode="calibrated"`` (the default) and ``"worst_case"``.

For a few circuits (dataset, hidden layers, rounding bits), trains one
QuantizedMLPClassifier (3-bit weights/activations), compiles it both ways on the same
300 calibration rows (p_error 0.01, batch_size 1) and prints, side by side: PBS per
sample, test accuracy (``fhe="disable"``; trained on the even
rows, tested on the odd ones; the unrounded circuit's in brackets), widest encrypted integer,
widest TLU input, evaluation-key MiB, keygen seconds,
concrete's complexity, median single-sample encrypted latency (``--reps`` runs,
alternating the two circuits, first run dropped), and how many of 200 test rows shifted
by +8 (standardised units) give a different label under ``fhe="simulate"`` than
``fhe="disable"``.

    python benchmarks/range_modes.py [--circuits bc:8:5 bc:16:5 gen24:16:6] [--reps 6]

A circuit is ``data:hidden[,hidden..]:rounding_bits`` with data ``bc`` (breast_cancer)
or ``gen24`` (make_classification, 1500 x 24 features, 3 classes).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier
from latentopt.backends.integer import IntegerBackend

MODES = ("calibrated", "worst_case")


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "bc":
        X, y = load_breast_cancer(return_X_y=True)
    elif name == "gen24":
        X, y = make_classification(1500, 24, n_informative=12, n_classes=3, random_state=0)
    else:
        raise ValueError(f"unknown data set {name!r}")
    return StandardScaler().fit_transform(X), y


def bench(spec: str, reps: int) -> list[dict]:
    data, hidden_s, rb_s = spec.split(":")
    X_all, y_all = load(data)
    X, y, X_te, y_te = X_all[::2], y_all[::2], X_all[1::2], y_all[1::2]
    hidden = tuple(int(h) for h in hidden_s.split(","))
    clf = QuantizedMLPClassifier(hidden_layer_sizes=hidden, n_w_bits=3, n_a_bits=3,
                                 max_epochs=20, random_state=0, verbose=0).fit(X, y)
    rows, fitted = [], {}
    acc_float = clf.score(X_te, y_te)
    for mode in MODES:
        c = copy.deepcopy(clf)
        c.compile(X[:300], rounding_bits=int(rb_s), p_error=0.01, range_mode=mode,
                  batch_size=1, verbose=0)
        t0 = time.perf_counter()
        c.fhe_circuit_.keygen()
        r = c.fhe_circuit_.report
        fitted[mode] = c
        rows.append(dict(circuit=spec, mode=mode, acc=c.score(X_te, y_te), acc_unrounded=acc_float,
                         pbs=r["programmable_bootstrap_count"],
                         max_bits=r["max_bit_width"], tlu_bits=r["max_tlu_input_bits"],
                         keys_mib=r["size_of_evaluation_keys"] / 2**20,
                         keygen_s=time.perf_counter() - t0, complexity=r["complexity"]))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(reps):
        for mode, c in fitted.items():
            q = IntegerBackend(c.active_circuit_).quantize(X[rep : rep + 1])
            t0 = time.perf_counter()
            c.fhe_circuit_.execute(q)
            times[mode].append(time.perf_counter() - t0)
    shifted = X_te[:200] + 8
    for row in rows:
        c = fitted[row["mode"]]
        row["s_per_sample"] = statistics.median(times[row["mode"]][1:] or times[row["mode"]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # calibrated warns about these rows: count them
            diff = c.predict(shifted, fhe="simulate") != c.predict(shifted, fhe="disable")
        row["shift8_wrong"] = int(diff.sum())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--circuits", nargs="+", default=["bc:8:5", "bc:16:5", "gen24:16:6"])
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    head = (f"{'circuit':<14}{'mode':<12}{'test acc':>15}{'PBS':>5}{'maxbits':>8}{'tlu':>5}"
            f"{'keys MiB':>9}"
            f"{'keygen s':>9}{'complexity':>12}{'s/sample':>10}{'shift+8 wrong':>15}")
    print(head)
    for spec in args.circuits:
        for r in bench(spec, args.reps):
            acc = f"{r['acc']:.3f} ({r['acc_unrounded']:.3f})"
            print(f"{r['circuit']:<14}{r['mode']:<12}{acc:>15}{r['pbs']:>5}{r['max_bits']:>8}"
                  f"{r['tlu_bits']:>5}{r['keys_mib']:>9.0f}{r['keygen_s']:>9.1f}"
                  f"{r['complexity']:>12.3g}{r['s_per_sample']:>10.3f}"
                  f"{r['shift8_wrong']:>10} / 200", flush=True)


if __name__ == "__main__":
    main()

"""Encrypted inference: accuracy, bit-widths, PBS count, compile/keygen time, latency.

For breast_cancer, wine and digits (StandardScaler, 25% stratified test split, seed 0)
trains QuantizedMLPClassifier models at a few bit-width / width / pruning settings,
compiles each at a few rounding / p_error settings and prints: test accuracy (integer
backend and FHE simulation), max TLU input bits, PBS per sample, compile seconds,
keygen seconds, median encrypted latency per sample (real keys, ``--n-execute`` test
samples, batched as ``predict(fhe="execute")`` does) and execute-vs-simulate agreement.
The float scikit-learn MLP accuracy is the reference (target: a setting within 2 points
that runs under 0.5 s/sample on wine and breast_cancer).

    python benchmarks/fhe_latency.py [--n-execute 16] [--datasets wine breast_cancer]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier

warnings.filterwarnings("ignore")

# (label, estimator params, [(rounding_bits, p_error), ...])
SETTINGS = [
    # (no rounding is left out: a 10-12-bit TLU needs minutes of keygen and ~1 min/sample)
    ("64 3b", dict(hidden_layer_sizes=(64,)), [(6, 1e-3), (5, 1e-2)]),
    ("16 3b", dict(hidden_layer_sizes=(16,)), [(5, 1e-2), (4, 5e-2)]),
    ("32 3b prune.5", dict(hidden_layer_sizes=(32,), pruning_ratio=0.5), [(5, 1e-2), (4, 5e-2)]),
    ("8x8 2b", dict(hidden_layer_sizes=(8, 8), n_w_bits=2, n_a_bits=2, lr=3e-3), [(4, 3e-2)]),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-execute", type=int, default=16)
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "wine", "digits"])
    args = parser.parse_args()
    head = (f"{'dataset':13s} {'model':14s} {'round':>5s} {'p_err':>6s} {'acc':>6s} "
            f"{'sim acc':>7s} {'TLU b':>5s} {'PBS':>4s} {'comp s':>6s} {'keygen s':>8s} "
            f"{'s/sample':>8s} {'exe=sim':>7s}")
    for name in args.datasets:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        sc = StandardScaler().fit(Xtr)
        Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
        ref = MLPClassifier(max_iter=1000, random_state=0).fit(Xtr, ytr).score(Xte, yte)
        print(f"\n{name}: float scikit-learn MLP test accuracy {ref:.4f}")
        print(head)
        for label, params, points in SETTINGS:
            clf = QuantizedMLPClassifier(random_state=0, verbose=0, **params).fit(Xtr, ytr)
            for rounding, p_error in points:
                try:
                    clf.compile(rounding_bits=rounding, p_error=p_error, verbose=0)
                except ValueError as exc:
                    print(f"{name:13s} {label:14s} {str(rounding):>5s} {p_error:6.0e}  "
                          f"not compilable: {type(exc).__name__}")
                    continue
                rep = clf.fhe_report_
                acc = clf.score(Xte, yte)
                sim = clf.predict(Xte, fhe="simulate")
                keygen = clf.keygen(force=True)
                Xe = Xte[: args.n_execute]
                t0 = time.perf_counter()
                enc = clf.predict(Xe, fhe="execute")
                per = (time.perf_counter() - t0) / len(Xe)
                print(f"{name:13s} {label:14s} {str(rounding):>5s} {p_error:6.0e} {acc:6.4f} "
                      f"{np.mean(sim == yte):7.4f} {rep['max_tlu_input_bits']:5d} "
                      f"{rep['programmable_bootstrap_count']:4d} {rep['compile_seconds']:6.2f} "
                      f"{keygen:8.2f} {per:8.3f} {np.mean(enc == sim[: len(Xe)]):7.2f}",
                      flush=True)


if __name__ == "__main__":
    main()

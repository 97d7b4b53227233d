"""Structured and accumulator-budget pruning: accuracy vs size, bits and PBS count.

For digits and breast_cancer (StandardScaler, 25% stratified test split): train a 3-bit
QAT MLP (hidden 64), then ``est.prune`` it to structured ratios 0..0.9 and, on the 50%
model, to accumulator budgets.  For each model prints test accuracy (integer backend),
hidden neurons left, worst-case / calibrated max accumulator bits, and -- after compiling
with 6-bit approximate rounding -- the PBS count and FHE-simulated test accuracy.

    python benchmarks/pruning.py [--seeds 2] [--no-fhe]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier

warnings.filterwarnings("ignore")
RATIOS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9)
BUDGETS = (12, 11, 10)


def _row(est, Xte, yte, fhe: bool) -> dict:
    rep = est.bit_width_report()
    row = {
        "acc": est.score(Xte, yte),
        "neurons": sum(r["out_features"] for r in rep.layers[:-1]),
        "acc_bits": rep.max_accumulator_bits,
        "acc_bits_cal": max(r["accumulator_bits_calibrated"] for r in rep.layers),
        "pbs": None,
        "sim_acc": None,
    }
    if fhe:
        est.compile(rounding_bits=6, p_error=0.01, verbose=0)
        row["pbs"] = est.fhe_report_["programmable_bootstrap_count"]
        row["sim_acc"] = float(np.mean(est.predict(Xte, fhe="simulate") == yte))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--no-fhe", action="store_true")
    args = parser.parse_args()
    fhe = not args.no_fhe
    for name in ("digits", "breast_cancer"):
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        sc = StandardScaler().fit(Xtr)
        Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
        rows: dict[str, list[dict]] = {}
        for seed in range(args.seeds):
            base = QuantizedMLPClassifier(hidden_layer_sizes=(64,), random_state=seed,
                                          verbose=0).fit(Xtr, ytr)
            for ratio in RATIOS:
                est = base if ratio == 0 else base.prune(Xtr, ytr, ratio=ratio)
                rows.setdefault(f"ratio {ratio:.2f}", []).append(_row(est, Xte, yte, fhe))
                if ratio == 0.5:
                    half = est
            for bits in BUDGETS:
                est = half.prune(Xtr, ytr, n_accum_bits=bits)
                rows.setdefault(f"ratio 0.50 + acc<={bits}", []).append(
                    _row(est, Xte, yte, fhe))
        print(f"\n{name} (3-bit weights/activations, 6-bit inputs, {args.seeds} seeds, mean)")
        print(f"{'model':22s} {'acc':>7s} {'d acc':>7s} {'neurons':>7s} {'acc bits':>8s} "
              f"{'cal bits':>8s} {'PBS':>6s} {'FHE-sim acc':>11s}")
        ref = np.mean([r["acc"] for r in rows["ratio 0.00"]])
        for label, rs in rows.items():
            acc = np.mean([r["acc"] for r in rs])
            pbs = "-" if rs[0]["pbs"] is None else f"{np.mean([r['pbs'] for r in rs]):.0f}"
            sim = ("-" if rs[0]["sim_acc"] is None
                   else f"{np.mean([r['sim_acc'] for r in rs]):.4f}")
            print(f"{label:22s} {acc:7.4f} {(acc - ref) * 100:+7.2f} "
                  f"{np.mean([r['neurons'] for r in rs]):7.1f} "
                  f"{max(r['acc_bits'] for r in rs):8d} {max(r['acc_bits_cal'] for r in rs):8d} "
                  f"{pbs:>6s} {sim:>11s}")


if __name__ == "__main__":
    main()

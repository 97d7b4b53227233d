"""QAT accuracy of QuantizedMLPClassifier vs scikit-learn's float MLPClassifier.

For breast_cancer, wine and digits (StandardScaler, 25% stratified test split, split
seed 0) prints the test accuracy of the float MLP and of 3-bit weights / 3-bit
activations QAT MLPs, mean and spread over seeds, and whether the gap is within 2 points.

    python benchmarks/accuracy.py [--seeds 3]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=3)
    args = parser.parse_args()
    print(f"{'dataset':14s} {'float MLP':>16s} {f'{args.bits}-bit QAT':>16s} {'gap':>7s} "
          f"{'within 2pt':>10s} {'QAT fit s':>9s}")
    for name in ("breast_cancer", "wine", "digits"):
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
        sc = StandardScaler().fit(Xtr)
        Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
        ref, qat, secs = [], [], []
        for seed in range(args.seeds):
            ref.append(MLPClassifier(max_iter=1000, random_state=seed).fit(Xtr, ytr)
                       .score(Xte, yte))
            t = time.perf_counter()
            clf = QuantizedMLPClassifier(n_w_bits=args.bits, n_a_bits=args.bits,
                                         random_state=seed, verbose=0).fit(Xtr, ytr)
            secs.append(time.perf_counter() - t)
            qat.append(clf.score(Xte, yte))
        gap = np.mean(ref) - np.mean(qat)
        print(f"{name:14s} {np.mean(ref):.4f} +- {np.std(ref):.3f} "
              f"{np.mean(qat):.4f} +- {np.std(qat):.3f} {gap * 100:+6.2f} "
              f"{'yes' if gap <= 0.02 else 'NO':>10s} {np.mean(secs):9.1f}")
    print(f"(hidden_layer_sizes=(64,), n_input_bits=6, {args.seeds} seeds; gap in points)")


if __name__ == "__main__":
    main()

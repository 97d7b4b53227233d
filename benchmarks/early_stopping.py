"""Early stopping or the full cosine schedule?  Test accuracy of QAT MLPs, both ways.

The search's own splits of ``bench_datasets.py`` (25% test, then 20% check and 20% of
the rest for validation, seed 0), the search's training part (or all training rows with
``--all-rows``); ``QuantizedMLPClassifier(max_epochs=100, lr=1e-2)`` with and without
early stopping (which holds out ``validation_fraction=0.1`` of the rows it is given),
mean test accuracy over ``--seeds`` seeds.  The measurement behind the estimators'
``early_stopping=False`` default.

    python benchmarks/early_stopping.py [--datasets gen_3c_24f gen_2c_10f] [--all-rows]
"""

from __future__ import annotations

import argparse
import warnings

import bench_datasets
import numpy as np
from sklearn.model_selection import train_test_split

warnings.filterwarnings("ignore")

CONFIGS = (((32,), 3), ((32,), 4), ((64,), 4))


def main() -> None:
    from latentopt import QuantizedMLPClassifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+",
                        default=[d for d in bench_datasets.ALL
                                 if not bench_datasets.is_regression(d)])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--all-rows", action="store_true",
                        help="train on all training rows, not the search's training part")
    args = parser.parse_args()
    print("| data set | rows | hidden | bits | early stopping | full schedule | difference |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets:
        Xtr, Xte, ytr, yte = bench_datasets.load(name)
        if not args.all_rows:
            Xa, _, ya, _ = train_test_split(Xtr, ytr, test_size=0.2, stratify=ytr,
                                            random_state=0)
            Xtr, _, ytr, _ = train_test_split(Xa, ya, test_size=0.2, stratify=ya,
                                              random_state=0)
        for hidden, bits in CONFIGS:
            scores = {}
            for es in (True, False):
                scores[es] = float(np.mean([
                    QuantizedMLPClassifier(hidden_layer_sizes=hidden, n_w_bits=bits,
                                           n_a_bits=bits, max_epochs=100, lr=1e-2,
                                           early_stopping=es, random_state=seed,
                                           verbose=0).fit(Xtr, ytr).score(Xte, yte)
                    for seed in range(args.seeds)]))
            print(f"| {name} | {len(ytr)} | {hidden} | {bits} | {scores[True]:.3f} | "
                  f"{scores[False]:.3f} | {scores[False] - scores[True]:+.3f} |", flush=True)


if __name__ == "__main__":
    main()

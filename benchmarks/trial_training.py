"""Batch size and learning rate of the search's trial training: accuracy and fit time.

``latentopt.search.FAST_TRAINING`` (opt-in, added to a search space) trains trials at
batch 256 with learning rates three times those of the estimators' default batch 64.
This script measures what that costs: for each data set of ``bench_datasets.py``, two
configurations ((16,) at 3 bits, (64,) at 4 bits), full (200 epochs) and short-rung
(25 epochs) training, batch 64 and 256 at several learning rates, two seeds; it prints
the clear test score (accuracy, R^2 for the regression) and the fit seconds, one core.

    python benchmarks/trial_training.py gen_3c_24f gen_5c_40f gen_2c_10f wine diabetes \
        breast_cancer > benchmarks/results_trial_training.txt

Rows: ``benchmarks/results_trial_training.txt``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import bench_datasets
import numpy as np
import torch

warnings.filterwarnings("ignore")
SETTINGS = ((64, 1e-3), (64, 1e-2), (256, 3e-3), (256, 1e-2), (256, 3e-2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="*", default=list(bench_datasets.ALL))
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("data set | hidden | bits | epochs | batch | lr | test scores | mean | fit s")
    for name in args.datasets:
        Xtr, Xte, ytr, yte = bench_datasets.load(name)
        est_cls = bench_datasets.quantized_mlp(name)
        for hidden, bits in (((16,), 3), ((64,), 4)):
            for epochs in (200, 25):
                for batch, lr in SETTINGS:
                    scores, seconds = [], []
                    for seed in range(args.seeds):
                        t0 = time.perf_counter()
                        est = est_cls(hidden, n_w_bits=bits, n_a_bits=bits,
                                      max_epochs=epochs, batch_size=batch, lr=lr,
                                      random_state=seed, verbose=0).fit(Xtr, ytr)
                        seconds.append(time.perf_counter() - t0)
                        scores.append(float(est.score(Xte, yte)))
                    print(f"{name} | {hidden} | {bits} | {epochs} | {batch} | {lr:g} | "
                          f"{' '.join(f'{s:.3f}' for s in scores)} | {np.mean(scores):.3f} | "
                          f"{' '.join(f'{s:.1f}' for s in seconds)}", flush=True)


if __name__ == "__main__":
    main()

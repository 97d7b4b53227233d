"""Retrain one MLP configuration on a benchmark data set and measure it, alone.

For re-measuring a point a search chose (its row in a ``search_generalization`` JSON
lines file names the configuration) on a quiet machine: the search's own measurement
shares the machine with whatever ran beside it.  Trains ``QuantizedMLP*`` on the set's
whole training split (as the search's refit does), compiles at the given rounding and
``p_error``, and prints one JSON line: the simulated test score of ``--n-simulate`` runs,
keygen seconds and the encrypted seconds per sample (real keys, one sample per call,
after a warm-up call; median and all of ``--n-execute``: ``search_generalization.measure``).

    python benchmarks/measure_config.py --dataset gen_5c_40f --hidden 16 --w-bits 3 \\
        --a-bits 3 --input-bits 6 --rounding-bits 6 --p-error 0.1
"""

from __future__ import annotations

import argparse
import json

import bench_datasets
from search_generalization import measure


def main() -> None:
    from latentopt.search.inner import score_under

    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True, choices=bench_datasets.ALL)
    p.add_argument("--hidden", type=int, nargs="+", required=True)
    p.add_argument("--w-bits", type=int, default=3)
    p.add_argument("--a-bits", type=int, default=3)
    p.add_argument("--input-bits", type=int, default=6)
    p.add_argument("--activation", default="relu")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--rounding-bits", type=int, required=True)
    p.add_argument("--p-error", type=float, required=True)
    p.add_argument("--n-simulate", type=int, default=3)
    p.add_argument("--n-execute", type=int, default=5)
    a = p.parse_args()
    Xtr, Xte, ytr, yte = bench_datasets.load(a.dataset)
    est = bench_datasets.quantized_mlp(a.dataset)(
        hidden_layer_sizes=tuple(a.hidden), n_w_bits=a.w_bits, n_a_bits=a.a_bits,
        n_input_bits=a.input_bits, activation=a.activation, lr=a.lr,
        max_epochs=a.max_epochs, random_state=0, verbose=0).fit(Xtr, ytr)
    est.compile(rounding_bits=a.rounding_bits, p_error=a.p_error)
    simulated = [score_under(est, Xte, yte, "simulate") for _ in range(a.n_simulate)]
    print(json.dumps({**vars(a), "pbs": est.fhe_report_.get("programmable_bootstrap_count"),
                      "simulated_test": simulated, **measure(est, Xte, a.n_execute)}))


if __name__ == "__main__":
    main()

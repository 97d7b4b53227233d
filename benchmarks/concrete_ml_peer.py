"""Concrete ML 1.9 NeuralNetClassifier on the benchmark data sets (the peer).

Runs inside its own virtualenv (concrete-ml 1.9.0 pins torch 2.3.1, brevitas 0.10.2,
scikit-learn 1.5.0); ``benchmarks/search_vs_concrete_ml.py`` creates it and calls this
script, which prints one JSON object per data set.  Settings follow Concrete ML's own
notebooks: 3 layers, 3-bit weights and activations, width = n_features.

    python concrete_ml_peer.py --n-execute 5 [--datasets breast_cancer gen_3c_24f ...]

Data sets and splits come from ``bench_datasets.py`` (classification sets only).
``--npz FILE`` runs one data set from a file with arrays ``Xtr, ytr, Xte, yte`` instead
(``mnist_search.py`` passes real MNIST this way), optionally with ``--n-layers``,
``--hidden`` (hidden width; Concrete ML's multiplier is set to give it) and ``--bits``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import bench_datasets  # same directory: the shared data sets and splits
import numpy as np

warnings.filterwarnings("ignore")


def main() -> None:
    import torch
    from concrete.ml.sklearn import NeuralNetClassifier

    parser = argparse.ArgumentParser()
    parser.add_argument("--n-execute", type=int, default=5)
    parser.add_argument("--datasets", nargs="+", default=["breast_cancer", "wine", "digits"])
    parser.add_argument("--npz", default=None, help="one data set: arrays Xtr ytr Xte yte")
    parser.add_argument("--n-layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=None, help="hidden width (n_features)")
    parser.add_argument("--bits", type=int, default=3)
    args = parser.parse_args()
    names = ["npz"] if args.npz else args.datasets
    for name in names:
        if name == "npz":
            data = np.load(args.npz)
            Xtr, Xte, ytr, yte = data["Xtr"], data["Xte"], data["ytr"], data["yte"]
            name = Path(args.npz).stem
        elif bench_datasets.is_regression(name):
            continue
        else:
            Xtr, Xte, ytr, yte = bench_datasets.load(name)
        Xtr = Xtr.reshape(len(Xtr), -1).astype(np.float32)
        Xte = Xte.reshape(len(Xte), -1).astype(np.float32)
        hidden = args.hidden or Xtr.shape[1]
        torch.manual_seed(0)
        model = NeuralNetClassifier(
            module__n_layers=args.n_layers, module__n_w_bits=args.bits,
            module__n_a_bits=args.bits,
            # Concrete ML's width is int(n_features * multiplier)
            module__n_hidden_neurons_multiplier=(hidden + 0.5) / Xtr.shape[1],
            module__activation_function=torch.nn.ReLU,
            max_epochs=100, verbose=0,
        )
        model.fit(Xtr, ytr.astype(np.int64))
        t0 = time.perf_counter()
        model.compile(Xtr)
        compile_s = time.perf_counter() - t0
        circuit = model.fhe_circuit
        acc = float(np.mean(model.predict(Xte, fhe="simulate") == yte))
        t0 = time.perf_counter()
        circuit.keygen()
        keygen_s = time.perf_counter() - t0
        n = min(args.n_execute, len(Xte))
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            model.predict(Xte[i : i + 1], fhe="execute")
            times.append(time.perf_counter() - t0)
        print(json.dumps({
            "dataset": name, "n_layers": args.n_layers, "hidden": hidden,
            "bits": args.bits, "accuracy": acc, "latency_s": float(np.median(times)),
            "keygen_s": keygen_s, "compile_s": compile_s,
            "pbs": int(circuit.programmable_bootstrap_count),
            "max_bit_width": int(circuit.graph.maximum_integer_bit_width()),
        }), flush=True)


if __name__ == "__main__":
    main()

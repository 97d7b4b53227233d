"""Concrete ML 1.9 compiling a float torch model of ``mnist_models.py`` (the peer).

Runs inside Concrete ML's own virtualenv (torch 2.3.1); ``mnist_ptq.py`` writes the
float weights and the data to temporary ``.npz`` files and calls this script, which
prints one JSON object per ``n_bits``::

    /work/wt/cml-venv/bin/python benchmarks/concrete_ml_torch_peer.py \
        --model cnn_ref --state state.npz --data data.npz --n-bits 5 6 \
        --rounding-bits 6 --rounding-method approximate --p-error 0.01 --n-execute 2

* ``--state``: the model's ``state_dict`` as saved by ``mnist_models.save_state``;
* ``--data``: an ``.npz`` with ``X_calib`` (the compile inputset), ``X_test``, ``y_test``.

Each line: ``model, n_bits, accuracy_disable`` (Concrete ML's clear quantized
inference), ``accuracy_simulate``, ``pbs``, ``max_bit_width``, ``compile_s``,
``keygen_s``, ``latency_s`` (median encrypted seconds per sample; absent with
``--n-execute 0``).  Same settings as latentopt's ``compile_torch_model``: one
``n_bits`` for inputs, weights and activations, ``rounding_threshold_bits`` =
``{"n_bits": rounding_bits, "method": rounding_method}``, ``p_error``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_models  # noqa: E402 - same directory: the shared models

warnings.filterwarnings("ignore")


def explicit_padding(model: Any) -> Any:
    """Replace ``padding="same"`` of stride-1 convolutions by the equal explicit padding.

    Concrete ML 1.9's ONNX import rejects the ``auto_pad`` attribute that torch exports
    for ``"same"``; for odd kernels (``(k - 1) * dilation`` even) the explicit padding
    computes exactly the same function.
    """
    from torch import nn

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.padding == "same":
            total = [d * (k - 1) for k, d in zip(m.kernel_size, m.dilation)]
            if any(t % 2 for t in total):
                raise ValueError("'same' padding with an even kernel: asymmetric padding")
            m.padding = tuple(t // 2 for t in total)
            m._reversed_padding_repeated_twice = [p for t in reversed(total)
                                                  for p in (t // 2, t // 2)]
    return model


def _rounding(bits: str, method: str) -> dict[str, object] | None:
    if bits.lower() == "none":
        return None
    return {"n_bits": int(bits), "method": method}


def main() -> None:
    import torch
    from concrete.ml.torch.compile import compile_torch_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=sorted(mnist_models.MODELS))
    ap.add_argument("--state", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n-bits", type=int, nargs="+", default=[6])
    ap.add_argument("--rounding-bits", default="6", help="int or 'none'")
    ap.add_argument("--rounding-method", default="approximate",
                    choices=["approximate", "exact"])
    ap.add_argument("--p-error", type=float, default=0.01)
    ap.add_argument("--n-execute", type=int, default=2)
    ap.add_argument("--n-simulate", type=int, default=0, help="0: all test rows")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = mnist_models.load_state(mnist_models.MODELS[args.model](), args.state).eval()
    model = explicit_padding(model)
    with np.load(args.data) as f:
        X_calib, X_test, y_test = f["X_calib"], f["X_test"], f["y_test"]
    if args.n_simulate:
        X_test, y_test = X_test[:args.n_simulate], y_test[:args.n_simulate]
    for n_bits in args.n_bits:
        row: dict[str, object] = {"model": args.model, "n_bits": n_bits,
                                  "rounding_bits": args.rounding_bits,
                                  "p_error": args.p_error, "library": "concrete-ml 1.9"}
        try:
            t0 = time.perf_counter()
            qm = compile_torch_model(
                model, X_calib, n_bits=n_bits, p_error=args.p_error,
                rounding_threshold_bits=_rounding(args.rounding_bits, args.rounding_method))
            row["compile_s"] = time.perf_counter() - t0
            circuit = qm.fhe_circuit
            row["pbs"] = int(circuit.programmable_bootstrap_count)
            row["max_bit_width"] = int(circuit.graph.maximum_integer_bit_width())
            clear = qm.forward(X_test, fhe="disable")
            row["accuracy_disable"] = float(np.mean(clear.argmax(1) == y_test))
            t0 = time.perf_counter()
            sim = qm.forward(X_test, fhe="simulate")
            row["simulate_s"] = time.perf_counter() - t0
            row["accuracy_simulate"] = float(np.mean(sim.argmax(1) == y_test))
            if args.n_execute > 0:
                t0 = time.perf_counter()
                circuit.keygen()
                row["keygen_s"] = time.perf_counter() - t0
                times = []
                for i in range(args.n_execute):
                    t0 = time.perf_counter()
                    qm.forward(X_test[i:i + 1], fhe="execute")
                    times.append(time.perf_counter() - t0)
                row["latency_s"] = float(np.median(times))
        except Exception as exc:  # report, keep going with the next n_bits
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Integer backend throughput vs float torch inference, and exactness vs brevitas.

For a few MLP shapes (trained briefly with QAT on synthetic data), measures samples/s
at batch 4096 of:

* ``numpy``: latentopt's numpy integer backend, the reference (quantize -> integer
  gemm/TLU -> dequantize, ``IntegerBackend.predict``),
* ``onnxruntime``: the same schedule rendered to ONNX (``OnnxRunner.run_integers``, with
  quantize / dequantize in numpy as the estimators do),
* ``integer``: what ``predict(fhe="disable")`` runs, :class:`ExactRuntime` (the faster of
  the two, chosen per circuit by measurement on the first large batch),
* ``torch float``: the same network as plain float ``nn.Linear`` layers (no quantizers),
* ``brevitas``: the QAT module's own fake-quantized forward pass,

and checks that the integer backend's integers equal brevitas' on that batch and that
onnxruntime's and the chosen runtime's output integers equal numpy's (asserted).  Median of
repeated timings, all in the same process and run, side by side.

    python benchmarks/integer_backend.py
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from timing import median_time

from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_runner import OnnxRunner
from latentopt.backends.runtime import ExactRuntime
from latentopt.nn.export import brevitas_trace, export_mlp
from latentopt.nn.mlp import QuantMLP
from latentopt.nn.train import seeded, train_module

warnings.filterwarnings("ignore")
BATCH = 4096


def bench(n_features: int, hidden: tuple[int, ...], n_out: int, bits: int) -> dict:
    rng = np.random.RandomState(0)
    X = rng.randn(2000, n_features)
    y = (X[:, : n_out] ** 2).argmax(1)
    with seeded(0):
        m = QuantMLP(n_features, hidden, n_out, n_w_bits=bits, n_a_bits=bits, n_input_bits=6)
        train_module(m, X, y, F.cross_entropy, max_epochs=3, lr=1e-2, seed=0)
    circuit = export_mlp(m)
    backend = IntegerBackend(circuit)
    Xb = rng.randn(BATCH, n_features)
    Xt = torch.as_tensor(Xb, dtype=torch.float32)
    float_net = m.float_copy().eval()
    runtime = ExactRuntime(circuit)
    qb = backend.quantize(Xb)
    ints = backend.run_integers(qb)
    assert np.array_equal(runtime.run_integers(qb), ints)  # measures and chooses here
    t_np = median_time(lambda: backend.predict(Xb))
    try:
        onnx = OnnxRunner(circuit)
    except ValueError:  # e.g. a lookup table too large to render: numpy only
        t_ort = float("nan")
    else:
        assert np.array_equal(np.asarray(onnx.run_integers(qb), np.int64), ints)
        t_ort = median_time(
            lambda: backend.dequantize(onnx.run_integers(backend.quantize(Xb))))
    t_int = median_time(lambda: runtime.predict(Xb))
    with torch.inference_mode():
        t_float = median_time(lambda: float_net(Xt))
        t_brev = median_time(lambda: m(Xt), repeats=5)
    out, values = backend.run_integers(backend.quantize(Xb), return_all=True)
    ref = brevitas_trace(m, Xb)
    exact = all(np.array_equal(values[k], ref[k]) for k in ref if k != "output")
    ref_int = np.rint(ref["output"] / circuit.output.scale).astype(np.int64)
    return {
        "shape": f"{n_features}-{'-'.join(map(str, hidden))}-{n_out}",
        "bits": bits,
        "numpy": BATCH / t_np,
        "onnxruntime": BATCH / t_ort,
        "integer": BATCH / t_int,
        "chosen": runtime.chosen,
        "torch float": BATCH / t_float,
        "brevitas": BATCH / t_brev,
        "exact": exact and np.array_equal(ref_int, out),
        "acc_bits": circuit.report().max_accumulator_bits,
    }


def main() -> None:
    print(f"torch threads: {torch.get_num_threads()}  batch: {BATCH}")
    print(f"{'network':18s} {'bits':>4s} {'acc bits':>8s} {'numpy/s':>9s} {'onnxrt/s':>9s} "
          f"{'integer/s':>11s} {'chosen':>11s} "
          f"{'torch float/s':>13s} {'brevitas/s':>11s} {'int/float':>9s} {'bit-exact':>9s}")
    for args in [(30, (64,), 2, 3), (64, (64,), 10, 3), (64, (128, 128), 10, 4),
                 (784, (256, 256), 10, 4), (784, (512, 512), 10, 8)]:
        r = bench(*args)
        print(f"{r['shape']:18s} {r['bits']:4d} {r['acc_bits']:8d} {r['numpy']:9.0f} "
              f"{r['onnxruntime']:9.0f} {r['integer']:11.0f} {r['chosen']:>11s} "
              f"{r['torch float']:13.0f} {r['brevitas']:11.0f} "
              f"{r['integer'] / r['torch float']:9.2f} {str(r['exact']):>9s}")


if __name__ == "__main__":
    main()

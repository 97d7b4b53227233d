"""Integer backend throughput vs float torch inference, and exactness vs brevitas.

For a few MLP shapes (trained briefly with QAT on synthetic data), measures samples/s
at batch 4096 of:

* ``numpy``: latentopt's numpy integer backend, the reference (quantize -> integer
  gemm/TLU -> dequantize, ``IntegerBackend.predict``),
* ``onnxruntime``: the same schedule rendered to ONNX (``OnnxRunner.run_integers``, with
  quantize / dequantize in numpy as the estimators do),
* ``int8``: the int8 onnxruntime rendering of :mod:`latentopt.backends.onnx_int8`
  (quantizer, ``uint8 x int8`` GEMMs with the lookups fused into their requantization,
  dequantizer; ``-`` where a circuit does not fit 8 bits),
* ``integer``: what ``predict(fhe="disable")`` runs, :meth:`ExactRuntime.predict` (the
  fastest exact one of numpy, onnxruntime and int8, chosen per circuit by measurement on
  the first large batch),
* ``torch float``: the same network as plain float ``nn.Linear`` layers (no quantizers),
* ``brevitas``: the QAT module's own fake-quantized forward pass,

and checks that the integer backend's integers equal brevitas' on that batch and
that onnxruntime's, int8's and the chosen runtime's outputs equal numpy's bit for bit
(asserted).  Median of
repeated timings, all in the same process and run, side by side.

    python benchmarks/integer_backend.py [--threads N]
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from timing import interleaved_medians, median_time

from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_int8 import int8_mlp_onnx
from latentopt.backends.onnx_runner import OnnxRunner
from latentopt.backends.runtime import ExactRuntime
from latentopt.nn.export import brevitas_trace, export_mlp
from latentopt.nn.mlp import QuantMLP
from latentopt.nn.train import seeded, train_module

warnings.filterwarnings("ignore")
BATCH = 4096
#: Threads of every runtime (torch, onnxruntime); numpy's BLAS follows OMP_NUM_THREADS.
THREADS = len(os.sched_getaffinity(0))


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
    runtime = ExactRuntime(circuit, intra_op_num_threads=THREADS)
    qb = backend.quantize(Xb)
    ints = backend.run_integers(qb)
    assert np.array_equal(runtime.run_integers(qb), ints)  # measures and chooses here
    try:
        onnx = OnnxRunner(circuit, intra_op_num_threads=THREADS)
    except ValueError:  # e.g. a lookup table too large to render: numpy only
        onnx = None
    else:
        assert np.array_equal(np.asarray(onnx.run_integers(qb), np.int64), ints)
    int8 = int8_mlp_onnx(circuit)
    sess = None
    if int8 is not None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = THREADS
        sess = ort.InferenceSession(int8.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        out8, ints8 = sess.run(None, {"input": Xb.astype(np.float32)})
        assert np.array_equal(ints8, ints) and np.array_equal(out8, backend.predict(Xb))
    assert np.array_equal(runtime.predict(Xb), backend.predict(Xb))  # chooses here
    with torch.inference_mode():
        t = interleaved_medians({
            "numpy": lambda: backend.predict(Xb),
            "onnxruntime": None if onnx is None else
            lambda: backend.dequantize(onnx.run_integers(backend.quantize(Xb))),
            "int8": None if sess is None else
            lambda: sess.run(None, {"input": Xb.astype(np.float32)}),
            "integer": lambda: runtime.predict(Xb),
            "torch float": lambda: float_net(Xt),
        })
        t["brevitas"] = median_time(lambda: m(Xt), repeats=5)
    out, values = backend.run_integers(backend.quantize(Xb), return_all=True)
    ref = brevitas_trace(m, Xb)
    exact = all(np.array_equal(values[k], ref[k]) for k in ref if k != "output")
    ref_int = np.rint(ref["output"] / circuit.output.scale).astype(np.int64)
    return {
        "shape": f"{n_features}-{'-'.join(map(str, hidden))}-{n_out}",
        "bits": bits,
        **{k: BATCH / v for k, v in t.items()},
        "chosen": runtime.chosen_predict,
        "exact": exact and np.array_equal(ref_int, out),
        "acc_bits": circuit.report().max_accumulator_bits,
    }


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="threads of torch and onnxruntime (default: all cores); set "
                             "OMP_NUM_THREADS alike for numpy's BLAS")
    THREADS = parser.parse_args().threads
    torch.set_num_threads(THREADS)
    print(f"torch threads: {torch.get_num_threads()}  batch: {BATCH}  "
          f"load average: {os.getloadavg()}")
    print(f"{'network':18s} {'bits':>4s} {'acc bits':>8s} {'numpy/s':>9s} {'onnxrt/s':>9s} "
          f"{'int8/s':>9s} {'integer/s':>10s} {'chosen':>16s} "
          f"{'torch float/s':>13s} {'brevitas/s':>11s} {'int/float':>9s} {'bit-exact':>9s}")
    for args in [(30, (64,), 2, 3), (64, (64,), 10, 3), (64, (128, 128), 10, 4),
                 (784, (256, 256), 10, 4), (784, (512, 512), 10, 8)]:
        r = bench(*args)
        print(f"{r['shape']:18s} {r['bits']:4d} {r['acc_bits']:8d} {r['numpy']:9.0f} "
              f"{r['onnxruntime']:9.0f} {r['int8']:9.0f} {r['integer']:10.0f} {r['chosen']:>16s} "
              f"{r['torch float']:13.0f} {r['brevitas']:11.0f} "
              f"{r['integer'] / r['torch float']:9.2f} {str(r['exact']):>9s}")


if __name__ == "__main__":
    main()

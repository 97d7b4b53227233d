"""onnxruntime throughput of exported circuits vs the integer backend.

Trains ``QuantizedMLPClassifier`` briefly on scikit-learn's digits for a few hidden
shapes, exports each circuit (plain, and rounded to 4-bit lookup inputs) with
:func:`latentopt.backends.onnx_export.circuit_to_onnx`, and measures samples/s at batch
4096 of

* ``integer``: ``IntegerBackend.predict`` (numpy),
* ``ort``: ``OnnxRunner.predict`` with onnxruntime's default intra-op threads,
* ``ort 1 thr``: the same with ``intra_op_num_threads=1``,
* ``gather``: default threads, every lookup exported as a gather (``lookup="gather"``;
  the default writes ReLU requantizations as ``Clip(Round(x * ratio))``),

side by side in one run (median of repeated timings), after checking that onnxruntime's
outputs equal the integer backend's on that batch.

    python benchmarks/onnx_throughput.py
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from timing import median_time

from latentopt import QuantizedMLPClassifier
from latentopt.backends.integer import IntegerBackend
from latentopt.backends.onnx_export import OnnxRunner, circuit_to_onnx

warnings.filterwarnings("ignore")
BATCH = 4096


def main() -> None:
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    rng = np.random.default_rng(0)
    Xb = X[rng.integers(0, len(X), BATCH)] + rng.normal(0, 0.1, (BATCH, X.shape[1]))
    print(f"cpus: {os.cpu_count()}  batch: {BATCH}  (samples/s, median of 15)")
    print(f"{'network':14s} {'circuit':8s} {'carrier':8s} {'integer/s':>10s} {'ort/s':>10s} "
          f"{'ort 1thr/s':>10s} {'gather/s':>10s} {'ort/int':>7s} {'exact':>5s}")
    for hidden in [(64,), (256, 256)]:
        est = QuantizedMLPClassifier(hidden_layer_sizes=hidden, max_epochs=3, verbose=0,
                                     random_state=0).fit(X, y)
        plain = est.circuit_
        rounded = plain.with_rounding(plain.rounding_lsbs(4))
        for label, circuit in (("plain", plain), ("round4", rounded)):
            backend = IntegerBackend(circuit)
            model = circuit_to_onnx(circuit)
            ort = OnnxRunner(model)
            ort1 = OnnxRunner(model, intra_op_num_threads=1)
            gather = OnnxRunner(circuit_to_onnx(circuit, lookup="gather"))
            ints = backend.run_integers(backend.quantize(Xb))
            exact = np.array_equal(ort.predict(Xb), backend.predict(Xb)) and all(
                np.array_equal(r.run(Xb)[1], ints) for r in (ort1, gather)
            )
            t_int = median_time(lambda b=backend: b.predict(Xb))
            t_ort = median_time(lambda r=ort: r.predict(Xb))
            t_ort1 = median_time(lambda r=ort1: r.predict(Xb))
            t_gather = median_time(lambda r=gather: r.predict(Xb))
            carrier = {p.key: p.value for p in model.metadata_props}["latentopt.carrier"]
            shape = f"64-{'-'.join(map(str, hidden))}-10"
            print(f"{shape:14s} {label:8s} {carrier:8s} {BATCH / t_int:10.0f} "
                  f"{BATCH / t_ort:10.0f} {BATCH / t_ort1:10.0f} {BATCH / t_gather:10.0f} "
                  f"{t_int / t_ort:7.2f} "
                  f"{str(exact):>5s}")


if __name__ == "__main__":
    main()

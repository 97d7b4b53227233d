"""Calibration micro-benchmarks of the latency cost model (:mod:`.cost`).

Small one-layer MLP circuits, shaped like what the estimators compile, are compiled,
keyed and timed with real encryption; :meth:`.cost.CostModel.calibrate` fits the model
to these timings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .profile import circuit_profile

__all__ = ["calibration_circuit", "measure_point", "time_execute"]


def calibration_circuit(bits: int, width: int, n_features: int = 8,
                        seed: int = 0) -> tuple[Any, np.ndarray]:
    """A one-hidden-layer MLP circuit whose ``width`` lookups read ``bits``-bit inputs.

    5-bit inputs, random 3-bit weights, a ~9-bit accumulator rounded (approximately) to
    ``bits`` bits, a per-channel ReLU table with 3-bit outputs, a 2-output gemm: the shape
    of what the estimators compile, so concrete picks the same kinds of parameter sets.
    Returns the circuit and quantized calibration inputs.
    """
    from ..backends.integer import IntegerBackend
    from ..ir import Circuit, Dequantize, Gemm, QuantActivation, QuantizeInput, TableLookup

    rng = np.random.default_rng(seed)
    act = QuantActivation("relu", input_scale=rng.uniform(0.05, 0.1, width),
                          output_scale=np.asarray(0.5), n_bits=3, signed=False)
    circuit = Circuit([
        QuantizeInput("q", ("input",), np.asarray(0.25), np.asarray(0), 5, signed=True),
        Gemm("fc1", ("q",), rng.integers(-3, 4, (width, n_features))),
        TableLookup("act", ("fc1",), act),
        Gemm("fc2", ("act",), rng.integers(-3, 4, (2, width))),
        Dequantize("out", ("fc2",), np.asarray(1.0), np.asarray(0)),
    ], n_features=n_features)
    X = rng.normal(0.0, 2.0, (200, n_features))
    circuit = IntegerBackend(circuit).calibrate(X)
    circuit = circuit.with_rounding(circuit.rounding_lsbs(bits), method="approximate")
    return circuit, IntegerBackend(circuit).quantize(X)


def time_execute(fhe_circuit: Any, q: np.ndarray, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (all threads) of ``repeats`` runs of ``execute(q)``."""
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fhe_circuit.execute(q)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def measure_point(bits: int, p_error: float, width: int, n_features: int = 8, *,
                  repeats: int = 3, concurrent: bool = True,
                  insecure_key_cache: str | Path | None = None) -> list[dict[str, Any]]:
    """Compile (automatic batch size ``B``, as the estimators do), keygen and time one
    calibration circuit: one record per sample count.

    ``execute`` runs 1 sample (one ``single`` call) and ``B`` samples (one ``batch``
    call) and, if ``concurrent`` and cheap, 2 and ``2 B`` samples (two calls at once),
    after a first untimed run that decompresses the evaluation keys.
    """
    from ..backends.fhe import FHECircuit

    circuit, q = calibration_circuit(bits, width, n_features)
    fc = FHECircuit.compile(circuit, q, p_error=p_error, insecure_key_cache=insecure_key_cache)
    profile, batch = circuit_profile(fc), fc.batch_size
    fc.keygen()
    fc.execute(q[:1])
    probe = min(time_execute(fc, q[:1], 1)[0])
    counts = [1, batch] + ([2, 2 * batch] if concurrent and probe * batch < 0.5 else [])
    records = []
    for n in counts:
        wall, cpu = time_execute(fc, np.resize(q, (n, n_features)),
                                 repeats if probe * n < 1.5 else max(1, repeats - 1))
        records.append({"bits": bits, "p_error": p_error, "width": width,
                        "n_features": n_features, "n_samples": n, "profile": profile,
                        "seconds": wall, "cpu_seconds": cpu})
    return records

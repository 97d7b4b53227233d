"""Latency cost model of compiled FHE circuits, calibrated per machine.

Predicts the encrypted latency (seconds per sample: encrypt, run and decrypt, as
:meth:`FHECircuit.execute <latentopt.backends.fhe.FHECircuit.execute>` does it) of a
compiled circuit *before key generation*, from the statistics concrete reports at
compile time: programmable bootstrappings (PBS) and key switches per crypto parameter
set and per layer.

Model (per call of a compiled function, ``single`` or ``batch``)::

    work = c_call + sum over table-lookup ops [ c_op(N) + count * t_pbs(params) ]
                  + c_in * input ciphertexts                       (CPU seconds)
    wall = work, with each op's ``count * t_pbs`` divided by min(count, P)
    t_pbs = n * [a_fft * (k+1)(l+1) N log2 N + a_mac * (k+1)^2 l N]
            + a_ks * (k N) l_ks n                                  (PBS + key switch)
    c_op  = o_0 + o_1 * N

with ``N`` the polynomial size, ``k`` the GLWE dimension, ``n`` the LWE dimension and
``l`` the decomposition level concrete picked.  The PBS cost is the operation count of
a Fourier-domain bootstrapping (forward and inverse FFTs, then multiply-accumulates with
the bootstrapping key); ``c_op`` is the per-op set-up the runtime pays once per lookup
tensor and per call (it grows with ``N``: a lone PBS costs 2-4x a PBS within a tensor);
``P`` is the effective number of cores.  ``execute`` runs up to two calls at once, so
``n`` samples cost ``max(sum work / P, sum wall / jobs)``.  The coefficients are fitted
(log-space least squares, robust loss) on micro-benchmarks of tiny IR circuits (one
gemm and one table lookup layer) executed with real keys; see :meth:`CostModel.calibrate`.

Calibration results are cached as JSON in ``$LATENTOPT_CACHE_DIR``, else
``$XDG_CACHE_HOME/latentopt``, else ``~/.cache/latentopt``, together with the machine's
fingerprint (CPU model, core count, concrete-python version): a model calibrated
elsewhere is never used silently.

Examples
--------
>>> model = CostModel.load_or_calibrate(grid="quick", verbose=0)   # doctest: +SKIP
>>> model.predict(fhe_circuit)        # seconds per sample, no keygen    # doctest: +SKIP
0.41
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CACHE_ENV",
    "GRIDS",
    "CostModel",
    "FingerprintMismatchError",
    "cache_dir",
    "circuit_profile",
    "machine_fingerprint",
]

#: Environment variable overriding the cache directory.
CACHE_ENV = "LATENTOPT_CACHE_DIR"
#: Bumped whenever the JSON layout or the model form changes.
FORMAT_VERSION = 1
#: Fingerprint entries that must match for a stored model to be used.
FINGERPRINT_KEYS = ("cpu_model", "cpu_count", "concrete_python", "format_version")
#: Concurrent encrypted calls in ``FHECircuit.execute`` (its default ``n_jobs``).
EXECUTE_JOBS = 2

#: Calibration grids: (TLU input bits, p_error, lookups per sample), run with batch size 4.
#: "quick" covers the small parameter sets (N <= 2048) in about 20 s; "default" also
#: the large ones (N up to 8192) in a few minutes.
GRIDS: dict[str, list[tuple[int, float, int]]] = {
    "quick": [(3, 1e-2, 1), (3, 1e-2, 16), (6, 1e-2, 8), (5, 1e-5, 4)],
    "default": [
        (2, 1e-2, 1), (2, 1e-2, 24), (3, 1e-2, 8), (4, 1e-2, 1), (4, 1e-2, 16),
        (5, 1e-2, 8), (6, 1e-2, 1), (6, 1e-2, 12), (7, 1e-2, 4), (8, 1e-1, 1),
        (8, 1e-1, 4), (3, 1e-5, 1), (3, 1e-5, 16), (4, 1e-5, 8), (5, 1e-5, 8),
        (6, 1e-5, 1), (6, 1e-5, 8), (7, 1e-5, 2),
    ],
}
CALIBRATION_BATCH = 4


class FingerprintMismatchError(RuntimeError):
    """A stored cost model was calibrated on another machine or concrete version."""


# ------------------------------------------------------------------ fingerprint, cache
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_fingerprint() -> dict[str, Any]:
    """What a calibration depends on: CPU model and cores, concrete-python version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        concrete = version("concrete-python")
    except PackageNotFoundError:  # pragma: no cover - concrete is needed to calibrate
        concrete = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": _cpu_model(), "cpu_count": int(cores or 1),
            "concrete_python": concrete, "format_version": FORMAT_VERSION,
            "machine": platform.machine(), "system": platform.system()}


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache directory: ``path``, else ``$LATENTOPT_CACHE_DIR``, else the user's."""
    if path is not None:
        return Path(path)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "latentopt"


def _mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [f"{k}: {stored.get(k)!r} (stored) != {current.get(k)!r} (here)"
            for k in FINGERPRINT_KEYS if stored.get(k) != current.get(k)]


# --------------------------------------------------------------------------- profiles
def _get(obj: Any, name: str) -> int:
    value = getattr(obj, name)
    return int(value() if callable(value) else value)


def _function_profile(stats: dict[str, Any], dims: list[int]) -> dict[str, Any]:
    """JSON-able summary of one compiled function: its PBS ops and key switches."""
    ops: list[list[int]] = []  # [N, k, n, l, count] per (tag, parameter set)
    seen = 0
    for per_param in stats.get("programmable_bootstrap_count_per_tag_per_parameter", {}).values():
        for p, count in per_param.items():
            ops.append([_get(p, "polynomial_size"), _get(p, "glwe_dimension"),
                        _get(p, "input_lwe_dimension"), _get(p, "level"), int(count)])
            seen += int(count)
    if seen < int(stats.get("programmable_bootstrap_count", 0)):  # untagged lookups
        for p, count in stats.get("programmable_bootstrap_count_per_parameter", {}).items():
            tagged = sum(o[4] for o in ops if o[:4] == [
                _get(p, "polynomial_size"), _get(p, "glwe_dimension"),
                _get(p, "input_lwe_dimension"), _get(p, "level")])
            if int(count) > tagged:
                ops.append([_get(p, "polynomial_size"), _get(p, "glwe_dimension"),
                            _get(p, "input_lwe_dimension"), _get(p, "level"),
                            int(count) - tagged])
    ks: list[list[int]] = []  # [input dim, output dim, level, count]
    for p, count in stats.get("key_switch_count_per_parameter", {}).items():
        try:
            d_in, d_out = dims[_get(p, "input_secret_key_id")], dims[_get(p, "output_secret_key_id")]
        except (AttributeError, IndexError, TypeError):  # pragma: no cover - older concrete
            d_in, d_out = max(dims, default=0), min(dims, default=0)
        ks.append([int(d_in), int(d_out), _get(p, "level"), int(count)])
    return {"ops": ops, "ks": ks, "inputs": int(stats.get("size_of_inputs", 0))}


def circuit_profile(fhe_circuit: Any) -> dict[str, Any]:
    """What the cost model reads from a compiled :class:`FHECircuit` (no keys needed).

    Returns ``{"batch_size": B, "n_features": F, "functions": {"single": ..., "batch":
    ...}}`` where each function lists its lookup ops ``[N, k, n, l, count]`` (one per
    layer and crypto parameter set) and key switches ``[dim_in, dim_out, level, count]``.
    """
    module = fhe_circuit.module
    try:
        dims = [_get(s, "dimension")
                for s in module.server.program_info.get_keyset_info().secret_keys()]
    except Exception:  # pragma: no cover - keyset layout not exposed
        dims = []
    functions = {name: _function_profile(stats, dims)
                 for name, stats in module.statistics["functions"].items()}
    return {"batch_size": int(fhe_circuit.batch_size),
            "n_features": int(fhe_circuit.circuit.n_features), "functions": functions}


def _calls(n: int, batch_size: int) -> list[str]:
    """Function names of the calls ``execute`` makes for ``n`` samples."""
    from ..backends.fhe_lowering import plan_calls  # numpy only, no concrete

    return [name for _, _, name in plan_calls(n, batch_size)]


# ------------------------------------------------------------------------ calibration
def calibration_circuit(bits: int, width: int, n_features: int = 4, seed: int = 0) -> Any:
    """One gemm + one table-lookup layer whose lookups read exactly ``bits``-bit inputs.

    Channel ``i`` of the gemm copies feature ``i % n_features`` (unsigned ``bits``-bit
    inputs), a per-channel ReLU table (2-bit outputs) follows, a second gemm sums it.
    """
    from ..ir import Circuit, Dequantize, Gemm, QuantActivation, QuantizeInput, TableLookup

    rng = np.random.default_rng(seed)
    w1 = np.zeros((width, n_features), dtype=np.int64)
    w1[np.arange(width), np.arange(width) % n_features] = 1
    top = float(2**bits - 1)
    act = QuantActivation("relu", input_scale=rng.uniform(0.5, 1.0, width) * 3.0 / top,
                          output_scale=1.0, n_bits=2, signed=False)
    return Circuit([
        QuantizeInput("q", ("input",), 1.0, 0, bits, signed=False),
        Gemm("fc1", ("q",), w1),
        TableLookup("act", ("fc1",), act),
        Gemm("fc2", ("act",), np.ones((2, width), dtype=np.int64)),
        Dequantize("out", ("fc2",), 1.0, 0),
    ], n_features=n_features)


def _time_execute(fc: Any, q: np.ndarray, n: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (all threads) of ``repeats`` executions of ``n`` samples."""
    rows = np.resize(q, (n, q.shape[1]))
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fc.execute(rows)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def measure_point(bits: int, p_error: float, width: int, *, batch_size: int = CALIBRATION_BATCH,
                  repeats: int = 3, insecure_key_cache: str | Path | None = None
                  ) -> list[dict[str, Any]]:
    """Compile, keygen and time one calibration circuit; one record per sample count.

    ``execute`` is timed on 1 sample (one ``single`` call), on ``batch_size`` samples
    (one ``batch`` call) and, for cheap circuits, on 2 and ``2 * batch_size`` samples
    (two concurrent calls).  Keys are decompressed by a first, untimed run.
    """
    from ..backends.fhe import FHECircuit

    circuit = calibration_circuit(bits, width)
    top = 2**bits
    q = np.repeat(np.arange(top, dtype=np.int64)[:, None], circuit.n_features, axis=1)
    fc = FHECircuit.compile(circuit, q, p_error=p_error, batch_size=batch_size,
                            insecure_key_cache=insecure_key_cache)
    profile = circuit_profile(fc)
    fc.keygen()
    fc.execute(q[:1])  # first run: decompresses the evaluation keys
    counts = [1, batch_size]
    probe = min(_time_execute(fc, q, 1, 1)[0])
    if probe * batch_size < 1.0:  # cheap enough to also time concurrent calls
        counts += [2, 2 * batch_size]
    records = []
    for n in counts:
        reps = repeats if probe * n < 2.0 else max(1, repeats - 1)
        wall, cpu = _time_execute(fc, q, n, reps)
        records.append({"bits": bits, "p_error": p_error, "width": width, "n_samples": n,
                        "profile": profile, "seconds": wall, "cpu_seconds": cpu})
    return records

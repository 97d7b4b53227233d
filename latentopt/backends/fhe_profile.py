"""Where the time of one encrypted prediction goes: a latency breakdown and its floor.

:func:`profile_execution` runs one sample through a compiled
:class:`~latentopt.backends.fhe.FHECircuit` ``repeats`` times and times each stage
separately (median seconds): ``encrypt`` (client), ``run`` (server: input
decompression, linear layers, key switches and bootstraps) and ``decrypt`` (client).
The estimators' :meth:`~latentopt.sklearn.base.QuantizedEstimatorBase.fhe_profile`
(:func:`latentopt.sklearn.lowering.profile_predict`) adds the client's Python
around it: ``quantize`` (float features to integers), the
``range check`` of calibrated circuits, ``dequantize`` and the rest of ``predict``.

How each number is obtained
---------------------------
* **Measured**: every stage above; ``first_run``, the first server run after key
  generation when this call generated the keys (concrete decompresses the seeded
  evaluation keys on it, so ``key decompression`` = first run - steady run; ``None``
  when the keys were already warm: :meth:`FHECircuit.keygen` warms them up by default,
  ``info["warmup_seconds"]``); ``evaluation_keys_serialized``, the bytes of
  the evaluation keys as shipped (seeded when compressed), beside concrete's
  ``size_of_evaluation_keys`` (their size in memory, uncompressed).
* **Modelled** (needs a calibrated :class:`~latentopt.search.cost.CostModel`): the
  split of the server run (:func:`latentopt.search.profile.critical_path`).  From
  concrete's compile-time statistics, per layer (concrete tags each layer's
  operations), the number of bootstraps and key switches and their crypto parameters;
  the cost model gives one core's seconds per bootstrap (FFT and multiply-accumulate
  work of ``N, k, n, l``) and per key switch.  A layer's lookups are independent, so
  they spread over ``min(cores, count)`` cores; layers run one after the other.
  ``pbs`` and ``key switch`` are these critical-path times, ``linear`` the model's
  levelled-operation term (additions and clear multiplications, one core), and
  ``other`` the measured run minus the three (input decompression, scheduling, the
  runtime's call overhead, model error: it can be negative).
* **Floor**: the lookups (bootstrap and its key switch) on the critical path, divided
  over the cores: sum over layers of ``count * (t_pbs + t_ks) / min(cores, count)``.
  No implementation of this circuit on this machine can be faster per sample.

Examples
--------
>>> p = fhe_circuit.profile(q[:1])          # doctest: +SKIP
>>> print(p.table())                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LatencyProfile", "available_cores", "evaluation_keys_bytes", "profile_execution"]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class LatencyProfile:
    """Seconds per sample of one encrypted prediction, stage by stage.

    Attributes
    ----------
    stages : dict
        Measured medians (seconds), in the order they happen.
    server : dict
        Modelled split of the ``run`` stage: ``pbs``, ``key switch``, ``linear``, ``key
        conversion`` (concrete's runtime converts the bootstrap keys to the Fourier domain
        on every call, serially) and ``other`` (seconds; empty without a cost model).
    floor : float or None
        Lookups on the critical path over the cores (seconds; ``None`` without a cost
        model).
    first_run : float or None
        The first server run after key generation (``None``: keys were already warm).
    total : float
        Measured end-to-end seconds (the sum of the stages unless a caller measured the
        whole call itself).
    info : dict
        ``function``, ``pbs_count``, ``cores``, ``repeats``, key sizes, per-layer rows.
    """

    stages: dict[str, float]
    server: dict[str, float] = field(default_factory=dict)
    floor: float | None = None
    first_run: float | None = None
    total: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-friendly)."""
        return {"stages": dict(self.stages), "server": dict(self.server), "floor": self.floor,
                "first_run": self.first_run, "total": self.total, "info": dict(self.info)}

    def table(self) -> str:
        """The breakdown as aligned text, milliseconds and share of the total."""
        total = self.total or sum(self.stages.values())
        lines = [f"{'stage':24s} {'ms':>9s} {'share':>6s}"]
        for name, sec in self.stages.items():
            lines.append(f"{name:24s} {1e3 * sec:9.2f} {sec / total:6.1%}")
            if name == "run":
                for part, s in self.server.items():
                    lines.append(f"  {part + ' (model)':22s} {1e3 * s:9.2f} {s / total:6.1%}")
        lines.append(f"{'total':24s} {1e3 * total:9.2f}")
        if self.first_run is not None:
            lines.append(f"{'first run after keygen':24s} {1e3 * self.first_run:9.2f}")
        if self.floor is not None:
            lines.append(f"{'floor (PBS / cores)':24s} {1e3 * self.floor:9.2f}   "
                         f"total/floor {total / self.floor:.2f}x")
            keys = self.server.get("key conversion")
            if keys:
                per_call = self.floor + keys
                lines.append(f"{'floor + key conversion':24s} {1e3 * per_call:9.2f}   "
                             f"total/that {total / per_call:.2f}x")
        return "\n".join(lines)


def _median(times: list[float]) -> float:
    return float(statistics.median(times))


def profile_execution(fhe_circuit: Any, q: np.ndarray, repeats: int = 5,
                      cost_model: Any = None, cores: int | None = None) -> LatencyProfile:
    """Time one sample's encryption, server run and decryption on ``fhe_circuit``.

    Keys are generated first if needed; the first run after that is reported as
    ``first_run``.

    Parameters
    ----------
    fhe_circuit : FHECircuit
    q : int array of shape (1, n_features)
        One quantized sample (the first row is used).
    repeats : int
        Timed runs; stages are medians.
    cost_model : CostModel, optional
        For the modelled split of the server run and the floor (left out when ``None``):
        its ``critical_path`` method (:func:`latentopt.search.profile.critical_path`).
    cores : int, optional
        Cores for the floor (default: those this process may use).

    """
    q = fhe_circuit.check_inputs(np.asarray(q)[:1])
    cold = not fhe_circuit.keys_generated or not getattr(fhe_circuit, "warm", True)
    fhe_circuit.keygen(warm=False)  # (no-op with keys) the first run is measured below
    fn = fhe_circuit._functions["single"]
    first_run = None
    if cold:
        encrypted = fn.encrypt(q)
        t0 = time.perf_counter()
        fn.run(encrypted)
        first_run = time.perf_counter() - t0
        fhe_circuit.warm = True
    enc, run, dec = [], [], []
    out = None
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        encrypted = fn.encrypt(q)
        t1 = time.perf_counter()
        result = fn.run(encrypted)
        t2 = time.perf_counter()
        out = fn.decrypt(result)
        t3 = time.perf_counter()
        enc.append(t1 - t0)
        run.append(t2 - t1)
        dec.append(t3 - t2)
    stages = {"encrypt": _median(enc), "run": _median(run), "decrypt": _median(dec)}
    cores = int(cores or available_cores())
    report = fhe_circuit.report
    info: dict[str, Any] = {
        "function": "single", "repeats": int(repeats), "cores": cores,
        "pbs_count": int(report["programmable_bootstrap_count"]),
        "size_of_evaluation_keys": int(report.get("size_of_evaluation_keys", 0)),
        "evaluation_keys_serialized": evaluation_keys_bytes(fhe_circuit),
        "output": np.asarray(out).tolist(),
    }
    server: dict[str, float] = {}
    floor = None
    if cost_model is not None:
        pbs, ks, linear, rows = cost_model.critical_path(fhe_circuit, cores)
        keys = cost_model.key_conversion(fhe_circuit)
        server = {"pbs": pbs, "key switch": ks, "linear": linear, "key conversion": keys,
                  "other": stages["run"] - pbs - ks - linear - keys}
        floor = pbs + ks
        info["layers"] = rows
    if first_run is not None:
        info["key_decompression"] = max(0.0, first_run - stages["run"])
    elif "warmup_seconds" in report:  # paid by keygen's warm-up instead
        info["warmup_seconds"] = float(report["warmup_seconds"])
    return LatencyProfile(stages=stages, server=server, floor=floor, first_run=first_run,
                          total=math.fsum(stages.values()), info=info)


def evaluation_keys_bytes(fhe_circuit: Any) -> int | None:
    """Bytes of the serialized evaluation keys (what a client ships to the server)."""
    keys = fhe_circuit.module.keys
    if keys is None or not keys.are_generated:
        return None
    return len(keys.evaluation.serialize())

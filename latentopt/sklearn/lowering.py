"""A fitted estimator lowered to TFHE at a fixed point, and the timing of one prediction.

:func:`compile_at` is :meth:`~latentopt.sklearn.base.QuantizedEstimatorBase.compile` at
given rounding and ``p_error`` (the ``"auto"`` path is
:func:`latentopt.search.inner.compile_searched`, which ends here too): recalibrate the
circuit on ``X`` if given, round its lookups layer by layer, lower it with
:class:`~latentopt.backends.fhe.FHECircuit` and set the estimator's compiled attributes.
:func:`profile_predict` is the estimators' ``fhe_profile``: the circuit's stage timing
(:func:`latentopt.backends.fhe_profile.profile_execution`) plus the estimator's own
Python around it.  Both read estimator internals, so they live on the estimator side,
not in the backends.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..backends.fhe_profile import LatencyProfile

__all__ = ["compile_at", "profile_predict"]


def compile_at(est: Any, X: Any, options: dict[str, Any], verbose: int) -> Any:
    """Compile fitted ``est`` with ``options`` (``compile``'s keyword arguments, checked
    and with ``equalize`` a bool); ``X`` (or ``calibration_set_`` when None) calibrates
    the ranges.  Sets ``fhe_circuit_``, ``rounded_circuit_``, ``fhe_report_``,
    ``compile_options_`` and ``compile_inputset_``; returns ``est``."""
    from ..backends.integer import IntegerBackend

    if X is None:
        X_cal = est.calibration_set_
        circuit = est.circuit_
    else:
        X_cal = est._validate_X(X, reset=False)
        circuit = IntegerBackend(est.circuit_).calibrate(X_cal)
    if options["rounding_bits"] is not None:  # measured layer by layer on the calibration set
        circuit = IntegerBackend(circuit).round_lookups(
            circuit.input_quantizer.apply(X_cal), options["rounding_bits"],
            method=options["rounding_method"],
            ranges="calibrated" if options["range_mode"] == "calibrated" else "worst_case",
            margin=options["range_margin"], equalize=options["equalize"])
    q = circuit.input_quantizer.apply(X_cal)
    fhe_circuit = est._lower_to_fhe(circuit, q, options, verbose)
    est.fhe_circuit_ = fhe_circuit
    est.rounded_circuit_ = circuit
    est.fhe_report_ = fhe_circuit.report  # the same dict: keygen adds its seconds to it
    est.compile_options_ = options
    est.compile_inputset_ = None if X is None else np.asarray(q)
    return est


def _median(times: list[float]) -> float:
    return float(statistics.median(times))


def profile_predict(est: Any, X: Any, repeats: int = 5, cost_model: Any = None) -> LatencyProfile:
    """An estimator's ``fhe_profile``: the circuit's
    :func:`~latentopt.backends.fhe_profile.profile_execution` plus the
    estimator's own stages, timed on the first row of ``X`` (quantize, range check,
    dequantize, and the rest of ``predict(X[:1], fhe="execute")`` as ``python``)."""
    fhe_circuit = est._fhe("fhe_profile()")
    X1 = np.asarray(X)[:1]
    backend = est._integer_backend()
    t_quant, t_check, t_deq, t_total = [], [], [], []
    q = backend.quantize(est._validate_X(X1, reset=False))
    profile = fhe_circuit.profile(q, repeats=repeats, cost_model=cost_model)
    out = np.asarray(profile.info["output"], dtype=np.int64) + fhe_circuit.plan.output_offset
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        q = backend.quantize(est._validate_X(X1, reset=False))
        t1 = time.perf_counter()
        if fhe_circuit.report["range_mode"] == "calibrated":
            fhe_circuit.overflows(q)
        t2 = time.perf_counter()
        backend.dequantize(out)
        t3 = time.perf_counter()
        est.predict(X1, fhe="execute")
        t4 = time.perf_counter()
        t_quant.append(t1 - t0)
        t_check.append(t2 - t1)
        t_deq.append(t3 - t2)
        t_total.append(t4 - t3)
    total = _median(t_total)
    stages = {"quantize": _median(t_quant), "range check": _median(t_check),
              **profile.stages, "dequantize": _median(t_deq)}
    stages["python"] = max(0.0, total - sum(stages.values()))
    profile.stages = stages
    profile.total = max(total, sum(stages.values()))
    return profile

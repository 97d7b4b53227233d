"""What the cost model reads from a compiled circuit, and how it turns it into seconds.

:func:`circuit_profile` extracts, from concrete's compile-time statistics (no keys
needed), every function's lookup ops (crypto parameters and counts), key switches,
levelled (linear) operations and input ciphertexts.  The crypto parameters are the ones
concrete chose for the *whole* circuit, so the precision carried before rounding is
accounted for: a 17-bit accumulator rounded to 6 bits gets a larger decomposition level
(or, with exact rounding, extra PBS) than a 10-bit one rounded to the same 6 bits, and
its linear operations run on ciphertexts of the same (large) dimension.

The model's terms for one call of a function, with coefficients ``theta`` in the order
of :data:`latentopt.search.cost.COEFFICIENTS`::

    serial = c_call + c_setup * keys + c_in * inputs * input dim + c_lin * linear ops * dim
    pbs    = count * n * (c_fft * (k+1) (l+1) N log2 N + c_mac * (k+1)^2 l N)
    ks     = count * c_ks * dim_in * level * dim_out

``keys`` is the work of converting every bootstrap key of the circuit's keyset to the
Fourier domain, ``sum n (k+1)^2 l N log2 N`` over its distinct parameter sets: concrete's
runtime does it on every call (its ``RuntimeContext`` is built per call from the
standard-domain server keyset), on one core, whatever the number of lookups.  On a
2-core EPYC it costs about 45 ms per call for a 111 MiB key (``N=1024, k=2, l=1``) and
85 ms for a 223 MiB one (``l=2``): more than eight 5-bit lookups spread over both cores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Terms", "circuit_profile", "combine", "critical_path", "key_work",
           "layer_lookups", "predict_profile", "synthetic_profile"]

Terms = tuple[float, list[tuple[float, float]]]  # serial s, [(parallel s, items)]
#: Concurrent encrypted calls of ``FHECircuit.execute`` (its default ``n_jobs``).
EXECUTE_JOBS = 2
#: Levelled operations counted by the linear term (all cost about one pass over a ciphertext).
LINEAR_STATS = ("encrypted_addition_count_per_parameter",
                "clear_multiplication_count_per_parameter",
                "clear_addition_count_per_parameter",
                "encrypted_negation_count_per_parameter")


def _get(obj: Any, name: str) -> int:
    value = getattr(obj, name)
    return int(value() if callable(value) else value)


def _params(p: Any) -> list[int]:
    return [_get(p, a) for a in ("polynomial_size", "glwe_dimension", "input_lwe_dimension",
                                 "level")]


def circuit_profile(fhe_circuit: Any) -> dict[str, Any]:
    """What the cost model reads from a compiled :class:`FHECircuit` (no keys needed).

    ``{"batch_size": B, "functions": {"single": f, "batch": f}}``, each ``f`` with its
    lookup ops ``[N, k, n, l, count]`` (one per layer and parameter set), key switches
    ``[dim_in, dim_out, level, count]``, input ciphertexts and their LWE dimension, and
    ``linear``: levelled operations times their ciphertexts' dimension.
    """
    module, batch = fhe_circuit.module, int(fhe_circuit.batch_size)
    info = module.server.program_info
    dims = [_get(s, "dimension") for s in info.get_keyset_info().secret_keys()]
    functions = {}
    for name, st in module.statistics["functions"].items():
        ops = [[*_params(p), int(c)]
               for per_param in st["programmable_bootstrap_count_per_tag_per_parameter"].values()
               for p, c in per_param.items()]
        for p, count in st["programmable_bootstrap_count_per_parameter"].items():
            rest = int(count) - sum(o[4] for o in ops if o[:4] == _params(p))
            if rest > 0:  # untagged lookups
                ops.append([*_params(p), rest])
        ks = [[dims[_get(p, "input_secret_key_id")], dims[_get(p, "output_secret_key_id")],
               _get(p, "level"), int(c)] for p, c in st["key_switch_count_per_parameter"].items()]
        linear = sum(int(c) * _get(p, "dimension")
                     for key in LINEAR_STATS for p, c in st.get(key, {}).items())
        m = batch if name == "batch" else 1
        functions[name] = {"ops": ops, "ks": ks, "linear": linear,
                           "inputs": m * int(fhe_circuit.circuit.n_features),
                           "input_dim": dims[info.input_keyid_at(0, name)]}
    return {"batch_size": batch, "functions": functions}


def synthetic_profile(op: Sequence[int], n_pbs: int, n_features: int, input_dim: int,
                      batch_size: int = 1, ks: Sequence[int] | None = None,
                      linear_per_sample: int = 0) -> dict[str, Any]:
    """A profile of ``n_pbs`` lookups per sample with one parameter set ``op = [N, k, n, l]``.

    Used for bounds before anything is compiled (:meth:`CostModel.lower_bound`).
    ``ks = [dim_in, dim_out, level]``: one key switch per lookup, if given.
    """
    def fn(m: int) -> dict[str, Any]:
        return {"ops": [[*op[:4], n_pbs * m]] if n_pbs else [],
                "ks": [[*ks[:3], n_pbs * m]] if ks is not None and n_pbs else [],
                "linear": linear_per_sample * m, "inputs": n_features * m,
                "input_dim": input_dim}

    functions = {"single": fn(1)}
    if batch_size > 1:
        functions["batch"] = fn(batch_size)
    return {"batch_size": batch_size, "functions": functions}


def _op_work(op: Sequence[float]) -> np.ndarray:
    """(FFT, multiply-accumulate) operations of ``count`` PBS, in 10^9."""
    N, k, n, level, count = op
    return count * 1e-9 * np.array([n * (k + 1) * (level + 1) * N * math.log2(N),
                                    n * (k + 1) ** 2 * level * N])


def key_work(profile: dict[str, Any]) -> float:
    """10^9 operations of converting the keyset's bootstrap keys to the Fourier domain:
    ``sum n (k+1)^2 l N log2 N`` over the distinct ``[N, k, n, l]`` of all functions."""
    keys = {tuple(int(v) for v in op[:4]) for f in profile["functions"].values()
            for op in f["ops"]}
    return 1e-9 * sum(n * (k + 1) ** 2 * lv * N * math.log2(N) for N, k, n, lv in keys)


def _profile_terms(f: dict[str, Any], theta: np.ndarray, keys: float = 0.0) -> Terms:
    serial = theta[0] + theta[1] * keys
    serial += theta[2] * f["inputs"] * f["input_dim"] * 1e-6
    if len(theta) > 6:
        serial += theta[6] * f.get("linear", 0) * 1e-9
    groups = [(float(_op_work(op) @ theta[3:5]), float(op[4])) for op in f["ops"]]
    groups += [(theta[5] * c * d_in * lv * d_out * 1e-9, float(c))
               for d_in, d_out, lv, c in f["ks"]]
    return float(serial), groups


def _calls(n: int, batch: int) -> list[str]:
    """The functions ``execute`` calls for ``n`` samples."""
    from ..backends.batching import plan_calls  # numpy only

    return [name for _, _, name in plan_calls(n, batch)]


def combine(terms: dict[str, Terms], batch: int, n_samples: int | None,
            speedup: float) -> float:
    """Seconds per sample of ``execute`` on ``n_samples``, from each function's terms.

    Each call's PBS and key switches spread over ``min(speedup, count)`` cores;
    ``execute`` overlaps :data:`EXECUTE_JOBS` calls, so ``n`` samples take
    ``max(sum work / S, sum wall / 2)``.
    """
    n = batch if n_samples is None else int(n_samples)
    if n < 1:
        raise ValueError("n_samples must be >= 1")
    calls = _calls(n, batch)
    work = wall = 0.0
    for name in calls:
        serial, groups = terms[name]
        work += serial + sum(g for g, _ in groups)
        wall += serial / min(speedup, 1.0) + sum(g / min(speedup, max(items, 1.0))
                                                 for g, items in groups)
    return max(work / speedup, wall / min(EXECUTE_JOBS, len(calls))) / n


def predict_profile(profile: dict[str, Any], n_samples: int | None, theta: np.ndarray,
                    speedup: float) -> float:
    """Seconds per sample of a :func:`circuit_profile` under coefficients ``theta``."""
    keys = key_work(profile)
    terms = {name: _profile_terms(f, theta, keys) for name, f in profile["functions"].items()}
    return combine(terms, int(profile["batch_size"]), n_samples, speedup)


def layer_lookups(module: Any, function: str = "single") -> list[dict[str, Any]]:
    """Per tagged layer of a compiled concrete module: its bootstraps and key switches.

    Each row: ``layer`` (concrete's tag: the lowering tags each layer), ``pbs`` as
    ``[N, k, n, l, count]`` per parameter set, ``ks`` as ``[dim_in, dim_out, level,
    count]``.
    """
    info = module.server.program_info
    dims = [_get(s, "dimension") for s in info.get_keyset_info().secret_keys()]
    st = module.statistics["functions"][function]
    rows: dict[str, dict[str, Any]] = {}

    def row(tag: str) -> dict[str, Any]:
        return rows.setdefault(tag, {"layer": tag, "pbs": [], "ks": []})

    for tag, per in st["programmable_bootstrap_count_per_tag_per_parameter"].items():
        for p, c in per.items():
            row(tag)["pbs"].append([*_params(p), int(c)])
    for tag, per in st["key_switch_count_per_tag_per_parameter"].items():
        for p, c in per.items():
            row(tag)["ks"].append([dims[_get(p, "input_secret_key_id")],
                                   dims[_get(p, "output_secret_key_id")],
                                   _get(p, "level"), int(c)])
    return list(rows.values())


def critical_path(module: Any, coefficients: dict[str, float], cores: int,
                  function: str = "single") -> tuple[float, float, float, list[dict[str, Any]]]:
    """Modelled seconds of one call of ``function``: bootstraps and key switches on the
    critical path, and the linear work; with the per-layer rows of :func:`layer_lookups`.

    A layer's lookups are independent: ``count`` of them take ``count * t / min(cores,
    count)``; layers run one after the other.  ``t`` is one core's seconds per
    bootstrap (FFT and multiply-accumulate work of its ``N, k, n, l``) or key switch,
    from ``coefficients`` (:data:`latentopt.search.cost.COEFFICIENTS`); the linear term
    is the levelled operations times their ciphertexts' dimension, on one core.
    """
    rows = layer_lookups(module, function)
    fft_mac = np.array([coefficients["fft"], coefficients["mac"]])
    pbs_total = ks_total = 0.0
    for r in rows:
        width = min(max(int(cores), 1), sum(o[4] for o in r["pbs"]) or 1)
        pbs = sum(float(_op_work(o) @ fft_mac) for o in r["pbs"])
        ks = sum(coefficients["ks"] * c * d_in * lv * d_out * 1e-9
                 for d_in, d_out, lv, c in r["ks"])
        r.update(pbs_seconds=pbs / width, ks_seconds=ks / width)
        pbs_total += pbs / width
        ks_total += ks / width
    st = module.statistics["functions"][function]
    linear = sum(int(c) * _get(p, "dimension") for key in LINEAR_STATS
                 for p, c in st.get(key, {}).items())
    return pbs_total, ks_total, coefficients["linear"] * linear * 1e-9, rows

"""Latency cost model of compiled FHE circuits, in seconds, calibrated per machine.

Predicts the encrypted latency (seconds per sample: encrypt, run and decrypt as
:meth:`FHECircuit.execute <latentopt.backends.fhe.FHECircuit.execute>` does it) of a
compiled circuit *before key generation*, from what concrete reports at compile time
(:func:`latentopt.search.profile.circuit_profile`): programmable bootstrappings (PBS)
and key switches per crypto parameter set and layer, levelled operations and input
ciphertexts.  The crypto parameters are those concrete chose for the whole circuit, so
the precision carried before rounding counts (see :mod:`latentopt.search.profile` for
the model's terms).

Calibration (:meth:`CostModel.calibrate`) times small one-layer MLP circuits with real
keys (:mod:`latentopt.search.calibration`): ``S``, the effective cores, is the CPU /
wall time of its busy calls (about the core count on an idle machine, about 1 on a
2-core one when other jobs compete); the coefficients are fitted to wall time by robust
least squares in log space.  Models are cached per machine
(:mod:`latentopt.search.fingerprint`).

Examples
--------
>>> model = CostModel.load_or_calibrate(grid="quick", verbose=0)  # doctest: +SKIP
>>> model.predict(fhe_circuit)  # seconds per sample, before keygen  # doctest: +SKIP
0.085
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import measure_point
from .fingerprint import (
    FORMAT_VERSION,
    FingerprintMismatchError,
    cache_file,
    check_fingerprint,
    machine_fingerprint,
    write_json,
)
from .profile import _calls, _op_work, circuit_profile, combine, key_work, predict_profile

__all__ = ["COEFFICIENTS", "GRIDS", "PRIOR", "CorruptCostModelError", "CostModel",
           "FingerprintMismatchError"]


class CorruptCostModelError(ValueError):
    """A cost-model file that cannot be read or holds impossible values (truncated,
    hand-edited): treated as absent by the cache, which recalibrates with a warning."""

#: Seconds of one core per call, per 10^9 operations of the per-call conversion of the
#: bootstrap keys to the Fourier domain (:func:`~latentopt.search.profile.key_work`), per
#: 10^6 input ciphertext-dimensions, per 10^9 FFT, multiply-accumulate and key-switch
#: operations, per 10^9 levelled-operation ciphertext-dimensions.
COEFFICIENTS = ("call", "setup", "inputs", "fft", "mac", "ks", "linear")
#: Prior (2-core AMD EPYC, 2024): the fit shrinks towards it where data are scarce.
PRIOR = dict(call=0.01, setup=0.45, inputs=0.05, fft=0.05, mac=0.6, ks=0.3, linear=1.0)
#: Calibration grids: (TLU input bits, p_error, lookups per sample, input features).
#: "quick": N <= 4096, about 30 s; "default": N up to 8192 and more parameter sets, a
#: few minutes (keygen included).
GRIDS: dict[str, list[tuple[int, float, int, int]]] = {
    "quick": [(3, 1e-2, 1, 8), (3, 1e-5, 16, 8), (5, 1e-2, 8, 32), (6, 1e-2, 16, 8),
              (4, 1e-2, 16, 784)],
    "default": [
        (2, 1e-2, 1, 8), (2, 1e-5, 16, 8), (3, 1e-2, 24, 32), (3, 1e-5, 16, 8),
        (4, 1e-2, 1, 8), (4, 1e-3, 16, 8), (4, 1e-5, 4, 32), (5, 1e-2, 8, 8),
        (5, 1e-3, 16, 32), (6, 1e-2, 4, 8), (6, 1e-2, 16, 8), (6, 1e-3, 1, 8),
        (6, 1e-3, 4, 8), (6, 1e-5, 16, 8), (7, 1e-2, 4, 8), (7, 1e-5, 2, 8),
        (4, 1e-2, 16, 784), (3, 1e-3, 32, 256),
    ],
}


def _grid(grid: str | Sequence[Sequence[float]]) -> tuple[str, list[tuple[int, float, int, int]]]:
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {sorted(GRIDS)} or a list of points")
        return grid, GRIDS[grid]
    points = [(int(p[0]), float(p[1]), int(p[2]), int(p[3]) if len(p) > 3 else 8) for p in grid]
    if not points:
        raise ValueError("empty calibration grid")
    return "custom-" + hashlib.sha1(repr(points).encode()).hexdigest()[:10], points


# ------------------------------------------------------------------------- the model
class CostModel:
    """Encrypted latency predictor (seconds per sample) for compiled FHE circuits.

    Build with :meth:`load_or_calibrate` (or :meth:`calibrate`, :meth:`load`,
    :meth:`from_file`, :meth:`fit`).

    Attributes
    ----------
    coefficients : dict
        Seconds of one core per unit of each feature of :data:`COEFFICIENTS`.
    speedup : float
        Effective cores ``S`` seen at calibration.
    fingerprint : dict
        Machine and versions it was calibrated on (:func:`machine_fingerprint`).
    info : dict
        Grid, calibration seconds, load average, fit errors, date, raw ``records``.
    """

    def __init__(self, coefficients: dict[str, float], speedup: float,
                 fingerprint: dict[str, Any], info: dict[str, Any] | None = None) -> None:
        self.coefficients = {k: float(coefficients[k]) for k in COEFFICIENTS}
        self.speedup = float(speedup)
        self.fingerprint = dict(fingerprint)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        return (f"CostModel(grid={self.info.get('grid')!r}, speedup={self.speedup:.2f}, "
                f"cpu={self.fingerprint.get('cpu_model')!r})")

    @property
    def _theta(self) -> np.ndarray:
        return np.array([self.coefficients[k] for k in COEFFICIENTS])

    # ------------------------------------------------------------- prediction
    def predict(self, circuit: Any, n_samples: int | None = None,
                speedup: float | None = None) -> float:
        """Seconds per sample of ``execute`` on ``n_samples`` samples (no keys needed).

        ``circuit``: a compiled :class:`FHECircuit` or its :func:`circuit_profile`.
        ``n_samples`` defaults to one full batch (``batch_size``).  ``speedup``: effective
        cores to assume instead of the calibrated :attr:`speedup` (e.g. the core count,
        for an idle machine).
        """
        profile = circuit if isinstance(circuit, dict) else circuit_profile(circuit)
        return predict_profile(profile, n_samples, self._theta, speedup or self.speedup)

    def critical_path(self, fhe_circuit: Any, cores: int | None = None,
                      ) -> tuple[float, float, float, list[dict[str, Any]]]:
        """Seconds of bootstraps and key switches on the critical path of one sample over
        ``cores`` (default: this process's), of the linear work, and per-layer rows:
        :func:`latentopt.search.profile.critical_path` (the floor of
        :meth:`FHECircuit.profile <latentopt.backends.fhe.FHECircuit.profile>`)."""
        from ..backends.fhe_profile import available_cores
        from .profile import critical_path

        return critical_path(fhe_circuit.module, self.coefficients,
                             int(cores or available_cores()))

    def key_conversion(self, fhe_circuit: Any) -> float:
        """Modelled seconds, per call, of the runtime's conversion of the circuit's bootstrap
        keys to the Fourier domain (serial, paid by every call whatever its lookups)."""
        profile = fhe_circuit if isinstance(fhe_circuit, dict) else circuit_profile(fhe_circuit)
        return float(self.coefficients["setup"] * key_work(profile))

    def _bits_model(self) -> dict[str, np.ndarray]:
        """Log-linear fits of one PBS's seconds and its key's Fourier-conversion work in
        (1, TLU bits, -log10 p_error)."""
        table = self.info.get("pbs_table")
        if not table:
            raise ValueError("this model has no calibration table (calibrate it first)")
        theta = self._theta
        z = np.array([[1.0, t[0], -math.log10(t[1])] for t in table])
        y = {"pbs": [math.log(float(_op_work([*t[2:6], 1]) @ theta[3:5]) + theta[5] * t[6] * 1e-9)
                     for t in table],
             "key": [math.log(key_work({"functions": {"f": {"ops": [[*t[2:6], 1]]}}}))
                     for t in table]}
        beta = {}
        for key, values in y.items():
            b = np.linalg.lstsq(z, values, rcond=None)[0] if len(table) >= 3 else np.zeros(3)
            b[1:] = np.maximum(b[1:], 0.0)  # monotone in bits and 1/p_error
            b[0] = float(np.mean(values - z[:, 1:] @ b[1:]))
            beta[key] = b
        return beta

    def pbs_seconds(self, bits: int, p_error: float = 1e-2) -> float:
        """Seconds of one core for one lookup of ``bits``-bit inputs (interpolated)."""
        beta = self._bits_model()["pbs"]
        log_p = -math.log10(min(max(float(p_error), 1e-300), 0.5))
        return float(math.exp(np.array([1.0, bits, log_p]) @ beta))

    def predict_report(self, report: dict[str, Any], n_samples: int | None = None,
                       speedup: float | None = None) -> float:
        """Like :meth:`predict`, from an ``FHECircuit.report`` alone (approximate).

        The report names no crypto parameters: each layer's per-PBS cost and ``N`` are
        interpolated log-linearly in its TLU input bits and ``log(1/p_error)`` between the
        calibration circuits (non-decreasing in both).
        """
        beta, theta, table = self._bits_model(), self._theta, self.info["pbs_table"]
        log_p = -math.log10(min(max(float(report.get("p_error", 1e-5)), 1e-300), 0.5))
        batch, input_dim = int(report.get("batch_size", 1)), float(np.median([t[7] for t in table]))
        terms = {}
        for name, m in (("single", 1), ("batch", batch)):
            layers = [(np.array([1.0, layer["tlu_input_bits"], log_p]), int(layer["pbs"]) * m)
                      for layer in report["layers"]
                      if layer.get("tlu_input_bits") and layer.get("pbs")]
            serial = theta[0] + theta[2] * m * int(report["n_features"]) * input_dim * 1e-6
            keys = {tuple(zl) for zl, _ in layers}  # one bootstrap key per distinct width
            serial += theta[1] * sum(math.exp(np.array(zl) @ beta["key"]) for zl in keys)
            terms[name] = (serial, [(c * math.exp(zl @ beta["pbs"]), float(c)) for zl, c in layers])
        return combine(terms, batch, n_samples, speedup or self.speedup)

    # ---------------------------------------------------------------- bounds
    def lower_bound(self, n_pbs: int, n_features: int) -> float:
        """Seconds per sample that *no* circuit with ``n_pbs`` lookups per sample and
        ``n_features`` encrypted inputs can beat, before anything is trained or compiled.

        Every hidden neuron costs one PBS at least as expensive as the cheapest one
        calibrated (halved, for lookups narrower than any calibration circuit), every
        input one encryption at the smallest input dimension seen, spread over the
        effective cores; call overheads are left out.
        """
        table = self.info.get("pbs_table") or []
        theta = self._theta
        per_pbs = min((float(_op_work([*t[2:6], 1]) @ theta[3:5]) + theta[5] * t[6] * 1e-9
                       for t in table), default=0.0)
        input_dim = min((t[7] for t in table), default=0.0)
        work = 0.5 * per_pbs * max(int(n_pbs), 0)
        work += theta[2] * int(n_features) * input_dim * 1e-6
        return float(work / max(self.speedup, 1.0))

    def max_useful_bits(self, n_pbs: int, seconds: float, p_error: float = 1e-1,
                        limit: int = 16) -> int:
        """The widest TLU input (bits) whose ``n_pbs`` lookups can still run in ``seconds``
        per sample (at the most lenient ``p_error``, on all effective cores); at least 1.
        """
        speed = max(self.speedup, 1.0)
        best = 1
        for bits in range(1, int(limit) + 1):
            if max(int(n_pbs), 1) * self.pbs_seconds(bits, p_error) / speed <= seconds:
                best = bits
        return best

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, records: list[dict[str, Any]], prior_weight: float = 0.05,
            fingerprint: dict[str, Any] | None = None,
            info: dict[str, Any] | None = None) -> CostModel:
        """Fit a model to timing records (what :meth:`calibrate` measures).

        Each record holds a ``profile`` (:func:`circuit_profile`), ``n_samples`` and the
        wall-clock ``seconds`` and ``cpu_seconds`` (all threads) of each ``execute``
        (medians are used).  The effective cores ``S`` are the CPU/wall ratio of the
        calls busy with at least 16 PBS (where no thread idles); the coefficients are
        then fitted to wall time by robust (soft-L1) least squares in log space, shrunk
        towards :data:`PRIOR` by ``prior_weight``.
        """
        from scipy.optimize import least_squares

        if not records:
            raise ValueError("no calibration records")
        profiles, ns = [r["profile"] for r in records], [int(r["n_samples"]) for r in records]
        wall = np.array([np.median(r["seconds"]) / n for r, n in zip(records, ns)])
        fp = fingerprint or {}
        cores = fp.get("threads") or fp.get("cpu_count") or os.cpu_count() or 1
        busy = [np.median(r["cpu_seconds"]) / np.median(r["seconds"]) for r, n in zip(records, ns)
                if "cpu_seconds" in r and min(
                    sum(op[4] for op in r["profile"]["functions"][name]["ops"])
                    for name in _calls(n, r["profile"]["batch_size"])) >= 16]
        speedup = float(np.clip(np.median(busy), 0.25, cores)) if busy else float(cores)
        z0 = np.log([PRIOR[k] for k in COEFFICIENTS])

        def residuals(z: np.ndarray) -> np.ndarray:
            pred = [predict_profile(p, n, np.exp(z), speedup) for p, n in zip(profiles, ns)]
            return np.r_[np.log(np.array(pred) / wall), prior_weight * (z - z0)]

        z = least_squares(residuals, z0, loss="soft_l1", f_scale=0.1).x
        err = np.abs(np.expm1(residuals(z)[: len(records)]))
        info = dict(info or {}, records=records, pbs_table=_pbs_table(records),
                    fit={"median_abs_rel_error": float(np.median(err)),
                         "max_abs_rel_error": float(np.max(err))})
        return cls(dict(zip(COEFFICIENTS, np.exp(z))), speedup,
                   fingerprint or machine_fingerprint(), info)

    # -------------------------------------------------------------- calibration
    @classmethod
    def calibrate(cls, grid: str | Sequence[Sequence[float]] = "default", verbose: int = 1,
                  cache_dir: str | Path | None = None, force: bool = False, save: bool = True,
                  repeats: int | None = None,
                  insecure_key_cache: str | Path | None = None) -> CostModel:
        """Time the grid's circuits on this machine (real keys) and fit a model.

        Unless ``force``, a valid cached model of this grid (or of a finer one) is
        returned instead.  ``grid``: ``"quick"`` (under 30 s), ``"default"`` (a few
        minutes) or a list of ``(tlu_bits, p_error, width[, n_features])``.  The model is
        saved in the cache directory unless ``save=False``.  ``insecure_key_cache``:
        **tests only**, reuse keys from this directory.
        """
        name, points = _grid(grid)
        if not force:
            cached = cls._from_cache(name, cache_dir, verbose)
            if cached is not None:
                return cached
        bar = None
        if verbose:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(points), desc="cost model calibration", unit="circuit")
        records: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        for bits, p_error, width, n_features in points:
            if bar is not None:
                bar.set_postfix_str(f"{bits}-bit TLU, p_error={p_error:g}, width {width}")
            records += measure_point(bits, p_error, width, n_features,
                                     repeats=repeats or (2 if name == "quick" else 3),
                                     concurrent=name != "quick",
                                     insecure_key_cache=insecure_key_cache)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        model = cls.fit(records, prior_weight=0.05 if len(points) >= 8 else 0.3,
                        info={"grid": name, "points": [list(p) for p in points],
                              "calibration_seconds": seconds,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "load_average": os.getloadavg()[0]
                              if hasattr(os, "getloadavg") else None})
        if verbose:
            print(f"[latentopt] cost model calibrated in {seconds:.0f}s ({len(records)} timings"
                  f"): effective cores {model.speedup:.2f}, median error "
                  f"{model.info['fit']['median_abs_rel_error']:.0%}", flush=True)
        if save:
            model.save(cache_file(name, cache_dir))
        return model

    @classmethod
    def load_or_calibrate(cls, verbose: int = 1, grid: str | Sequence[Sequence[float]] = "default",
                          cache_dir: str | Path | None = None, force: bool = False,
                          **kwargs: Any) -> CostModel:
        """This machine's cached model, calibrated (and cached) first if needed.

        A cached model from another machine or concrete version is not used: it is
        recalibrated, with a warning.  ``force=True`` always recalibrates.  Other keyword
        arguments go to :meth:`calibrate`.
        """
        return cls.calibrate(grid=grid, verbose=verbose, cache_dir=cache_dir, force=force,
                             **kwargs)

    @classmethod
    def load(cls, cache_dir: str | Path | None = None,
             path: str | Path | None = None) -> CostModel:
        """This machine's cached model (or the file ``path``), without calibrating.

        Raises :class:`FileNotFoundError` if none is cached, and
        :class:`FingerprintMismatchError` if it was calibrated elsewhere.
        """
        if path is not None:
            return cls.from_file(path)
        files = [f for f in (cache_file(g, cache_dir) for g in ("default", "quick")) if f.exists()]
        for i, file in enumerate(files):
            try:
                return cls.from_file(file)
            except (FingerprintMismatchError, CorruptCostModelError):
                if i == len(files) - 1:
                    raise
        raise FileNotFoundError(f"no cost model in {cache_file('', cache_dir).parent}: "
                                "calibrate one with CostModel.load_or_calibrate()")

    @classmethod
    def _from_cache(cls, name: str, directory: str | Path | None,
                    verbose: int) -> CostModel | None:
        names = {"default": ["default"], "quick": ["default", "quick"]}.get(name, [name])
        for candidate in names:
            path = cache_file(candidate, directory)
            if not path.exists():
                continue
            try:
                model = cls.from_file(path)
            except (FingerprintMismatchError, CorruptCostModelError) as exc:
                warnings.warn(f"not using the cached cost model {path}: {exc}; recalibrating",
                              stacklevel=3)
                continue
            if verbose:
                print(f"[latentopt] cost model loaded from {path}", flush=True)
            return model
        return None

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the model and its calibration records as JSON (atomically)."""
        return write_json(path, {"format_version": FORMAT_VERSION,
                                 "fingerprint": self.fingerprint,
                                 "coefficients": self.coefficients, "speedup": self.speedup,
                                 "info": self.info})

    @classmethod
    def from_file(cls, path: str | Path, check: bool = True) -> CostModel:
        """Load a saved model.

        Raises :class:`FingerprintMismatchError` if it was calibrated on another machine
        or concrete-python version (``check=False``: warn and load it anyway, unless its
        format is not this version's).
        """
        try:
            data = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptCostModelError(f"{path} is not a readable cost model "
                                        f"({type(exc).__name__}: {exc})") from exc
        if not isinstance(data, dict) or "coefficients" not in data:
            raise CorruptCostModelError(f"{path} is not a latentopt cost model")
        check_fingerprint(data, path, check)
        try:
            model = cls(data["coefficients"], data["speedup"], data["fingerprint"],
                        data.get("info"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptCostModelError(f"{path} is not a complete cost model "
                                        f"({type(exc).__name__}: {exc})") from exc
        values = [*model.coefficients.values(), model.speedup]
        if not all(math.isfinite(v) and v >= 0 for v in values) or model.speedup <= 0:
            raise CorruptCostModelError(f"{path} holds coefficients that are not finite "
                                        f"and >= 0, or a speedup that is not > 0")
        return model


def _pbs_table(records: list[dict[str, Any]]) -> list[list[float]]:
    """Per calibration circuit: bits, p_error, N, k, n, l, key-switch ops/PBS, input dim."""
    rows, seen = [], set()
    for r in records:
        f, key = r["profile"]["functions"]["single"], (r["bits"], r["p_error"], r["width"])
        if key in seen or not f["ops"]:
            continue
        seen.add(key)
        op = max(f["ops"], key=lambda o: o[4])
        ks = sum(d_in * lv * d_out * c for d_in, d_out, lv, c in f["ks"]) / max(op[4], 1)
        rows.append([r["bits"], r["p_error"], *op[:4], ks, f["input_dim"]])
    return rows

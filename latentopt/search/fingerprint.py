"""Where cost-model calibrations live, and which machine they belong to.

A calibration is only valid on the machine (CPU model, core count), thread limit
(``OMP_NUM_THREADS``, which concrete's runtime follows) and concrete-python version it
was measured with: :func:`machine_fingerprint` names them, and a stored model
whose fingerprint differs is never used silently (:class:`FingerprintMismatchError`).

Calibrations are cached as JSON in ``$LATENTOPT_CACHE_DIR``, else
``$XDG_CACHE_HOME/latentopt``, else ``~/.cache/latentopt`` (:func:`cache_dir`).

>>> sorted(machine_fingerprint())[:3]
['concrete_python', 'cpu_count', 'cpu_model']
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "FINGERPRINT_KEYS", "FORMAT_VERSION", "FingerprintMismatchError",
           "cache_dir", "cache_file", "check_fingerprint", "machine_fingerprint", "write_json"]

#: Environment variable overriding the cache directory.
CACHE_ENV = "LATENTOPT_CACHE_DIR"
#: Bumped whenever the JSON layout or the model form changes (2: linear-ops term; 3: the
#: per-call key-conversion term replaced the per-op N setup term).
FORMAT_VERSION = 3
#: Fingerprint entries that must match for a stored model to be used.
FINGERPRINT_KEYS = ("cpu_model", "cpu_count", "threads", "concrete_python", "format_version")


class FingerprintMismatchError(RuntimeError):
    """A stored cost model was calibrated on another machine or concrete version."""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine() or "unknown"


def _thread_limit(cores: int) -> int:
    """The cores concrete's OpenMP runtime may use: ``OMP_NUM_THREADS`` (at most the cores).

    A calibration measured with all cores predicts too few seconds for a process limited
    to one thread (26-37% low, measured), so the limit is part of the fingerprint.
    """
    raw = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return min(int(raw), cores) if raw.isdigit() and int(raw) > 0 else cores


def machine_fingerprint() -> dict[str, Any]:
    """What a calibration depends on: CPU model, cores and thread limit, concrete-python."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        concrete: str | None = version("concrete-python")
    except PackageNotFoundError:  # pragma: no cover - concrete is needed to calibrate
        concrete = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": _cpu_model(), "cpu_count": int(cores or 1),
            "threads": _thread_limit(int(cores or 1)),
            "concrete_python": concrete, "format_version": FORMAT_VERSION,
            "machine": platform.machine(), "system": platform.system()}


def cache_dir(path: str | Path | None = None) -> Path:
    """The cache directory: ``path``, else ``$LATENTOPT_CACHE_DIR``, else the user's."""
    if path is not None:
        return Path(path)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentopt"


def cache_file(name: str, directory: str | Path | None) -> Path:
    """The JSON file of calibration grid ``name`` in the cache directory."""
    return cache_dir(directory) / f"cost_model_{name}.json"


def check_fingerprint(data: dict[str, Any], path: str | Path, check: bool = True) -> None:
    """Raise :class:`FingerprintMismatchError` if ``data`` was calibrated elsewhere.

    ``check=False``: warn instead, unless the stored format is not this version's.
    """
    stored = dict(data.get("fingerprint", {}), format_version=data.get("format_version"))
    here = machine_fingerprint()
    problems = [f"{k}: {stored.get(k)!r} != {here[k]!r} here"
                for k in FINGERPRINT_KEYS if stored.get(k) != here[k]]
    if problems:
        message = f"calibrated elsewhere ({'; '.join(problems)})"
        if check or data.get("format_version") != FORMAT_VERSION:
            raise FingerprintMismatchError(message)
        warnings.warn(f"using cost model {path} {message}", stacklevel=3)


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON atomically (a concurrent reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path

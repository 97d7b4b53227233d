"""Compile options of :meth:`~latentopt.backends.fhe.FHECircuit.compile`, and the compile.

Checks every option before any work, builds concrete's ``Configuration`` from them, and
compiles the lowered functions as one concrete module, with two fallbacks:

* concrete 2.11 refuses approximate rounding's *active clipping* on per-channel tables
  (:func:`~.fhe_concrete.is_multi_table_clipping_failure`): compile again without it;
* ``parameter_strategy="auto"``: a plan with two or more lookup layers of one width is
  compiled a second time with per-norm partitions, kept when the complexity drops by
  :data:`NORM2_MIN_GAIN` or more.

Only this module (and the other ``fhe*`` modules) touch concrete, lazily.

>>> check_options(p_error=0.01, global_p_error=None, security_level=128,
...               range_mode="calibrated", range_margin=0.25, on_overflow="warn",
...               batch_size=None, parameter_strategy="auto")
>>> check_options(p_error=0.01, global_p_error=1e-5, security_level=128,
...               range_mode="calibrated", range_margin=0.25, on_overflow="warn",
...               batch_size=None, parameter_strategy="auto")
Traceback (most recent call last):
ValueError: set at most one of p_error and global_p_error
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from .fhe_concrete import (
    PARAMETER_STRATEGIES,
    is_multi_table_clipping_failure,
    multi_parameter_strategy,
    without_active_clipping,
)
from .fhe_diagnostics import ON_OVERFLOW, shares_lookup_width, translate_error
from .fhe_lowering import LoweringPlan
from .fhe_ops import AddOp, ConcatOp

__all__ = ["AUTO_BATCH_MAX", "AUTO_BATCH_MIN", "AUTO_BATCH_TLUS", "DEFAULT_GLOBAL_P_ERROR",
           "NORM2_MIN_GAIN", "RANGE_MODES", "SECURITY_LEVELS", "auto_batch_size",
           "check_options", "compile_module", "configuration"]

RANGE_MODES = ("calibrated", "worst_case")
SECURITY_LEVELS = (128, 132)
#: Default per-sample probability of at least one wrong table lookup (concrete's default).
DEFAULT_GLOBAL_P_ERROR = 1e-5
#: ``parameter_strategy="auto"`` keeps per-norm partitions only for at least this much
#: less complexity: they cost more keys (up to 2x the bytes for a 0.1% gain, measured
#: on two-layer MLPs of breast_cancer and wine).
NORM2_MIN_GAIN = 0.05
#: Automatic batch size: about 128 lookups in the narrowest layer, between 8 and 16 samples.
AUTO_BATCH_TLUS, AUTO_BATCH_MIN, AUTO_BATCH_MAX = 128, 8, 16


def check_options(*, p_error: float | None, global_p_error: float | None,
                  security_level: int, range_mode: str, range_margin: float,
                  on_overflow: str, batch_size: int | None, parameter_strategy: str) -> None:
    """Raise ``ValueError`` naming the first invalid compile option."""
    if p_error is not None and global_p_error is not None:
        raise ValueError("set at most one of p_error and global_p_error")
    for name, value in (("p_error", p_error), ("global_p_error", global_p_error)):
        if value is not None and not (isinstance(value, numbers.Real)  # numpy floats too
                                      and not isinstance(value, bool) and 0.0 < value < 1.0):
            raise ValueError(f"{name} must be a probability in (0, 1), got {value!r}")
    if (isinstance(security_level, bool) or not isinstance(security_level, numbers.Integral)
            or security_level not in SECURITY_LEVELS):
        raise ValueError(f"security_level must be one of {SECURITY_LEVELS}, got "
                         f"{security_level!r}")
    if range_mode not in RANGE_MODES:
        raise ValueError(f"range_mode must be one of {RANGE_MODES}, got {range_mode!r}")
    if on_overflow not in ON_OVERFLOW:
        raise ValueError(f"on_overflow must be one of {ON_OVERFLOW}, got {on_overflow!r}")
    if batch_size is not None and (isinstance(batch_size, bool)  # 2.7 was taken as 2
                                   or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    if parameter_strategy not in PARAMETER_STRATEGIES:
        raise ValueError(f"parameter_strategy must be one of {PARAMETER_STRATEGIES}, "
                         f"got {parameter_strategy!r}")
    if not 0.0 <= float(range_margin) <= 10.0:
        raise ValueError(f"range_margin must be in [0, 10], got {range_margin!r}")


def auto_batch_size(plan: LoweringPlan) -> int:
    """About :data:`AUTO_BATCH_TLUS` lookups of the narrowest layer per batched call."""
    narrow = min((r["tlu_count"] for r in plan.layers if r["tlu_count"]), default=1)
    return min(AUTO_BATCH_MAX, max(AUTO_BATCH_MIN, -(-AUTO_BATCH_TLUS // narrow)))


def configuration(fhe: Any, *, p_error: float | None, global_p_error: float | None,
                  security_level: int, n_calls: int, compress: bool, verbose: int,
                  insecure_key_cache: Any, concrete_options: dict[str, Any] | None,
                  ) -> dict[str, Any]:
    """Keyword arguments of concrete's ``Configuration`` (without the parameter strategy).

    Exactly one of ``p_error`` and ``global_p_error`` is given (the caller applies
    :data:`DEFAULT_GLOBAL_P_ERROR`).  ``global_p_error`` is per sample and the module
    holds ``n_calls`` samples (one single-sample call and one batch): concrete's global
    error covers the whole module, so it is raised to
    ``1 - (1 - global_p_error) ** n_calls``.
    """
    from concrete.fhe.compilation.configuration import SecurityLevel

    conf: dict[str, Any] = dict(
        security_level=SecurityLevel(security_level),
        show_progress=verbose >= 2, verbose=False,
        compress_evaluation_keys=compress, compress_input_ciphertexts=compress,
        # failures become latentopt errors; don't litter the cwd with .artifacts/
        dump_artifacts_on_unexpected_failures=False,
    )
    if p_error is not None:
        conf["p_error"] = float(p_error)
    else:
        assert global_p_error is not None
        conf["global_p_error"] = float(-math.expm1(n_calls * math.log1p(-global_p_error)))
    conf.update(concrete_options or {})
    if conf.get("dataflow_parallelize"):
        from .fhe_concrete import uses_dataflow

        uses_dataflow()
    if insecure_key_cache is not None:
        conf.update(use_insecure_key_cache=True, enable_unsafe_features=True,
                    insecure_key_cache_location=str(insecure_key_cache))
    return conf


def compile_module(fhe: Any, plan: LoweringPlan, namespace: dict[str, Any],
                   pieces: dict[str, list[Any]], conf: dict[str, Any],
                   parameter_strategy: str) -> tuple[Any, str, bool]:
    """Compile the module; return it, the strategy it was compiled with, and whether
    approximate rounding kept its active clipping.

    ``namespace`` holds the module's ``fhe.function``-s, ``pieces`` their inputsets.
    Concrete's errors are translated (:func:`~.fhe_diagnostics.translate_error`).
    """
    conf = dict(conf)

    def compile_with(strategy: str) -> Any:
        options = dict(conf)
        options.setdefault("multi_parameter_strategy", multi_parameter_strategy(fhe, strategy))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            return fhe.module()(type("LatentoptCircuit", (), namespace)).compile(
                pieces, fhe.Configuration(**options))

    strategy = "precision" if parameter_strategy == "auto" else parameter_strategy
    active_clipping = True
    try:
        try:
            module = compile_with(strategy)
        except ValueError as exc:  # concrete 2.11, per-channel tables: see fhe_concrete
            if not is_multi_table_clipping_failure(exc):
                raise
            conf["approximate_rounding_config"] = without_active_clipping(fhe)
            active_clipping = False
            module = compile_with(strategy)
        if (parameter_strategy == "auto" and shares_lookup_width(plan.layers)
                and not any(isinstance(s, (AddOp, ConcatOp)) for s in plan.steps)):
            # not with a residual addition or a concatenation: concrete 2.11's optimizer
            # panics (aborts the process, "alternative_output_representation") on the
            # per-norm partitions of some of them (a pruned residual CNN at 4-bit
            # rounding; the add chain of tests/sklearn/test_torch_model.py once no lookup
            # before it had a gain; a two-branch CNN joined by torch.cat, exact rounding)
            other = compile_with("precision_and_norm2")
            if other.complexity < (1.0 - NORM2_MIN_GAIN) * module.complexity:
                module, strategy = other, "precision_and_norm2"
    except RuntimeError as exc:
        raise translate_error(exc) from exc
    return module, strategy, active_clipping

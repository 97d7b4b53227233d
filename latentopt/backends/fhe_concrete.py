"""The one door to concrete-python: its lazy import.

Only the ``backends/fhe*`` modules import concrete, and only through
:func:`concrete_fhe` (or lazily, inside functions): importing latentopt, its IR or
this module does not load the compiler.
"""

from __future__ import annotations

import traceback
import warnings
from typing import Any

__all__ = ["PARAMETER_STRATEGIES", "concrete_fhe", "is_multi_table_clipping_failure",
           "multi_parameter_strategy", "without_active_clipping"]

#: ``parameter_strategy`` values of ``FHECircuit.compile``: how concrete's optimizer
#: groups lookups into crypto-parameter partitions (``"auto"``: both, the cheaper kept).
PARAMETER_STRATEGIES = ("auto", "precision", "precision_and_norm2")


def concrete_fhe() -> Any:
    """Import and return ``concrete.fhe`` (lazily; silences its pkg_resources warning)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            from concrete import fhe
    except ImportError as exc:  # pragma: no cover - concrete is a hard dep of this module
        raise ImportError(
            "the FHE backend needs concrete-python (pip install concrete-python, numpy<2)"
        ) from exc
    _keep_exit_status()
    _thread_ready()
    return fhe


def _thread_ready() -> None:
    """Set up concrete-python's thread-local tracing state in the calling thread.

    concrete 2.11 initialises it (the tag stack, the rounding adjustment flags) only in
    the thread that imported it: compiling in any other thread (``compile`` in a
    ``threading.Thread``, or the lazy recompile of an unpickled estimator under
    ``joblib``'s threading backend) failed with "'_thread._local' object has no
    attribute 'stack'".
    """
    import importlib

    def module(name: str) -> Any:  # the package re-exports functions of these names
        return importlib.import_module(f"concrete.fhe.extensions.{name}")

    tags = module("tag").tag_context
    if not hasattr(tags, "stack"):
        tags.stack = []
    for name in ("round_bit_pattern", "truncate_bit_pattern"):
        local = module(name).local
        if not hasattr(local, "_is_adjusting"):
            local._is_adjusting = False


_dataflow = {"guarded": False, "started": False}


def uses_dataflow() -> None:
    """Record that a circuit was compiled with concrete's dataflow runtime, which must
    then be terminated at exit (:func:`_keep_exit_status`)."""
    _dataflow["started"] = True


def _keep_exit_status() -> None:
    """Keep the process's exit status.

    concrete-python 2.11 registers an ``atexit`` handler that terminates its dataflow
    runtime, and it ends the process with status 0 once a circuit has run: a script
    that raised, or called ``sys.exit(3)``, after ``simulate`` exited 0, so shells and CI
    saw success (a single-process ``pytest`` with a failing test too).  latentopt starts
    that runtime only when asked (``concrete_options={"dataflow_parallelize": True}``):
    the handler is replaced by one that terminates it only then.
    """
    if _dataflow["guarded"]:
        return
    import atexit

    import concrete.compiler as cc

    handler = getattr(cc, "_terminate_df_parallelization", None)
    _dataflow["guarded"] = True
    if handler is None:  # pragma: no cover - another concrete version
        return
    atexit.unregister(handler)

    def terminate_if_started() -> None:
        if _dataflow["started"]:
            handler()

    atexit.register(terminate_if_started)


def is_multi_table_clipping_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is concrete-python 2.11's failure on per-channel tables after an
    approximate rounding that overflows.

    With ``Exactness.APPROXIMATE``, a rounding whose result can overflow its ``k`` bits
    is clipped *actively* by default (an extra ``k - 1``-bit lookup, for ``k >= 5``), and
    the next lookup's table shrinks to ``k - 1`` bits.  Concrete does that for one table,
    but for a multi-table lookup (per-channel tables) it writes the shrunk tables into
    the full-size array and raises ``ValueError: could not broadcast input array``
    inside its MLIR converter (``Converter.tlu``, an untested branch there).
    """
    if not isinstance(exc, ValueError) or "could not broadcast" not in str(exc):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f.name == "tlu" and f.filename.replace("\\", "/").endswith(
        "concrete/fhe/mlir/converter.py") for f in frames)


def without_active_clipping(fhe: Any) -> Any:
    """The ``approximate_rounding_config`` that avoids that failure: overflowing
    approximate roundings are clipped *logically* (the next lookup reads ``k + 1``
    bits and its table saturates), which concrete supports for per-channel tables."""
    return fhe.ApproximateRoundingConfig(approximate_clipping_start_precision=False)


def multi_parameter_strategy(fhe: Any, name: str) -> Any:
    """concrete's ``MultiParameterStrategy`` for ``"precision"`` (one parameter set per
    lookup width: concrete's default) or ``"precision_and_norm2"`` (also per noise growth
    of the linear work before the lookup: more, smaller partitions, more keys)."""
    return {"precision": fhe.MultiParameterStrategy.PRECISION,
            "precision_and_norm2": fhe.MultiParameterStrategy.PRECISION_AND_NORM2}[name]

"""Search: latency cost model, rounding/p_error (inner) search, multi-objective search.

Imports are lazy: ``import latentopt.search`` loads neither concrete, torch nor optuna.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "LatencySearch": "latentopt.search.latency_search",
    "search_compile": "latentopt.search.inner",
    "InnerResult": "latentopt.search.inner",
    "DEFAULT_SPACE": "latentopt.search.space",
    "FAST_TRAINING": "latentopt.search.space",
    "CostModel": "latentopt.search.cost",
    "FingerprintMismatchError": "latentopt.search.cost",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentopt.search' has no attribute {name!r}")

"""The one door to concrete-python: its lazy import.

Only the ``backends/fhe*`` modules import concrete, and only through
:func:`concrete_fhe` (or lazily, inside functions): importing latentopt, its IR or
this module does not load the compiler.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["concrete_fhe"]


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
    return fhe

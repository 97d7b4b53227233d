"""latentopt: fast quantized and encrypted (TFHE) neural-network inference.

Importing the package stays light: estimators are loaded on first access.

>>> import latentopt
>>> latentopt.__version__
'0.1.0'
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "QuantizedMLPClassifier": "latentopt.sklearn.mlp",
    "QuantizedMLPRegressor": "latentopt.sklearn.mlp",
    "LatencySearch": "latentopt.search.latency_search",
    "QuantizedTorchModel": "latentopt.sklearn.torch_model",
    "compile_torch_model": "latentopt.sklearn.torch_model",
    "compile_brevitas_qat_model": "latentopt.sklearn.torch_model",
    "QuantizedTorchClassifier": "latentopt.sklearn.torch_qat",
    "QuantizedTorchRegressor": "latentopt.sklearn.torch_qat",
}

__all__ = [
    "LatencySearch",
    "QuantizedMLPClassifier",
    "QuantizedMLPRegressor",
    "QuantizedTorchClassifier",
    "QuantizedTorchModel",
    "QuantizedTorchRegressor",
    "__version__",
    "compile_brevitas_qat_model",
    "compile_torch_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'latentopt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

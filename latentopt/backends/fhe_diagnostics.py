"""Diagnostics of the FHE backend: errors with their remedy, and the compiled report.

Compilation problems are :class:`FHECompilationError` (a ``ValueError``): a lookup
input wider than concrete's 16 bits (:class:`FHEBitWidthError`, raised before concrete
runs, naming the layer and the rounding that fixes it) or no cryptographic parameters
for the requested error probability (:class:`FHEParametersError`).
:func:`module_report` reads the statistics concrete gives after compilation, before
any key exists: PBS count, complexity, key sizes, error probabilities.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..ir import Circuit

__all__ = [
    "MAX_TLU_BITS",
    "FHEBitWidthError",
    "FHECompilationError",
    "FHEParametersError",
    "check_lookup_width",
    "DEFAULT_RANGE_MODE",
    "FHEOverflowError",
    "ON_OVERFLOW",
    "module_report",
    "report_overflow",
    "shares_lookup_width",
    "translate_error",
]

#: Widest table-lookup input concrete-python supports.
MAX_TLU_BITS = 16


class FHECompilationError(ValueError):
    """The circuit cannot be compiled to TFHE as configured."""


class FHEBitWidthError(FHECompilationError):
    """A table-lookup input is wider than concrete supports (16 bits)."""


class FHEParametersError(FHECompilationError):
    """No cryptographic parameters satisfy the requested error probability and widths."""


class FHEOverflowError(ValueError):
    """Some inputs lie outside what a ``range_mode="calibrated"`` circuit was compiled for:
    its encrypted result for them would differ from ``fhe="disable"``."""


#: Default ``range_mode`` of every compile function.  ``"calibrated"``: at the same
#: rounding width, worst-case ranges round away more LSBs and lose accuracy (breast_cancer,
#: 16 hidden, 5 bits: 0.616 vs 0.933); matching the accuracy costs about 10x complexity
#: (``benchmarks/range_modes.py``).  Calibrated circuits check every sample instead.
DEFAULT_RANGE_MODE = "calibrated"

#: What to do with samples a calibrated circuit cannot compute exactly.
ON_OVERFLOW = ("warn", "raise")


def report_overflow(n_bad: int, n_samples: int, on_overflow: str, what: str) -> None:
    """Warn (``on_overflow="warn"``) or raise :class:`FHEOverflowError` about ``n_bad``
    affected samples out of ``n_samples``; nothing when ``n_bad`` is 0."""
    if n_bad == 0:
        return
    msg = (f"{n_bad} of {n_samples} samples {what}; compile on data that covers them, or "
           f"with range_mode='worst_case' for a circuit exact on every input (slower)")
    if on_overflow == "raise":
        raise FHEOverflowError(msg)
    warnings.warn(msg, stacklevel=4)


def check_lookup_width(layer: str, name: str, bits: int) -> None:
    """Refuse a lookup wider than concrete supports, naming the layer and the fix."""
    if bits > MAX_TLU_BITS:
        excess = bits - MAX_TLU_BITS
        raise FHEBitWidthError(
            f"layer {layer!r}: the input of table lookup {name!r} has "
            f"{bits} bits; TFHE lookups take at most {MAX_TLU_BITS}. Round it: "
            f"compile(rounding_bits={MAX_TLU_BITS}) or fewer (a bare Circuit: "
            f"circuit.with_rounding({{{name!r}: {excess}}})), or prune / lower weight and "
            f"activation bit-widths to shrink the accumulator."
        )


def translate_error(exc: RuntimeError) -> FHECompilationError:
    """Turn concrete's compilation failures into latentopt errors with a remedy."""
    msg = str(exc)
    if "NoParametersFound" in msg:
        return FHEParametersError(
            "concrete found no TFHE parameters for this circuit: its table lookups are too "
            "wide for the requested error probability. Raise p_error / global_p_error, or "
            "reduce lookup input bits: compile with a smaller rounding_bits and "
            "rounding_method='approximate' (a bare Circuit: circuit.with_rounding), "
            "pruning, fewer weight/activation bits."
        )
    if "used as an input to a table lookup" in msg:
        return FHEBitWidthError(f"a table-lookup input is too wide for concrete:\n{msg}")
    return FHECompilationError(f"concrete failed to compile the circuit: {msg}")


def shares_lookup_width(layers: list[dict[str, Any]]) -> bool:
    """Whether two lookup layers of a lowering plan (or of a compile report's
    ``"layers"``) have one input width: only then can concrete's per-norm partitions
    (``parameter_strategy``) differ from its per-width ones."""
    widths = [row["tlu_input_bits"] for row in layers if row.get("tlu_count")]
    return len(set(widths)) < len(widths)


def compiled_widths(graph: Any) -> dict[str, int]:
    """Widest encrypted integer concrete assigned in each tagged layer of ``graph``.

    It can exceed the plan's ``accumulator_bits`` by a bit: concrete gives a gemm's
    product (before its bias, signed) and the sum after it one width, and approximate
    rounding keeps a bit for its overflow.
    """
    out: dict[str, int] = {}
    for node in graph.query_nodes(ordered=True):
        if node.output.is_encrypted and node.tag:
            bits = int(node.output.dtype.bit_width)
            out[node.tag] = max(out.get(node.tag, 0), bits)
    return out


def module_report(module: Any, layers: list[dict[str, Any]], max_tlu_bits: int,
                  circuit: Circuit, batch_size: int, n_calls: int) -> dict[str, Any]:
    """Statistics of a compiled concrete module (duck-typed: no concrete import here).

    ``layers`` and ``max_tlu_bits`` are the lowering plan's per-layer rows and widest
    lookup input.
    """
    single = module.functions()["single"]
    per_tag = single.programmable_bootstrap_count_per_tag
    widths = compiled_widths(single.graph)
    bsk, ksk = int(module.size_of_bootstrap_keys), int(module.size_of_keyswitch_keys)
    in_type = single.graph.ordered_inputs()[0].output.dtype
    qlo, qhi = circuit.input_quantizer.qrange
    module_global = min(float(module.global_p_error), 1 - 1e-16)
    return {
        "batch_size": batch_size,
        "n_features": circuit.n_features,
        "n_outputs": circuit.n_outputs,
        "input_range": (max(qlo, int(in_type.min())), min(qhi, int(in_type.max()))),
        "layers": [dict(row, pbs=int(per_tag.get(row["name"], 0)),
                        compiled_bits=widths.get(row["name"])) for row in layers],
        "max_tlu_input_bits": max_tlu_bits,
        "max_bit_width": int(single.graph.maximum_integer_bit_width()),
        "programmable_bootstrap_count": int(single.programmable_bootstrap_count),
        "complexity": float(module.complexity) / n_calls,  # per sample
        "size_of_secret_keys": int(module.size_of_secret_keys),
        "size_of_bootstrap_keys": bsk,
        "size_of_keyswitch_keys": ksk,
        "size_of_evaluation_keys": bsk + ksk,
        "size_of_input_ciphertexts": int(single.size_of_inputs),
        "p_error": float(module.p_error),
        # per sample: the module's global error spans its 1 + batch_size samples
        "global_p_error": float(-math.expm1(math.log1p(-module_global) / n_calls)),
    }

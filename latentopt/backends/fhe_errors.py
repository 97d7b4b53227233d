"""Errors of the FHE backend, with the remedy in the message.

Compilation problems are :class:`FHECompilationError` (a ``ValueError``): a lookup
input wider than concrete's 16 bits (:class:`FHEBitWidthError`, raised before concrete
runs, naming the layer and the rounding that fixes it) or no cryptographic parameters
for the requested error probability (:class:`FHEParametersError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .fhe_lowering import LoweringPlan

__all__ = [
    "MAX_TLU_BITS",
    "FHEBitWidthError",
    "FHECompilationError",
    "FHEParametersError",
    "check_widths",
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


def check_widths(plan: LoweringPlan) -> None:
    """Refuse lookups wider than concrete supports, naming the layer and the fix."""
    for step in plan.steps:
        if step.kind == "tlu" and step.tlu_bits > MAX_TLU_BITS:
            excess = step.tlu_bits - MAX_TLU_BITS
            raise FHEBitWidthError(
                f"layer {step.layer!r}: the input of table lookup {step.name!r} has "
                f"{step.tlu_bits} bits; TFHE lookups take at most {MAX_TLU_BITS}. Round it "
                f"(e.g. circuit.with_rounding({{{step.name!r}: {excess}}}) or more), or prune "
                f"/ lower weight and activation bit-widths to shrink the accumulator."
            )


def translate_error(exc: RuntimeError) -> FHECompilationError:
    """Turn concrete's compilation failures into latentopt errors with a remedy."""
    msg = str(exc)
    if "NoParametersFound" in msg:
        return FHEParametersError(
            "concrete found no TFHE parameters for this circuit: its table lookups are too "
            "wide for the requested error probability. Raise p_error / global_p_error, or "
            "reduce lookup input bits (rounding with circuit.with_rounding, pruning, fewer "
            "weight/activation bits)."
        )
    if "used as an input to a table lookup" in msg:
        return FHEBitWidthError(f"a table-lookup input is too wide for concrete:\n{msg}")
    return FHECompilationError(f"concrete failed to compile the circuit: {msg}")

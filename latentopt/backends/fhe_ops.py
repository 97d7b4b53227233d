"""The typed operations of the traced FHE function and the plan of each encrypted value.

:mod:`.fhe_lowering` plans them (:func:`~latentopt.backends.fhe_lowering.plan_lowering`)
and traces them (:func:`~latentopt.backends.fhe_lowering.build_function`); convolutions
and poolings carry their own plans (:mod:`.fhe_window`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .fhe_window import MaxPoolPlan, WindowPlan

__all__ = ["AddOp", "CentreOp", "ConcatOp", "GemmOp", "LookupOp", "MaxPoolOp", "Op",
           "RoundOp", "ValuePlan", "WindowOp"]


@dataclass
class ValuePlan:
    """How one IR value is held in a ciphertext: ``value - offset`` on ``bits`` bits."""

    name: str
    offset: np.ndarray  # int64 (channels,) or (1,)
    lo: np.ndarray  # centred per-channel bounds
    hi: np.ndarray
    bits: int
    hint: int | None = None  # bit-width hint given to concrete


@dataclass(eq=False)
class Op:
    """One server-side operation of the traced function: computes ``name`` from ``src``."""

    name: str
    src: str
    layer: str


@dataclass(eq=False)
class CentreOp(Op):
    """``x + bias``: centres the encrypted input before a rounding or lookup reads it."""

    bias: np.ndarray


@dataclass(eq=False)
class GemmOp(Op):
    """``x @ weight_t (+ bias)``, offsets folded into the bias."""

    weight_t: np.ndarray  # (in, out)
    bias: np.ndarray | None


@dataclass(eq=False)
class RoundOp(Op):
    """``round_bit_pattern(x, lsbs)`` with the IR's exactness."""

    lsbs: int
    method: str


@dataclass(eq=False)
class AddOp(Op):
    """``x + src2 (+ bias)``, offsets folded into the bias."""

    src2: str
    bias: np.ndarray | None


@dataclass(eq=False)
class ConcatOp(Op):
    """``[x, src2] (+ bias)``: concatenated ciphertexts, offsets folded into the bias."""

    src2: str
    bias: np.ndarray | None


@dataclass(eq=False)
class LookupOp(Op):
    """A univariate table on centred (rounded) inputs; one PBS per element."""

    table: Callable[[np.ndarray], np.ndarray]
    tlu_bits: int  # input precision seen by the PBS


@dataclass(eq=False)
class WindowOp(Op):
    """A convolution or sum pooling (leveled), offsets folded into one flat bias."""

    plan: WindowPlan


@dataclass(eq=False)
class MaxPoolOp(Op):
    """A max pooling: ``window`` PBS per output: ``window - 1`` on ``plan.diff_bits``-bit
    inputs, a cast on ``plan.value_bits``-bit ones."""

    plan: MaxPoolPlan

    @property
    def tlu_bits(self) -> int:
        return self.plan.diff_bits

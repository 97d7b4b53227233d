"""The values an importer tracks while lowering a torch graph (:mod:`.graph_lowering`):
quantizer parameters, quantized IR values, float functions still pending, and the policy
that supplies quantization parameters (calibration in :mod:`.ptq`, brevitas in
:mod:`.brevitas_import`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .fx_import import Op

__all__ = ["FloatFns", "Pending", "QParams", "QValue", "QuantPolicy"]


@dataclass(frozen=True)
class QParams:
    """An activation quantizer: ``q = clip(rint(x / scale) + zero_point)``."""

    scale: float
    zero_point: int
    n_bits: int
    signed: bool
    narrow: bool = False


@dataclass
class QValue:
    """An IR integer value standing for a float tensor ``(q - zero_point) * scale``."""

    name: str
    shape: tuple[int, ...]
    scale: np.ndarray  # one per flattened element
    zero_point: int
    params: QParams | None = None  # set when produced by a quantizer

    @property
    def uniform(self) -> bool:
        return bool(np.allclose(self.scale, self.scale[0], rtol=1e-9, atol=0))


#: Float elementwise functions with their IR activation names (None: no exact match).
FloatFns = list[tuple[Callable[[torch.Tensor], torch.Tensor], str | None]]


@dataclass
class Pending:
    """Float elementwise functions still to apply to a quantized value (brevitas)."""

    src: QValue
    fns: FloatFns
    shape: tuple[int, ...]


class QuantPolicy(Protocol):
    """Where quantization parameters come from (calibration or brevitas)."""

    def input_params(self, op: Op, consumers: list[Op]) -> QParams: ...

    def weights(self, op: Op) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Integer weights (module layout), per-output-channel scales, float bias."""

    def bias_int(self, op: Op, bias: np.ndarray, acc_scale: np.ndarray) -> np.ndarray: ...

    def act_params(self, op: Op) -> QParams | None:
        """Quantizer after activation ``op`` (None: leave the float pending)."""

    def requant_params(self, op_name: str) -> QParams:
        """Quantizer for an explicit requantization of the value of ``op_name``."""

    def shared_params(self, op_names: list[str]) -> QParams:
        """One quantizer shared by the operands of an addition."""

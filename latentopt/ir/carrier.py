"""The integer carrier: the numpy type in which backends hold a circuit's integers.

Floating-point types let matrix products run on BLAS (numpy, onnxruntime's MLAS) and
stay exact as long as every integer involved is below their exact range.
:func:`carrier_dtype` picks the narrowest exact one; re-exported by :mod:`.schedule`
(:attr:`Schedule.carrier <latentopt.ir.schedule.Schedule.carrier>`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .circuit import Circuit
from .conv_nodes import WindowNode
from .nodes import Gemm
from .ranges import Interval

__all__ = ["CARRIERS", "carrier_dtype", "exact_below"]

#: Integer carriers, narrowest first (see :func:`carrier_dtype`).
CARRIERS: tuple[Any, ...] = (np.float32, np.float64, np.int64)
_EXACT_BELOW = {np.float32: 2**24, np.float64: 2**53}


def exact_below(dtype: Any) -> int | None:
    """Integers of magnitude below this are exact in ``dtype`` (``None``: all of int64)."""
    return _EXACT_BELOW.get(np.dtype(dtype).type)


def _accumulator_bound(node: Gemm, x_range: Interval) -> int:
    """Largest |partial sum| the gemm can produce (bias included)."""
    zp = node.input_zero_point
    mag = np.maximum(np.abs(x_range.lo - zp), np.abs(x_range.hi - zp)).astype(object)
    if mag.size == 1:
        mag = np.full(node.in_features, mag[0], dtype=object)
    bound = int(max(np.abs(node.weight).astype(object) @ mag))
    if node.bias is not None:
        bound += int(np.abs(node.bias).max())
    return bound


def carrier_dtype(circuit: Circuit) -> Any:
    """The narrowest dtype that carries every integer of ``circuit`` exactly.

    float32 when every worst-case value, every partial sum of every gemm, convolution and
    sum pooling (bias included, see
    :meth:`~latentopt.ir.conv_nodes.WindowNode.partial_sum_bound`) and every input zero
    point is below 2**24 in magnitude, float64 below 2**53, else int64.  Floating-point
    sums of integers below those bounds are exact whatever the summation order, so BLAS
    (numpy, onnxruntime's MLAS) computes exact gemms and convolutions.
    """
    worst = circuit.worst_case_ranges()
    top = 0
    for node in circuit.nodes:
        if isinstance(node, Gemm):
            top = max(top, _accumulator_bound(node, worst[node.inputs[0]]))
            # the kernel subtracts the zero point in the carrier: it must be exact there too
            top = max(top, abs(node.input_zero_point))
        elif isinstance(node, WindowNode):
            src = worst[node.inputs[0]]
            top = max(top, node.partial_sum_bound(src.lo, src.hi),
                      abs(getattr(node, "input_zero_point", 0)))
        top = max(top, abs(worst[node.name].min), abs(worst[node.name].max))
    for dtype in CARRIERS:
        limit = exact_below(dtype)
        if limit is None or top < limit:
            return dtype
    raise AssertionError("unreachable: int64 carries every value")  # pragma: no cover

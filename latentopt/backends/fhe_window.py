"""FHE lowering of the convolution and pooling steps (numpy only; used by
:mod:`.fhe_lowering`, which hands in the ``fhe`` module at tracing time).

Centred values stay centred: a convolution or a sum pooling of ``x = xc + offset`` is
``conv(xc)`` (zero padded, leveled) plus the clear ``conv(offset - zero_point) + bias``,
folded with the output's offset into one bias.  A max pooling first shifts its input by
one offset per channel (a clear addition), so that every ciphertext is ``x - b_c >= 0``
(``b_c`` the channel's least value):
zero padding then never wins a max, and ``max(a, b) = b + relu(a - b)`` costs one PBS
per pair on inputs one bit wider.  A last lookup, an identity, hands each maximum on:
concrete gives every operand of an addition the width of its result, so without it the
maxima, their differences and the lookups of these would take the width of the next
layer's accumulator (and fail beyond 16 bits); a lookup's output width is free
(``window`` PBS per output, as the report says).
concrete's convolution is 2-D without padding: a 1-D input is an image of height 1, and
padding is an assignment into encrypted zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir import bit_width
from ..ir.conv_nodes import Conv, MaxPool, SumPool, WindowNode

__all__ = ["MaxPoolPlan", "WindowPlan", "max_pool_plan", "trace_max_pool", "trace_window",
           "window_plan"]


@dataclass(eq=False)
class WindowPlan:
    """A convolution or sum pooling on centred inputs: ``node(xc) + bias`` (flat bias)."""

    node: Conv | SumPool
    bias: np.ndarray | None


@dataclass(eq=False)
class MaxPoolPlan:
    """A max pooling: shift to one offset per channel, pairwise maxima, shift back."""

    node: MaxPool
    shift: np.ndarray | None  # flat, added to the centred input
    out_bias: np.ndarray | None  # flat, added to the maxima
    value_bits: int  # bits of the shifted input (and of the maxima)
    diff_bits: int  # bits of the differences: the PBS input


def window_plan(node: Conv | SumPool, in_offset: np.ndarray,
                out_offset: np.ndarray) -> WindowPlan:
    """Fold the input offsets, the zero point, the bias and the output offset."""
    bias = node.apply(in_offset[None, :])[0] - out_offset  # conv(offset - zp) + b - o
    return WindowPlan(node, bias.astype(np.int64) if np.any(bias) else None)


def max_pool_plan(node: MaxPool, in_offset: np.ndarray, in_lo: np.ndarray,
                  in_hi: np.ndarray, out_offset: np.ndarray) -> MaxPoolPlan:
    """Per-feature input offsets and centred bounds ``[in_lo, in_hi]``; the output's
    offsets."""
    c = node.input_shape[0]
    base = (in_offset + in_lo).reshape(c, -1).min(axis=1)  # each channel's least value
    shift = in_offset - np.repeat(base, node.in_features // c)  # x - base >= 0
    top = int((in_hi + shift).max())
    out_bias = np.repeat(base, node.out_features // c) - out_offset
    return MaxPoolPlan(node, shift if np.any(shift) else None,
                       out_bias if np.any(out_bias) else None,
                       bit_width(0, max(top, 0)), bit_width(-top, top))


def _identity(v: np.ndarray) -> np.ndarray:
    return v


def _padded(fhe: Any, v: Any, node: WindowNode, image: tuple[int, ...]) -> Any:
    """``v`` (batch, C, *spatial) zero padded by the node's ONNX pads."""
    if not any(node.padding):
        return v
    nd = node.nd
    pads = [(node.padding[a], node.padding[a + nd]) for a in range(nd)]
    full = tuple(n + b + e for n, (b, e) in zip(image[1:], pads))
    z = fhe.zeros((v.shape[0], image[0], *full))
    z[(slice(None), slice(None), *(slice(b, b + n) for n, (b, _) in zip(image[1:], pads)))] = v
    return z


def trace_window(fhe: Any, plan: WindowPlan, v: Any) -> Any:
    """The traced convolution / sum pooling of a flat batch ``v``."""
    node = plan.node
    shape = node.input_shape
    x = _padded(fhe, v.reshape((v.shape[0], *shape)), node, shape)
    if isinstance(node, Conv):
        weight, group = node.weight, node.groups
    else:  # a sum pooling: a depthwise convolution of ones
        weight, group = np.ones((shape[0], 1, *node.kernel_shape), np.int64), shape[0]
    strides, dilations = node.stride, node.dilation
    if node.nd == 1:  # concrete convolves images: height 1
        x = x.reshape((x.shape[0], x.shape[1], 1, x.shape[2]))
        weight = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])
        strides, dilations = (1, *strides), (1, *dilations)
    y = fhe.conv(x, weight, strides=strides, dilations=dilations, group=group)
    y = y.reshape((v.shape[0], node.out_features))
    return y if plan.bias is None else y + plan.bias


def trace_max_pool(fhe: Any, plan: MaxPoolPlan, v: Any, hints: bool) -> Any:
    """The traced max pooling of a flat batch ``v`` of centred values."""
    node = plan.node
    if plan.shift is not None:
        v = v + plan.shift
        if hints:
            v = fhe.hint(v, bit_width=plan.value_bits)
    shape = node.input_shape
    x = _padded(fhe, v.reshape((v.shape[0], *shape)), node, shape)
    relu = fhe.univariate(lambda d: np.maximum(d, 0))
    out = None
    for tap in np.ndindex(*node.kernel_shape):
        index = (slice(None), slice(None)) + tuple(
            slice(k * d, k * d + s * (o - 1) + 1, s) for k, d, s, o in
            zip(tap, node.dilation, node.stride, node.output_spatial))
        t = x[index]
        if out is None:
            out = t
            continue
        diff = t - out
        if hints:
            diff = fhe.hint(diff, bit_width=plan.diff_bits)
        out = out + relu(diff)
        if hints:
            out = fhe.hint(out, bit_width=plan.value_bits)
    assert out is not None  # a window has at least one tap
    if node.window > 1:  # decouple the widths (see the module docstring); one PBS, where
        out = fhe.univariate(_identity)(out)  # fhe.identity extracts bits: one PBS a bit
    y = out.reshape((v.shape[0], node.out_features))
    return y if plan.out_bias is None else y + plan.out_bias

"""Exact numpy kernels of the convolution and pooling nodes (numpy only).

Each factory returns a function from a flat batch ``(batch, in_features)`` to a flat
batch ``(batch, out_features)`` in the same carrier dtype: float32, float64 or int64.
Float carriers are exact when every partial sum stays below ``2**24`` (float32) or
``2**53`` (float64): integers are then represented exactly and every sum of them is
exact whatever the summation order, so the convolution can run as one BLAS matrix
product of the im2col matrix (``(positions, window * C/groups)``, built from a
channels-last copy) with the weights.
Whoever picks the carrier checks :meth:`~latentopt.ir.conv_nodes.WindowNode.partial_sum_bound`
(see :func:`exact_dtype`); the int64 carrier is exact below ``2**63``.

Large batches are processed in chunks so that the im2col matrix stays under
:data:`IM2COL_ENTRIES` entries.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Conv
>>> node = Conv("c", ("x",), weight=[[[1, -1]]], input_shape=(1, 4), input_zero_point=1)
>>> conv_kernel(node, np.float32)(np.array([[1, 3, 2, 5]], np.float32)).tolist()
[[-2.0, 1.0, -3.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..ir.conv_nodes import Conv, MaxPool, SumPool, WindowNode, window_view

__all__ = ["IM2COL_ENTRIES", "conv_kernel", "exact_dtype", "max_pool_kernel",
           "sum_pool_kernel", "window_kernel"]

#: Largest im2col matrix (entries) built at once; batches are chunked to fit.
IM2COL_ENTRIES = 1 << 21

FlatKernel = Callable[[np.ndarray], np.ndarray]


def exact_dtype(bound: int) -> Any:
    """Narrowest carrier in which integers up to ``bound`` (and sums bounded by it)
    are exact: float32 below 2**24, float64 below 2**53, else int64.

    >>> exact_dtype(2**24 - 1).__name__, exact_dtype(2**24).__name__, exact_dtype(2**60).__name__
    ('float32', 'float64', 'int64')
    """
    if bound < 2**24:
        return np.float32
    if bound < 2**53:
        return np.float64
    return np.int64


def _channels_last_windows(x: np.ndarray, node: WindowNode) -> np.ndarray:
    """Windows ``(b, *out_spatial, C, *kernel)`` of ``x`` ``(b, C, *spatial)``, read from
    a channels-last copy (so that im2col gathers contiguous runs of channels)."""
    nd = node.nd
    xl = np.moveaxis(x, 1, -1)  # (b, *spatial, C) view
    if any(node.padding):
        pads = [(0, 0)] + [node._pad(a) for a in range(nd)] + [(0, 0)]
        xl = np.pad(xl, pads)  # a C-ordered (channels-last) copy
    else:
        xl = np.ascontiguousarray(xl)
    span = tuple(d * (k - 1) + 1 for k, d in zip(node.kernel_shape, node.dilation))
    view = sliding_window_view(xl, span, axis=tuple(range(1, 1 + nd)))  # type: ignore[call-overload]
    index = (slice(None),) + tuple(slice(None, None, s) for s in node.stride) + (
        slice(None),) + tuple(slice(None, None, d) for d in node.dilation)
    return view[index]


def conv_kernel(node: Conv, dtype: Any) -> FlatKernel:
    """Integer convolution of :class:`~latentopt.ir.Conv` in carrier ``dtype``.

    im2col (channels last) and one BLAS product per group; depthwise convolutions
    (one input channel per group) accumulate one elementwise product per kernel tap.
    """
    dtype = np.dtype(dtype).type
    g, nd = node.groups, node.nd
    o, cg = node.weight.shape[:2]
    og, k = o // g, node.window
    positions = int(np.prod(node.output_spatial))
    bias = None if node.bias is None else np.repeat(node.bias, positions).astype(dtype)
    zp = dtype(node.input_zero_point)
    shape = node.input_shape
    taps: list[tuple[Any, ...]] = [(Ellipsis, *t) for t in np.ndindex(*node.kernel_shape)]
    depthwise = cg == 1 and g > 1
    if depthwise:  # w[c * og + j, 0, tap] -> (tap, C, O/G)
        wd = node.weight.reshape(g, og, k).transpose(2, 0, 1).astype(dtype)
    else:  # (G, window * C/G, O/G): the column order of the im2col matrix below
        wt = np.ascontiguousarray(node.weight.reshape(g, og, cg, k).transpose(0, 3, 2, 1)
                                  .reshape(g, k * cg, og).astype(dtype))
    # (b, *out, G, C/G, *k) -> (G, b, *out, *k, C/G)
    perm = (1 + nd, 0, *range(1, 1 + nd), *range(3 + nd, 3 + 2 * nd), 2 + nd)
    rows = max(1, IM2COL_ENTRIES // (positions * cg * k * g))  # samples per chunk

    def conv(x: np.ndarray) -> np.ndarray:
        b = len(x)
        out = np.empty((b, o * positions), dtype)
        for start in range(0, b, rows):
            xc = x[start:start + rows].reshape(-1, *shape)
            n = len(xc)
            if node.input_zero_point:
                xc = xc - zp
            v = _channels_last_windows(xc, node)  # (n, *out, C, *k)
            if depthwise:
                y = np.zeros((n, *node.output_spatial, g, og), dtype)
                for t, tap in enumerate(taps):
                    y += v[tap][..., None] * wd[t]
                y = y.reshape(n, positions, o)
            else:
                v = v.reshape(n, *v.shape[1:1 + nd], g, cg, *v.shape[2 + nd:])
                cols = v.transpose(perm).reshape(g, n * positions, k * cg)  # a copy
                y = np.matmul(cols, wt)  # (G, n * positions, O/G)
                y = y.reshape(g, n, positions, og).transpose(1, 2, 0, 3).reshape(
                    n, positions, o)
            out[start:start + n] = y.transpose(0, 2, 1).reshape(n, -1)
        if bias is not None:
            out += bias
        return out

    return conv


def _tap_reduce(v: np.ndarray, node: WindowNode, ufunc: np.ufunc) -> np.ndarray:
    """Reduce windows ``(b, C, *out, *kernel)`` over the kernel, one strided pass per
    tap (much faster than numpy's reduction over tiny trailing axes)."""
    taps: list[tuple[Any, ...]] = [(Ellipsis, *t) for t in np.ndindex(*node.kernel_shape)]
    out = np.array(v[taps[0]])
    for tap in taps[1:]:
        ufunc(out, v[tap], out=out)
    return out.reshape(len(v), -1)


def sum_pool_kernel(node: SumPool, dtype: Any) -> FlatKernel:
    """Window sums of :class:`~latentopt.ir.SumPool` in carrier ``dtype``."""
    dtype = np.dtype(dtype).type
    zp = dtype(node.input_zero_point)

    def sum_pool(x: np.ndarray) -> np.ndarray:
        xc = x.reshape(-1, *node.input_shape)
        if node.input_zero_point:
            xc = xc - zp
        return _tap_reduce(window_view(xc, node, dtype(0)), node, np.add)

    return sum_pool


def max_pool_kernel(node: MaxPool, dtype: Any) -> FlatKernel:
    """Window maxima of :class:`~latentopt.ir.MaxPool` in carrier ``dtype``; padded
    positions hold ``-inf`` (the int64 minimum in an int64 carrier): never the max."""
    dtype = np.dtype(dtype).type
    low = np.iinfo(np.int64).min if dtype is np.int64 else -np.inf

    def max_pool(x: np.ndarray) -> np.ndarray:
        v = window_view(x.reshape(-1, *node.input_shape), node, dtype(low))
        return _tap_reduce(v, node, np.maximum)

    return max_pool


def window_kernel(node: WindowNode, dtype: Any) -> FlatKernel:
    """The kernel of any convolution or pooling node."""
    if isinstance(node, Conv):
        return conv_kernel(node, dtype)
    if isinstance(node, SumPool):
        return sum_pool_kernel(node, dtype)
    if isinstance(node, MaxPool):
        return max_pool_kernel(node, dtype)
    raise TypeError(f"no kernel for node type {type(node).__name__}")

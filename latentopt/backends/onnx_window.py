"""ONNX rendering of the convolution and pooling steps (used by :mod:`.onnx_render`).

Exact in every carrier: in float32 a native ``Conv`` (a :class:`~latentopt.ir.SumPool` is
a depthwise convolution of ones) and ``MaxPool`` (its padding is ignored, as the IR's);
onnxruntime has no double nor integer ``Conv``, so in float64 and int64 an im2col
``Gather`` of the flat input (padded positions read an appended zero, or the int64
minimum for a max) feeds a ``MatMul``, a chain of ``Add`` or a ``Max``; float64 keeps the
native ``MaxPool`` (but for pads as wide as the kernel, which onnxruntime refuses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir.conv_nodes import Conv, MaxPool, SumPool, WindowNode, window_view
from .onnx_graph import GraphBuilder

__all__ = ["render_conv", "render_max_pool", "render_sum_pool"]


def _attrs(node: WindowNode) -> dict[str, Any]:
    return {"kernel_shape": list(node.kernel_shape), "strides": list(node.stride),
            "pads": list(node.padding), "dilations": list(node.dilation)}


def _to_image(g: GraphBuilder, x: str, node: WindowNode, n: str) -> str:
    shape = g.const(f"{n}/image_shape", [-1, *node.input_shape], np.int64)
    return g.op("Reshape", [x, shape], f"{n}/image")


def _to_flat(g: GraphBuilder, y: str, n: str, out: str | None = None) -> str:
    shape = g.const(f"{n}/flat_shape", [0, -1], np.int64)
    return g.op("Reshape", [y, shape], n if out is None else out)


def _windows(node: WindowNode) -> np.ndarray:
    """Flat input index of every tap: ``(C, positions, window)``; padded taps read index
    ``in_features`` (the slot appended by :func:`_padded`)."""
    idx = np.arange(node.in_features, dtype=np.int64).reshape(1, *node.input_shape)
    v = window_view(idx, node, pad_value=node.in_features)[0]  # (C, *out, *k)
    c = node.input_shape[0]
    return np.ascontiguousarray(v).reshape(c, -1, node.window)


def _padded(g: GraphBuilder, x: str, n: str, value: Any) -> str:
    """``x`` with one column of ``value`` appended (the padding slot)."""
    pads = g.const(f"{n}/pads", [0, 0, 0, 1], np.int64)
    return g.op("Pad", [x, pads, g.const(f"{n}/pad_value", value, g.carrier)], f"{n}/padded")


def render_conv(g: GraphBuilder, node: Conv, x: str) -> str:
    n, dt = node.name, g.carrier
    if node.input_zero_point:
        x = g.op("Sub", [x, g.const(f"{n}/zero_point", node.input_zero_point, dt)], f"{n}/sub")
    positions = int(np.prod(node.output_spatial))
    if dt is np.float32:
        inputs = [_to_image(g, x, node, n), g.const(f"{n}/weight", node.weight, dt)]
        if node.bias is not None:
            inputs.append(g.const(f"{n}/bias", node.bias, dt))
        y = g.op("Conv", inputs, f"{n}/conv", group=node.groups, **_attrs(node))
        return _to_flat(g, y, n)
    gs = node.groups
    o, cg = node.weight.shape[:2]
    idx = _windows(node)  # (C, P, K) -> (G, P, C/G * K)
    idx = idx.reshape(gs, cg, positions, node.window).transpose(0, 2, 1, 3).reshape(
        gs, positions, cg * node.window)
    w = node.weight.reshape(gs, o // gs, cg * node.window).transpose(0, 2, 1)
    cols = g.op("Gather", [_padded(g, x, n, 0), g.const(f"{n}/windows", idx, np.int64)],
                f"{n}/im2col", axis=1)  # (N, G, P, C/G * K)
    y = g.op("MatMul", [cols, g.const(f"{n}/weight", np.ascontiguousarray(w), dt)],
             f"{n}/matmul")  # (N, G, P, O/G)
    y = g.op("Transpose", [y], f"{n}/channels_first", perm=[0, 1, 3, 2])
    if node.bias is None:
        return _to_flat(g, y, n)
    y = _to_flat(g, y, f"{n}/flat")
    return g.op("Add", [y, g.const(f"{n}/bias", np.repeat(node.bias, positions), dt)], n)


def _tap_chain(g: GraphBuilder, node: WindowNode, x: str, op: str, pad: Any) -> str:
    """``op`` over the taps of every window, from per-tap gathers of the flat input."""
    n = node.name
    idx = _windows(node).reshape(-1, node.window)  # (C * P, K)
    xp = _padded(g, x, n, pad)
    taps = [g.op("Gather", [xp, g.const(f"{n}/tap", idx[:, t], np.int64)], f"{n}/tap{t}",
                 axis=1) for t in range(node.window)]
    if op == "Max":
        return g.op("Max", taps, n)
    acc = taps[0]
    for t in taps[1:-1]:
        acc = g.op("Add", [acc, t], f"{n}/sum")
    return g.op("Add", [acc, taps[-1]], n) if len(taps) > 1 else g.op("Identity", [acc], n)


def render_sum_pool(g: GraphBuilder, node: SumPool, x: str) -> str:
    n, dt = node.name, g.carrier
    if node.input_zero_point:
        x = g.op("Sub", [x, g.const(f"{n}/zero_point", node.input_zero_point, dt)], f"{n}/sub")
    if dt is np.float32:
        c = node.input_shape[0]
        ones = np.ones((c, 1, *node.kernel_shape))
        y = g.op("Conv", [_to_image(g, x, node, n), g.const(f"{n}/ones", ones, dt)],
                 f"{n}/conv", group=c, **_attrs(node))
        return _to_flat(g, y, n)
    return _tap_chain(g, node, x, "Add", 0)


def render_max_pool(g: GraphBuilder, node: MaxPool, x: str) -> str:
    n, dt = node.name, g.carrier
    k2 = node.kernel_shape * 2
    if dt is np.int64 or any(p >= k for p, k in zip(node.padding, k2)):
        # onnxruntime has no integer MaxPool and wants pads below the kernel size
        low = np.iinfo(np.int64).min if dt is np.int64 else -np.inf
        return _tap_chain(g, node, x, "Max", low)
    y = g.op("MaxPool", [_to_image(g, x, node, n)], f"{n}/pool", **_attrs(node))
    return _to_flat(g, y, n)

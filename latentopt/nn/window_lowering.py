"""Geometry of torch convolutions and poolings for the IR's spatial nodes.

The importers (:mod:`.graph_lowering`) turn ``nn.Conv1d/2d`` into
:class:`~latentopt.ir.Conv`, average poolings and spatial means into
:class:`~latentopt.ir.SumPool` and max poolings into :class:`~latentopt.ir.MaxPool`.
This module reads the geometry (kernel, stride, ONNX pads, dilation) of a torch operation,
given its recorded input and output shapes: ``ceil_mode`` and the asymmetric ``"same"``
padding become extra end padding, checked against the recorded output shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..ir.conv_nodes import SumPool, window_view

__all__ = ["average_factors", "avg_pool_geometry", "conv_geometry", "max_pool_geometry"]

_AVG_MODULES = (nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_MAX_MODULES = (nn.MaxPool1d, nn.MaxPool2d)


def _tuple(value: Any, nd: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if len(value) == 1 and nd > 1:
            return (int(value[0]),) * nd
        return tuple(int(v) for v in value)
    return (int(value),) * nd


def _pads(in_spatial: tuple[int, ...], out_spatial: tuple[int, ...], kernel: tuple[int, ...],
          stride: tuple[int, ...], dilation: tuple[int, ...],
          begin: tuple[int, ...]) -> tuple[int, ...]:
    """ONNX pads with ``begin`` padding whose end padding yields ``out_spatial`` (torch's
    ``ceil_mode`` windows may run past the end; they are padded)."""
    ends = []
    for n, o, k, s, d, b in zip(in_spatial, out_spatial, kernel, stride, dilation, begin):
        span = d * (k - 1) + 1
        ends.append(max(b, (o - 1) * s + span - n - b))
    return tuple(begin) + tuple(ends)


def _spatial(shape: tuple[int, ...], nd: int) -> tuple[int, ...]:
    return tuple(shape[1:1 + nd])


def conv_geometry(m: Any, in_shape: tuple[int, ...]) -> dict[str, Any]:
    """Stride, ONNX pads, dilation and groups of a (brevitas) ``Conv1d/2d`` module."""
    nd = len(in_shape) - 1
    kernel = _tuple(m.kernel_size, nd)
    dilation = _tuple(m.dilation, nd)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            begin, end = (0,) * nd, (0,) * nd
        else:  # "same": torch pads total // 2 before, the rest after
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            begin = tuple(t // 2 for t in total)
            end = tuple(t - b for t, b in zip(total, begin))
        pads = begin + end
    else:
        p = _tuple(m.padding, nd)
        pads = p + p
    return {"stride": _tuple(m.stride, nd), "padding": pads, "dilation": dilation,
            "groups": int(m.groups)}


def _bound(args: tuple[Any, ...], kwargs: dict[str, Any],
           names: tuple[str, ...]) -> dict[str, Any]:
    out = dict(zip(names, args))
    out.update(kwargs)
    return out


def avg_pool_geometry(op: Any, in_shape: tuple[int, ...],
                      out_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """Window geometry of an average pooling or a spatial mean; ``None`` when the
    operation is no sum over windows of each channel (it then stays a dense gemm)."""
    nd = len(in_shape) - 1
    if nd not in (1, 2):
        return None
    m, meta = op.module, op.meta
    fn = meta.get("function")
    if isinstance(m, _AVG_MODULES) or fn in (F.avg_pool1d, F.avg_pool2d):
        if m is not None:
            kw = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}
        else:
            kw = _bound(meta["args"], meta["kwargs"], ("kernel_size", "stride", "padding"))
        kernel = _tuple(kw["kernel_size"], nd)
        stride = _tuple(kw.get("stride") or kernel, nd)
        begin = _tuple(kw.get("padding", 0), nd)
    elif isinstance(m, _ADAPTIVE_MODULES) or fn in (F.adaptive_avg_pool1d,
                                                     F.adaptive_avg_pool2d):
        ins, outs = _spatial(in_shape, nd), _spatial(out_shape, nd)
        if len(outs) != nd or any(i % o for i, o in zip(ins, outs)):
            return None  # windows of different sizes: not a strided pooling
        kernel = stride = tuple(i // o for i, o in zip(ins, outs))
        begin = (0,) * nd
    elif fn is torch.mean:
        kw = _bound(meta["args"], meta["kwargs"], ("dim", "keepdim"))
        dims = kw.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        rank = len(in_shape) + 1  # with the batch axis
        if sorted(d % rank for d in dims) != list(range(2, rank)):
            return None  # a mean over channels or the batch: not a pooling
        kernel = stride = _spatial(in_shape, nd)
        begin = (0,) * nd
    else:
        return None
    return _with_pads(kernel, stride, (1,) * nd, begin, in_shape, out_shape)


def _with_pads(kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
               begin: tuple[int, ...], in_shape: tuple[int, ...],
               out_shape: tuple[int, ...]) -> dict[str, Any]:
    nd = len(in_shape) - 1
    # a pooling to one element per channel may drop its spatial axes (mean, flatten)
    outs = (1,) * nd if int(np.prod(out_shape)) == in_shape[0] else _spatial(out_shape, nd)
    pads = _pads(_spatial(in_shape, nd), outs, kernel, stride, dilation, begin)
    return {"kernel_size": kernel, "stride": stride, "padding": pads, "dilation": dilation}


def max_pool_geometry(op: Any, in_shape: tuple[int, ...],
                      out_shape: tuple[int, ...]) -> dict[str, Any] | None:
    """Window geometry of a ``MaxPool1d/2d`` (module or function); ``None`` otherwise."""
    nd = len(in_shape) - 1
    m, meta = op.module, op.meta
    fn = meta.get("function")
    if isinstance(m, _MAX_MODULES):
        kw = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
              "dilation": m.dilation, "return_indices": m.return_indices}
    elif fn in (F.max_pool1d, F.max_pool2d):
        kw = _bound(meta["args"], meta["kwargs"],
                    ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                     "return_indices"))
    else:
        return None
    if nd not in (1, 2) or kw.get("return_indices"):
        return None
    kernel = _tuple(kw["kernel_size"], nd)
    return _with_pads(kernel, _tuple(kw.get("stride") or kernel, nd),
                      _tuple(kw.get("dilation", 1), nd), _tuple(kw.get("padding", 0), nd),
                      in_shape, out_shape)


def average_factors(pool: SumPool, fn: Any, name: str) -> np.ndarray | None:
    """Per-output factor ``f`` with ``fn(x) == window_sum(x) * f`` (torch's divisor:
    ``count_include_pad``, ``divisor_override``, ``ceil_mode`` windows), or ``None`` when
    ``fn`` is no such map (checked on random inputs)."""
    shape = pool.input_shape

    def window_sum(x: np.ndarray) -> np.ndarray:
        v = window_view(x.reshape(len(x), *shape), pool, 0.0)
        return v.sum(axis=tuple(range(-pool.nd, 0))).reshape(len(x), -1)

    ones = np.ones((1, *shape))
    with torch.no_grad():
        pooled = fn(torch.as_tensor(ones)).reshape(1, -1).numpy()
        if pooled.shape[1] != pool.out_features:
            return None
        count = window_sum(ones)
        if np.any(count == 0):
            return None
        f = pooled[0] / count[0]
        x = np.random.default_rng(0).uniform(-1, 1, (2, *shape))
        ref = fn(torch.as_tensor(x)).reshape(2, -1).numpy()
    if not np.allclose(window_sum(x) * f, ref, rtol=1e-9, atol=1e-12):
        return None
    return f

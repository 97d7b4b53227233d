"""Spatial IR nodes: integer convolution and pooling over flat values.

Values in the IR stay flat, ``(batch, features)``.  A spatial node knows the shape
``(C, *spatial)`` of its input (``(C, L)`` in 1-D, ``(C, H, W)`` in 2-D), reads the
row-major flattened tensor and writes its output flattened the same way, so every other
node is unchanged.

=============  ==============================================================  ==========
node           computes (per sample, ``xz = x - input_zero_point``)             FHE
=============  ==============================================================  ==========
Conv           ``y[o, p] = bias[o] + sum_{c, k} w[o, c, k] * xz[g(o)c, p*s+k*d]``  leveled
SumPool        ``y[c, p] = sum_k xz[c, p*s + k*d]``                               leveled
MaxPool        ``y[c, p] = max_k x[c, p*s + k*d]``                                PBS
=============  ==============================================================  ==========

Padding is given per spatial axis as ONNX ``pads``: ``(begin_1, .., begin_n, end_1, ..,
end_n)``.  In :class:`Conv` and :class:`SumPool` padded positions hold a real zero, i.e.
the integer ``input_zero_point`` (``xz = 0``: they add nothing); in :class:`MaxPool` padded
positions are ignored (as torch's implicit ``-inf`` padding), so every window must
overlap the input.  Average pooling is a :class:`SumPool` whose division is folded into
the next scale by the importer.  ``MaxPool`` costs ``window`` PBS per output element
under FHE (``max(a, b) = b + relu(a - b)`` and a cast), see :attr:`MaxPool.pbs_count`.

Examples
--------
>>> import numpy as np
>>> conv = Conv("c", ("x",), weight=np.ones((1, 1, 2, 2)), input_shape=(1, 3, 3), padding=1)
>>> conv.output_shape, conv.out_features
((1, 4, 4), 16)
>>> conv.apply(np.arange(9).reshape(1, 9)).reshape(4, 4).tolist()[0]
[0, 1, 3, 2]
>>> MaxPool("m", ("x",), input_shape=(1, 4, 4), kernel_size=2).pbs_count
16
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .nodes import NODE_TYPES, Node, _as_int_array

__all__ = ["Conv", "MaxPool", "SumPool", "WindowNode", "window_view"]

_LETTERS_OUT, _LETTERS_KER = "pqr", "uvw"


def _ints(value: Any, nd: int, name: str, minimum: int) -> tuple[int, ...]:
    """One int per spatial axis (an int is repeated)."""
    vals = [value] * nd if np.ndim(value) == 0 else list(value)
    if len(vals) != nd:
        raise ValueError(f"{name} needs {nd} value(s), got {value!r}")
    out = tuple(int(v) for v in vals)
    if any(v != f for v, f in zip(out, vals)) or min(out) < minimum:
        raise ValueError(f"{name} must hold integers >= {minimum}, got {value!r}")
    return out


def _pads(value: Any, nd: int) -> tuple[int, ...]:
    """ONNX pads ``(begins..., ends...)`` from an int, one int per axis or 2*nd ints."""
    if np.ndim(value) == 0 or len(value) == nd:
        p = _ints(value, nd, "padding", 0)
        return p + p
    return _ints(value, 2 * nd, "padding", 0)


class WindowNode(Node):
    """Shared geometry of :class:`Conv`, :class:`SumPool` and :class:`MaxPool`.

    Subclasses are frozen dataclasses with the fields ``input_shape``, ``stride``,
    ``padding`` and ``dilation`` and a :attr:`kernel_shape`.
    """

    input_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def kernel_shape(self) -> tuple[int, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def nd(self) -> int:
        """Number of spatial axes (1 or 2)."""
        return len(self.input_shape) - 1

    def _check_geometry(self, kernel: tuple[int, ...], stride: Any) -> None:
        shape = _ints(self.input_shape, len(tuple(self.input_shape)), "input_shape", 1)
        nd = len(shape) - 1
        if nd not in (1, 2):
            raise ValueError(
                f"input_shape must be (C, L) or (C, H, W), got {tuple(self.input_shape)}")
        if len(kernel) != nd:
            raise ValueError(f"a {nd}-D input needs a {nd}-D kernel, got {kernel}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "stride", _ints(kernel if stride is None else stride, nd,
                                                 "stride", 1))
        object.__setattr__(self, "padding", _pads(self.padding, nd))
        object.__setattr__(self, "dilation", _ints(self.dilation, nd, "dilation", 1))
        for axis in range(nd):
            if self._span(axis) < 0:
                raise ValueError(
                    f"{self.op} {self.name!r}: the kernel ({kernel[axis]}, dilation "
                    f"{self.dilation[axis]}) is larger than padded axis {axis} "
                    f"({shape[axis + 1]} + padding {self._pad(axis)})")

    def _pad(self, axis: int) -> tuple[int, int]:
        return self.padding[axis], self.padding[axis + self.nd]

    def _span(self, axis: int) -> int:
        k, d = self.kernel_shape[axis], self.dilation[axis]
        return self.input_shape[axis + 1] + sum(self._pad(axis)) - d * (k - 1) - 1

    @property
    def output_spatial(self) -> tuple[int, ...]:
        return tuple(self._span(a) // self.stride[a] + 1 for a in range(self.nd))

    @property
    def output_channels(self) -> int:
        return self.input_shape[0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """``(channels, *spatial)`` of the output (flattened row-major in the IR)."""
        return (self.output_channels, *self.output_spatial)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def out_features(self) -> int:
        return int(np.prod(self.output_shape))

    @property
    def window(self) -> int:
        """Number of input positions a window covers (padding included)."""
        return int(np.prod(self.kernel_shape))

    def geometry(self) -> dict[str, Any]:
        """Kernel shape, strides, pads and dilations in ONNX's names and layout."""
        return {"kernel_shape": self.kernel_shape, "strides": self.stride,
                "pads": self.padding, "dilations": self.dilation}

    def partial_sum_bound(self, lo: np.ndarray, hi: np.ndarray) -> int:
        """Largest magnitude of any partial sum (bias included) the node computes on
        inputs in ``[lo, hi]`` (per input feature, or one value for all): the exactness
        bound of a carrier dtype."""
        lo = np.broadcast_to(np.asarray(lo, np.int64), (self.in_features,))
        hi = np.broadcast_to(np.asarray(hi, np.int64), (self.in_features,))
        if isinstance(self, MaxPool):
            return max(abs(int(lo.min())), abs(int(hi.max())))
        zp = int(getattr(self, "input_zero_point", 0))
        mag = np.maximum(np.abs(lo - zp), np.abs(hi - zp))
        if isinstance(self, Conv):  # sum |w| |x - zp| over each window, then the bias
            top = int(self.apply(mag + zp, np.abs(self.weight), bias=False).max())
            return top + (0 if self.bias is None else int(np.abs(self.bias).max()))
        assert isinstance(self, SumPool)
        return int(self.apply(mag + zp).max())


def window_view(x: np.ndarray, node: WindowNode, pad_value: Any = 0) -> np.ndarray:
    """Every window of ``node`` over ``x`` of shape ``(batch, C, *spatial)``.

    Returns a read-only view (a copy only where padding is needed) of shape
    ``(batch, C, *out_spatial, *kernel_shape)``; padded positions hold ``pad_value``.
    """
    nd = node.nd
    pads = [(0, 0), (0, 0)] + [node._pad(a) for a in range(nd)]
    if any(node.padding):
        x = np.pad(x, pads, mode="constant", constant_values=pad_value)
    span = tuple(d * (k - 1) + 1 for k, d in zip(node.kernel_shape, node.dilation))
    view = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))  # type: ignore[call-overload]
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in node.stride) + \
        tuple(slice(None, None, d) for d in node.dilation)
    return view[index]


def _check_bound(bound: int, name: str) -> None:
    if bound >= 2**62:
        raise OverflowError(f"accumulator of {name!r} exceeds 62 bits")


@dataclass(frozen=True, eq=False)
class Conv(WindowNode):
    """Integer N-d convolution (N = 1, 2) with integer bias, like :class:`Gemm`.

    ``weight`` has shape ``(out_channels, in_channels / groups, *kernel)``; ``bias``
    ``(out_channels,)`` in accumulator units.  The input is ``x - input_zero_point``,
    zero padded (see the module docstring).  Weights and bias are plaintext under FHE.
    """

    op: ClassVar[str] = "conv"
    weight: np.ndarray
    input_shape: tuple[int, ...]
    bias: np.ndarray | None = None
    input_zero_point: int = 0
    stride: tuple[int, ...] = 1  # type: ignore[assignment]
    padding: tuple[int, ...] = 0  # type: ignore[assignment]
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]
    groups: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        w = _as_int_array(self.weight, "weight")
        if w.ndim not in (3, 4) or 0 in w.shape:
            raise ValueError(f"weight must be a non-empty 3-D or 4-D array, got {w.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "groups", int(self.groups))
        object.__setattr__(self, "input_zero_point", int(self.input_zero_point))
        self._check_geometry(tuple(int(k) for k in w.shape[2:]), self.stride)
        c, g = self.input_shape[0], self.groups
        if g < 1 or c % g or w.shape[0] % g or w.shape[1] * g != c:
            raise ValueError(
                f"conv {self.name!r}: weight {w.shape} with groups={g} does not fit "
                f"{c} input channels")
        if self.bias is not None:
            b = _as_int_array(self.bias, "bias")
            if b.shape != (w.shape[0],):
                raise ValueError(f"bias must have shape ({w.shape[0]},), got {b.shape}")
            object.__setattr__(self, "bias", b)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.weight.shape[2:])

    @property
    def output_channels(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, x: np.ndarray, weight: np.ndarray | None = None,
              bias: bool = True) -> np.ndarray:
        """Exact int64 convolution of a flat batch (``weight`` replaces the node's).

        Raises ``OverflowError`` when some partial sum could exceed 62 bits.
        """
        w = self.weight if weight is None else np.asarray(weight, np.int64)
        xz = np.asarray(x, np.int64).reshape(-1, *self.input_shape) - self.input_zero_point
        mag = int(np.abs(xz).max(initial=0))
        _check_bound(mag * int(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max()) + (
            int(np.abs(self.bias).max()) if bias and self.bias is not None else 0), self.name)
        g, nd = self.groups, self.nd
        v = window_view(xz, self)  # (B, C, *out, *k)
        v = v.reshape(v.shape[0], g, -1, *v.shape[2:])  # (B, G, C/G, *out, *k)
        wg = w.reshape(g, -1, *w.shape[1:])  # (G, O/G, C/G, *k)
        p, k = _LETTERS_OUT[:nd], _LETTERS_KER[:nd]
        y = np.einsum(f"bgc{p}{k},goc{k}->bgo{p}", v, wg)
        y = y.reshape(len(xz), -1)
        if bias and self.bias is not None:
            y = y + np.repeat(self.bias, int(np.prod(self.output_spatial)))
        return y


@dataclass(frozen=True, eq=False)
class SumPool(WindowNode):
    """Sum over each window of every channel (average pooling before its division).

    ``y = sum over the window of (x - input_zero_point)``, zero padded: the average's
    ``1 / window`` (or a per-position divisor) is folded into the next scale.
    ``stride`` defaults to ``kernel_size`` as in torch.
    """

    op: ClassVar[str] = "sum_pool"
    input_shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    input_zero_point: int = 0
    stride: tuple[int, ...] = None  # type: ignore[assignment]  # None: kernel_size
    padding: tuple[int, ...] = 0  # type: ignore[assignment]
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        nd = len(tuple(self.input_shape)) - 1
        object.__setattr__(self, "kernel_size", _ints(self.kernel_size, nd, "kernel_size", 1))
        object.__setattr__(self, "input_zero_point", int(self.input_zero_point))
        self._check_geometry(self.kernel_size, self.stride)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return self.kernel_size

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Exact int64 window sums of a flat batch."""
        xz = np.asarray(x, np.int64).reshape(-1, *self.input_shape) - self.input_zero_point
        _check_bound(int(np.abs(xz).max(initial=0)) * self.window, self.name)
        v = window_view(xz, self)
        return v.sum(axis=tuple(range(-self.nd, 0))).reshape(len(xz), -1)


@dataclass(frozen=True, eq=False)
class MaxPool(WindowNode):
    """Maximum over each window of every channel; padded positions are ignored.

    Every window must overlap the input (as in torch, padding at most half the kernel).
    Under FHE each output costs ``window`` PBS: ``window - 1`` for the pairwise maxima
    ``max(a, b) = b + relu(a - b)``, on inputs one bit wider than ``x``, and an identity
    lookup that passes the maximum on at the width of its consumer (:attr:`pbs_count`).
    ``stride`` defaults to ``kernel_size`` as in torch.
    """

    op: ClassVar[str] = "max_pool"
    input_shape: tuple[int, ...]
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...] = None  # type: ignore[assignment]  # None: kernel_size
    padding: tuple[int, ...] = 0  # type: ignore[assignment]
    dilation: tuple[int, ...] = 1  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        nd = len(tuple(self.input_shape)) - 1
        object.__setattr__(self, "kernel_size", _ints(self.kernel_size, nd, "kernel_size", 1))
        self._check_geometry(self.kernel_size, self.stride)
        for axis in range(nd):  # every window needs a real position on every axis
            pos = np.arange(self.output_spatial[axis])[:, None] * self.stride[axis] + (
                np.arange(self.kernel_size[axis])[None, :] * self.dilation[axis]
                - self._pad(axis)[0])
            if not np.all(((pos >= 0) & (pos < self.input_shape[axis + 1])).any(axis=1)):
                raise ValueError(f"max_pool {self.name!r}: a window lies entirely in the "
                                 f"padding of axis {axis}")

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return self.kernel_size

    @property
    def pbs_count(self) -> int:
        """PBS per sample under FHE: ``window`` per output element (none if 1)."""
        return self.out_features * self.window if self.window > 1 else 0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Exact window maxima of a flat int64 batch."""
        x = np.asarray(x, np.int64).reshape(-1, *self.input_shape)
        v = window_view(x, self, pad_value=np.iinfo(np.int64).min)
        return v.max(axis=tuple(range(-self.nd, 0))).reshape(len(x), -1)


NODE_TYPES.update({cls.op: cls for cls in (Conv, SumPool, MaxPool)})

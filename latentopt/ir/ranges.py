"""Value-range and bit-width analysis of integer tensors.

Ranges are kept per channel (last axis) as ``int64`` arrays.  The bit-width of a
range follows concrete's convention: unsigned when ``lo >= 0``, else two's-complement
signed.

>>> bit_width(0, 7), bit_width(-4, 3), bit_width(-5, 3), bit_width(0, 0)
(3, 3, 4, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .conv_nodes import Conv, MaxPool, SumPool, WindowNode
from .nodes import Add, Concat, Dequantize, Gemm, Node, QuantizeInput, Round, TableLookup

__all__ = [
    "Interval",
    "NodeGraph",
    "add_bounds",
    "bit_width",
    "centred_bits",
    "concat_bounds",
    "propagate",
    "widen_ranges",
    "worst_case_ranges",
]


class NodeGraph(Protocol):
    """What range analysis reads of a circuit (a :class:`~latentopt.ir.Circuit`)."""

    @property
    def nodes(self) -> Sequence[Node]: ...

    @property
    def n_features(self) -> int: ...


def bit_width(lo: int, hi: int) -> int:
    """Bits needed to hold every integer of ``[lo, hi]``."""
    lo, hi = int(lo), int(hi)
    if lo > hi:
        raise ValueError(f"empty interval [{lo}, {hi}]")
    if lo >= 0:
        return max(1, hi.bit_length())
    return 1 + max(hi.bit_length() if hi > 0 else 0, (-lo - 1).bit_length())


def centred_bits(lo: np.ndarray | int, hi: np.ndarray | int, lsbs: int = 0) -> int:
    """Bits of a value as the FHE lowering encrypts it, after removing ``lsbs`` LSBs.

    The lowering centres every value per channel: the ciphertext holds ``v - o`` with
    ``o = floor(lo / 2**lsbs) * 2**lsbs`` (a multiple of ``2**lsbs``, so that
    ``round(v - o) == round(v) - o``).  A lookup behind a rounding of ``lsbs`` LSBs
    then reads ``max(round(hi) - o) / 2**lsbs``: this many bits (at least 1).

    >>> centred_bits(-100, 27)               # [0, 127]: 7 bits (signed: 8)
    7
    >>> centred_bits([-100, 0], [27, 60], 3)  # [0, 16] -> 5 bits; rounding carries
    5
    """
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    if lsbs < 0:
        raise ValueError(f"lsbs must be >= 0, got {lsbs}")
    half = (1 << lsbs) >> 1
    top = ((hi + half) >> lsbs) - (lo >> lsbs)  # round(hi / 2**l) - floor(lo / 2**l)
    return max(1, int(top.max()).bit_length())


@dataclass(frozen=True, eq=False)
class Interval:
    """Per-channel integer bounds ``lo <= x <= hi`` (arrays of shape ``(channels,)``)."""

    lo: np.ndarray
    hi: np.ndarray

    def __post_init__(self) -> None:
        lo = np.atleast_1d(np.asarray(self.lo, dtype=np.int64)).copy()
        hi = np.atleast_1d(np.asarray(self.hi, dtype=np.int64)).copy()
        if lo.shape != hi.shape:
            raise ValueError("lo and hi must have the same shape")
        if np.any(lo > hi):
            raise ValueError("interval with lo > hi")
        lo.setflags(write=False)
        hi.setflags(write=False)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    @property
    def min(self) -> int:
        return int(self.lo.min())

    @property
    def max(self) -> int:
        return int(self.hi.max())

    @property
    def bits(self) -> int:
        """Bit-width of the whole tensor (all channels)."""
        return bit_width(self.min, self.max)

    @property
    def channel_bits(self) -> np.ndarray:
        return np.array([bit_width(a, b) for a, b in zip(self.lo, self.hi)], dtype=np.int64)

    @classmethod
    def from_values(cls, values: np.ndarray) -> Interval:
        """Observed per-channel bounds of a batch-first integer array."""
        v = np.asarray(values)
        if v.size == 0:
            raise ValueError("cannot calibrate a range from an empty array")
        flat = v.reshape(-1, v.shape[-1]) if v.ndim > 1 else v.reshape(-1, 1)
        return cls(flat.min(axis=0), flat.max(axis=0))

    def to_list(self) -> list[list[int]]:
        return [self.lo.tolist(), self.hi.tolist()]


def _gemm_bounds(node: Gemm, x: Interval) -> Interval:
    w = node.weight
    lo = x.lo - node.input_zero_point
    hi = x.hi - node.input_zero_point
    if lo.size == 1 and node.in_features != 1:
        lo = np.full(node.in_features, lo[0])
        hi = np.full(node.in_features, hi[0])
    # Python-int (object) arithmetic: exact whatever the magnitude.
    wpos = np.maximum(w, 0).astype(object)
    wneg = np.minimum(w, 0).astype(object)
    out_lo = wpos @ lo.astype(object) + wneg @ hi.astype(object)
    out_hi = wpos @ hi.astype(object) + wneg @ lo.astype(object)
    if node.bias is not None:
        out_lo = out_lo + node.bias.astype(object)
        out_hi = out_hi + node.bias.astype(object)
    top = max(abs(int(v)) for v in np.concatenate([out_lo, out_hi]))
    if top >= 2**62:
        raise OverflowError(f"accumulator of {node.name!r} exceeds 62 bits")
    return Interval(out_lo.astype(np.int64), out_hi.astype(np.int64))


def _window_bounds(node: WindowNode, x: Interval) -> Interval:
    """Exact bounds of a convolution or pooling (every output reaches them)."""
    lo, hi = x.lo, x.hi
    if lo.size == 1 and node.in_features != 1:
        lo, hi = np.full(node.in_features, lo[0]), np.full(node.in_features, hi[0])
    if isinstance(node, Conv):
        # every partial sum below 2**62 (checked in Python ints): int64 is exact below
        zp = node.input_zero_point
        mag = max(abs(int(lo.min()) - zp), abs(int(hi.max()) - zp))
        w_sum = int(np.abs(node.weight).reshape(node.weight.shape[0], -1).sum(axis=1).max())
        b_max = 0 if node.bias is None else int(np.abs(node.bias).max())
        if mag * w_sum + b_max >= 2**62:
            raise OverflowError(f"accumulator of {node.name!r} exceeds 62 bits")
        # padded positions are a real zero: they add nothing to either bound
        wpos, wneg = np.maximum(node.weight, 0), np.minimum(node.weight, 0)
        out_lo = node.apply(lo, wpos, bias=False) + node.apply(hi, wneg, bias=False)
        out_hi = node.apply(hi, wpos, bias=False) + node.apply(lo, wneg, bias=False)
        if node.bias is not None:
            b = np.repeat(node.bias, int(np.prod(node.output_spatial)))
            out_lo, out_hi = out_lo + b, out_hi + b
        return Interval(out_lo[0], out_hi[0])
    assert isinstance(node, (SumPool, MaxPool))  # both monotone in every input
    return Interval(node.apply(lo)[0], node.apply(hi)[0])


def propagate(node: Node, x: Interval, n_features: int) -> Interval:
    """Worst-case output interval of ``node`` given its input interval."""
    if isinstance(node, QuantizeInput):
        lo, hi = node.qrange
        return Interval(np.full(n_features, lo), np.full(n_features, hi))
    if isinstance(node, Gemm):
        return _gemm_bounds(node, x)
    if isinstance(node, WindowNode):
        return _window_bounds(node, x)
    if isinstance(node, Round):
        r = node.apply
        return Interval(r(x.lo), r(x.hi))
    if isinstance(node, TableLookup):
        out_lo, out_hi = node.fn.output_bounds(x.lo, x.hi)
        return Interval(out_lo, out_hi)
    if isinstance(node, Dequantize):
        return x
    raise TypeError(f"no range rule for node type {type(node).__name__}")


def add_bounds(a: Interval, b: Interval) -> Interval:
    """Interval of ``a + b`` (per channel; a one-channel interval broadcasts)."""
    lo: np.ndarray = a.lo.astype(object) + b.lo.astype(object)
    hi: np.ndarray = a.hi.astype(object) + b.hi.astype(object)
    if max(abs(int(v)) for v in np.concatenate([np.ravel(lo), np.ravel(hi)])) >= 2**62:
        raise OverflowError("sum exceeds 62 bits")
    return Interval(lo.astype(np.int64), hi.astype(np.int64))


def concat_bounds(a: Interval, b: Interval) -> Interval:
    """Interval of ``[a, b]`` (per-feature intervals of both operands)."""
    return Interval(np.concatenate([a.lo, b.lo]), np.concatenate([a.hi, b.hi]))


def worst_case_ranges(circuit: NodeGraph) -> dict[str, Interval]:
    """Worst-case interval of every integer value, from weights and input ranges."""
    out: dict[str, Interval] = {}
    for node in circuit.nodes:
        if isinstance(node, (Add, Concat)):
            rule = add_bounds if isinstance(node, Add) else concat_bounds
            out[node.name] = rule(out[node.inputs[0]], out[node.inputs[1]])
            continue
        src = node.inputs[0]
        x = out.get(src, Interval(np.zeros(1), np.zeros(1)))
        out[node.name] = propagate(node, x, circuit.n_features)
    return out


def widen_ranges(
    circuit: NodeGraph, ranges: dict[str, Interval], margin: float
) -> dict[str, Interval]:
    """Calibrated ranges widened by ``margin`` x their span on each side (never past the
    worst case); rounded and table-lookup ranges follow from their widened inputs
    (:func:`propagate`).

    A margin lets unseen inputs slightly beyond the calibration data through without
    overflowing an accumulator, at the price of (often) one more bit.

    >>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
    >>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 4), Gemm("g", ("q",), [[1]]),
    ...              Dequantize("o", ("g",), 1.0, 0)], n_features=1)
    >>> widen_ranges(c, {"g": Interval(-2, 2)}, 0.5)["g"].to_list()
    [[-4], [4]]
    """
    worst = worst_case_ranges(circuit)
    out: dict[str, Interval] = {}
    for node in circuit.nodes:
        if node.name not in ranges:
            continue
        src = out.get(node.inputs[0])
        if isinstance(node, (Round, TableLookup)) and src is not None:
            out[node.name] = propagate(node, src, src.lo.size)
        else:
            r, w = ranges[node.name], worst[node.name]
            pad = np.ceil(margin * (r.hi - r.lo)).astype(np.int64)
            out[node.name] = Interval(np.maximum(r.lo - pad, w.lo), np.minimum(r.hi + pad, w.hi))
    return out

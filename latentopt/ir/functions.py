"""Univariate integer functions used by table-lookup nodes.

A table lookup (TLU) applies one univariate integer function to every element of
an integer tensor.  Under TFHE each element costs one programmable bootstrapping,
so a TLU is also where requantization and the activation are fused.

Two kinds of function exist:

* :class:`QuantActivation` -- ``clip(rint(act(v * input_scale) / output_scale) + zp)``:
  dequantize an accumulator, apply a named activation, requantize.  Parametric, so a
  table can be materialised for any integer domain (e.g. after rounding).
* :class:`ExplicitTable` -- any function given as a table over ``[offset, offset + size)``;
  values outside are clipped to the table's ends.

Both may hold one function per output channel (the last axis of the tensor).

Examples
--------
>>> import numpy as np
>>> f = QuantActivation("relu", input_scale=0.5, output_scale=1.0, n_bits=2, signed=False)
>>> f(np.array([[-4, 1, 3, 9]])).tolist()
[[0, 0, 2, 3]]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "MONOTONE_ACTIVATIONS",
    "ExplicitTable",
    "QuantActivation",
    "UnivariateFunction",
    "int_range",
]


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


#: Activations available by name; all act elementwise on float64 arrays.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "hardtanh": lambda x: np.clip(x, -1.0, 1.0),
    "gelu": _gelu,
    "silu": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0.0, x),
}
#: Activations that are non-decreasing: range analysis only needs the interval ends.
MONOTONE_ACTIVATIONS = frozenset(
    {"identity", "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "hardtanh", "softplus"}
)


def int_range(n_bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """Representable integer range of a quantizer.

    >>> int_range(3, signed=True), int_range(3, signed=True, narrow=True), int_range(3, False)
    ((-4, 3), (-3, 3), (0, 7))
    """
    if n_bits < 1:
        raise ValueError(f"n_bits must be >= 1, got {n_bits}")
    if signed:
        lo, hi = -(2 ** (n_bits - 1)), 2 ** (n_bits - 1) - 1
        return (lo + 1 if narrow else lo), hi
    return 0, 2**n_bits - 1 - (1 if narrow else 0)


def same_parts(a: Any, b: Any) -> bool:
    """Equality of two objects by type and ``to_dict()`` parts (metadata and arrays)."""
    if type(a) is not type(b):
        return False
    m1, a1 = a.to_dict()
    m2, a2 = b.to_dict()
    return m1 == m2 and a1.keys() == a2.keys() and all(
        a1[k].shape == a2[k].shape and np.array_equal(a1[k], a2[k]) for k in a1
    )


def _frozen(a: Any, dtype: Any) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


def int_grid(lo: int, hi: int, step: int = 1) -> np.ndarray:
    """``range(lo, hi + 1, step)`` as int64, exact for any magnitude.

    (``np.arange`` computes its length in float64, which drops an entry for bounds near
    2**53.)

    >>> int_grid(-3, 3, 2).tolist()
    [-3, -1, 1, 3]
    """
    lo, hi, step = int(lo), int(hi), int(step)
    return lo + step * np.arange((hi - lo) // step + 1, dtype=np.int64)


class UnivariateFunction:
    """Base class: an elementwise integer -> integer function, optionally per channel."""

    kind: ClassVar[str] = ""

    @property
    def n_channels(self) -> int | None:
        """Number of distinct per-channel functions, ``None`` if shared by all channels."""
        raise NotImplementedError

    def __call__(self, v: np.ndarray) -> np.ndarray:
        """Apply to an integer array whose last axis is the channel axis."""
        raise NotImplementedError

    def output_bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel output bounds given per-channel input bounds ``[lo, hi]``."""
        raise NotImplementedError

    def tabulate(self, lo: int, hi: int, step: int = 1) -> np.ndarray:
        """Materialise the function on ``range(lo, hi + 1, step)``.

        Returns an ``int64`` array of shape ``(n_channels, n)`` (``n_channels`` is 1 when
        the function is shared by all channels).
        """
        domain = int_grid(lo, hi, step)
        channels = self.n_channels or 1
        grid = np.broadcast_to(domain[:, None], (domain.size, channels))
        return np.ascontiguousarray(self(grid).T)

    # serialisation -------------------------------------------------------------
    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Split into JSON-able metadata and numpy arrays."""
        raise NotImplementedError

    @staticmethod
    def from_dict(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> UnivariateFunction:
        kind = meta.get("kind")
        if kind == QuantActivation.kind:
            return QuantActivation(
                meta["activation"],
                input_scale=arrays["input_scale"],
                output_scale=arrays["output_scale"],
                output_zero_point=int(meta["output_zero_point"]),
                n_bits=int(meta["n_bits"]),
                signed=bool(meta["signed"]),
                narrow=bool(meta["narrow"]),
            )
        if kind == ExplicitTable.kind:
            return ExplicitTable(arrays["table"], offset=int(meta["offset"]),
                                 rows=arrays.get("rows"))
        raise ValueError(f"unknown univariate function kind {kind!r}")

    def same_as(self, other: UnivariateFunction) -> bool:
        """Structural equality (same kind, same parameters)."""
        return same_parts(self, other)


@dataclass(frozen=True, eq=False)
class QuantActivation(UnivariateFunction):
    """Dequantize, activate, requantize: the usual fused TLU of a quantized network.

    ``f(v) = clip(rint(act(v * input_scale) / output_scale) + output_zero_point, qmin, qmax)``
    where ``rint`` rounds half to even (as ``torch.round`` does in brevitas), and
    ``[qmin, qmax]`` is the range of an ``n_bits`` (un)signed (narrow) integer.

    Parameters
    ----------
    activation : str
        A key of :data:`ACTIVATIONS`.
    input_scale : float or array of shape (n_channels,)
        Real value of one accumulator unit (input scale x weight scale).
    output_scale : float or array of shape (n_channels,)
        Scale of the output quantizer.
    output_zero_point, n_bits, signed, narrow
        Output quantizer.
    """

    kind: ClassVar[str] = "quant_activation"
    activation: str
    input_scale: np.ndarray
    output_scale: np.ndarray
    output_zero_point: int = 0
    n_bits: int = 8
    signed: bool = False
    narrow: bool = False
    _channels: int | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; known: {sorted(ACTIVATIONS)}"
            )
        ins = _frozen(self.input_scale, np.float64)
        outs = _frozen(self.output_scale, np.float64)
        for name, arr in (("input_scale", ins), ("output_scale", outs)):
            if arr.ndim > 1:
                raise ValueError(f"{name} must be a scalar or 1-D, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise ValueError(f"{name} must be finite and > 0")
        if ins.ndim == 1 and outs.ndim == 1 and ins.size != outs.size:
            raise ValueError("input_scale and output_scale have different channel counts")
        int_range(self.n_bits, self.signed, self.narrow)  # validates n_bits
        object.__setattr__(self, "input_scale", ins)
        object.__setattr__(self, "output_scale", outs)
        channels = max(ins.size if ins.ndim else 0, outs.size if outs.ndim else 0) or None
        object.__setattr__(self, "_channels", channels)

    @property
    def n_channels(self) -> int | None:
        return self._channels

    @property
    def qrange(self) -> tuple[int, int]:
        return int_range(self.n_bits, self.signed, self.narrow)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        x = np.asarray(v, dtype=np.float64) * self.input_scale
        y = ACTIVATIONS[self.activation](x) / self.output_scale
        q = np.rint(y) + self.output_zero_point
        lo, hi = self.qrange
        return np.clip(q, lo, hi).astype(np.int64)

    def output_bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        if self.activation in MONOTONE_ACTIVATIONS:
            return self(lo), self(hi)
        span = int(np.max(hi - lo)) if lo.size else 0
        if span <= 1 << 16:
            domain = np.arange(span + 1, dtype=np.int64)[:, None]
            values = self(np.minimum(lo[None, :] + domain, hi[None, :]))
            return values.min(axis=0), values.max(axis=0)
        qlo, qhi = self.qrange
        return np.full(lo.shape, qlo, np.int64), np.full(hi.shape, qhi, np.int64)

    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {
            "kind": self.kind,
            "activation": self.activation,
            "output_zero_point": int(self.output_zero_point),
            "n_bits": int(self.n_bits),
            "signed": bool(self.signed),
            "narrow": bool(self.narrow),
        }
        return meta, {"input_scale": self.input_scale, "output_scale": self.output_scale}


@dataclass(frozen=True, eq=False)
class ExplicitTable(UnivariateFunction):
    """Any integer function given by its values on ``[offset, offset + size)``.

    ``table`` has shape ``(size,)`` (shared) or ``(n_rows, size)``.  A 2-D table serves
    one channel per row, or, with ``rows`` (one row index per channel), channels that
    share rows: a tensor whose scale differs per channel but repeats over positions
    keeps one row per distinct scale instead of one per element.  Inputs outside the
    covered interval are clipped to its ends.

    >>> t = ExplicitTable(np.array([5, 6, 7]), offset=-1)
    >>> t(np.array([-3, -1, 0, 1, 8])).tolist()
    [5, 5, 6, 7, 7]
    >>> s = ExplicitTable(np.array([[0, 1], [0, 2]]), rows=np.array([0, 1, 1]))
    >>> s.n_channels, s(np.array([1, 1, 0])).tolist()
    (3, [1, 2, 0])
    """

    kind: ClassVar[str] = "explicit_table"
    table: np.ndarray
    offset: int = 0
    rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.table)
        if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
            raise ValueError(f"table must be 1-D or 2-D and non-empty, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError("table values must be integers")
        object.__setattr__(self, "table", _frozen(arr, np.int64))
        object.__setattr__(self, "offset", int(self.offset))
        if self.rows is not None:
            rows = np.asarray(self.rows)
            if (arr.ndim != 2 or rows.ndim != 1 or rows.size == 0
                    or not np.issubdtype(rows.dtype, np.integer)
                    or rows.min() < 0 or rows.max() >= arr.shape[0]):
                raise ValueError(
                    f"rows must be a non-empty 1-D array of integer row indices into a "
                    f"2-D table ({arr.shape[0] if arr.ndim == 2 else 0} rows)")
            object.__setattr__(self, "rows", _frozen(rows, np.int64))

    @property
    def n_channels(self) -> int | None:
        if self.table.ndim == 1:
            return None
        return int(self.table.shape[0] if self.rows is None else self.rows.size)

    @property
    def channel_rows(self) -> np.ndarray:
        """Each channel's row of a 2-D ``table``."""
        if self.rows is None:
            return np.arange(self.table.shape[0])
        return self.rows

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.int64)
        size = self.table.shape[-1]
        idx = np.clip(v - self.offset, 0, size - 1)
        if self.table.ndim == 1:
            return self.table[idx]
        channels = self.n_channels
        if v.ndim == 0 or v.shape[-1] != channels:
            raise ValueError(
                f"per-channel table has {channels} channels, input last axis is "
                f"{v.shape[-1] if v.ndim else 0}"
            )
        return self.table[self.channel_rows, idx]

    def output_bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
        size = self.table.shape[-1]
        a = np.clip(lo - self.offset, 0, size - 1)
        b = np.clip(hi - self.offset, 0, size - 1)
        row_of = (np.zeros(lo.size, np.int64) if self.table.ndim == 1
                  else np.broadcast_to(self.channel_rows, lo.shape))
        rows = self.table if self.table.ndim == 2 else self.table[None, :]
        out_lo = np.array([rows[row_of[c], a[c] : b[c] + 1].min() for c in range(lo.size)],
                          np.int64)
        out_hi = np.array([rows[row_of[c], a[c] : b[c] + 1].max() for c in range(lo.size)],
                          np.int64)
        return out_lo, out_hi

    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        arrays = {"table": self.table}
        if self.rows is not None:
            arrays["rows"] = self.rows
        return {"kind": self.kind, "offset": self.offset}, arrays

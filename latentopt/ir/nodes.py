"""Typed, immutable nodes of the quantized-circuit IR.

Every node has a unique ``name`` and the names of the values it reads (``inputs``).
Tensors are batch-first; the last axis is the feature/channel axis.  Integer tensors
are ``int64`` in the reference backend.

=================  ==========================================  ===================
node               computes                                    runs (FHE)
=================  ==========================================  ===================
QuantizeInput      ``clip(rint(x / scale) + zp, qmin, qmax)``   client, in clear
                   (float32 arithmetic, as in brevitas)
Gemm               ``(x - input_zero_point) @ weight.T + bias``  server, leveled
Round              ``round(x / 2**lsbs) * 2**lsbs`` (half up)    server, PBS-based
TableLookup        ``fn(x)`` elementwise                        server, one PBS/elt
Add                ``a + b`` elementwise (two inputs)            server, leveled
Concat             ``[a, b]`` along the feature axis             server, free
Dequantize         ``(x - zero_point) * scale``                 client, in clear
=================  ==========================================  ===================

Values are flat: every node sees a ``(batch, features)`` array.  Convolution and
pooling nodes (:mod:`.conv_nodes`) know the ``(channels, *spatial)`` shape of their
input and read and write the row-major flattened tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .functions import UnivariateFunction, int_range, same_parts

__all__ = [
    "NODE_TYPES",
    "Add",
    "Concat",
    "Dequantize",
    "Gemm",
    "Node",
    "QuantizeInput",
    "Round",
    "TableLookup",
]

ROUNDING_METHODS = ("exact", "approximate")


def _frozen(a: Any, dtype: Any, name: str) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    arr.setflags(write=False)
    return arr


def _as_int_array(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.rint(arr)):
            raise ValueError(f"{name} must hold integers")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return _frozen(arr, np.int64, name)


@dataclass(frozen=True, eq=False)
class Node:
    """Base node: a named operation on named input values."""

    op: ClassVar[str] = ""
    #: Number of input values the node reads.
    arity: ClassVar[int] = 1
    name: str
    inputs: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("node name must be a non-empty string")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if len(self.inputs) != self.arity or not all(
            isinstance(i, str) and i for i in self.inputs
        ):
            raise ValueError(
                f"{self.op} node {self.name!r} takes exactly {self.arity} input name(s), "
                f"got {self.inputs!r}"
            )

    # serialisation -------------------------------------------------------------
    def to_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Split into JSON-able metadata and named numpy arrays."""
        meta: dict[str, Any] = {"op": self.op, "name": self.name, "inputs": list(self.inputs)}
        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):
            if f.name in ("name", "inputs"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arrays[f.name] = value
            elif isinstance(value, UnivariateFunction):
                fmeta, farrays = value.to_dict()
                meta[f.name] = fmeta
                arrays.update({f"{f.name}.{k}": v for k, v in farrays.items()})
            elif value is None or isinstance(value, (bool, int, float, str)):
                meta[f.name] = value
            elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
                meta[f.name] = list(value)  # shapes and strides: nodes re-make tuples
            else:  # pragma: no cover - guarded by node definitions
                raise TypeError(f"cannot serialise field {f.name} of {type(value)}")
        return meta, arrays

    @classmethod
    def from_dict(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Node:
        op = meta.get("op")
        node_cls = NODE_TYPES.get(op)  # type: ignore[arg-type]
        if node_cls is None:
            raise ValueError(f"unknown node op {op!r}")
        kwargs: dict[str, Any] = {"name": meta["name"], "inputs": tuple(meta["inputs"])}
        for f in fields(node_cls):
            if f.name in kwargs:
                continue
            if f.name in arrays:
                kwargs[f.name] = arrays[f.name]
            elif isinstance(meta.get(f.name), dict):
                prefix = f"{f.name}."
                sub = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                kwargs[f.name] = UnivariateFunction.from_dict(meta[f.name], sub)
            elif f.name in meta:
                kwargs[f.name] = meta[f.name]
        return node_cls(**kwargs)

    def same_as(self, other: Node) -> bool:
        """Structural equality: same type, fields and array values."""
        return same_parts(self, other)


@dataclass(frozen=True, eq=False)
class QuantizeInput(Node):
    """Quantize float features to integers (done by the client, in the clear).

    ``q = clip(rint(x / scale) + zero_point, qmin, qmax)``; ``scale`` and ``zero_point``
    are scalars or per-feature arrays.  Out-of-range inputs are clipped (saturate).
    """

    op: ClassVar[str] = "quantize_input"
    scale: np.ndarray
    zero_point: np.ndarray
    n_bits: int
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        scale = _frozen(self.scale, np.float64, "scale")
        if np.any(scale <= 0):
            raise ValueError("scale must be > 0")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", _as_int_array(self.zero_point, "zero_point"))
        # plain Python scalars: numpy ints/bools would not serialise
        object.__setattr__(self, "n_bits", int(self.n_bits))
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "narrow", bool(self.narrow))
        int_range(self.n_bits, self.signed, self.narrow)

    @property
    def qrange(self) -> tuple[int, int]:
        return int_range(self.n_bits, self.signed, self.narrow)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Quantize a float array.

        The division runs in float32, as in brevitas (whose inputs are float32), so the
        integers match the QAT forward pass exactly; NaN inputs are rejected.
        """
        return self.apply_float32(x).astype(np.int64)

    def apply_float32(self, x: np.ndarray) -> np.ndarray:
        """Like :meth:`apply` but returns the integers as a float32 array."""
        lo, hi = self.qrange
        q = np.array(x, dtype=np.float32)  # a copy: everything below is in place
        if np.isnan(q).any():
            raise ValueError("cannot quantize NaN inputs")
        np.divide(q, self.scale.astype(np.float32), out=q)
        np.rint(q, out=q)
        if np.any(self.zero_point):
            q += self.zero_point.astype(np.float32)
        # bounds as rows: numpy's maximum/minimum are faster with an array operand
        width = q.shape[-1] if q.ndim else 1
        # (beyond 24 bits float32 cannot hold lo/hi exactly: use the nearest inner value,
        # so that the result always lies in the quantizer's range)
        lo32, hi32 = np.float32(lo), np.float32(hi)
        if int(lo32) < lo:
            lo32 = np.nextafter(lo32, np.float32(np.inf))
        if int(hi32) > hi:
            hi32 = np.nextafter(hi32, np.float32(-np.inf))
        np.maximum(q, np.full(width, lo32, np.float32), out=q)
        return np.minimum(q, np.full(width, hi32, np.float32), out=q)


@dataclass(frozen=True, eq=False)
class Gemm(Node):
    """Integer matrix product with integer bias: the accumulator of a layer.

    ``acc = (x - input_zero_point) @ weight.T + bias`` with ``weight`` of shape
    ``(out_features, in_features)``.  Weights and bias are plaintext under FHE.
    """

    op: ClassVar[str] = "gemm"
    weight: np.ndarray
    bias: np.ndarray | None = None
    input_zero_point: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        w = _as_int_array(self.weight, "weight")
        if w.ndim != 2 or 0 in w.shape:
            raise ValueError(f"weight must be a non-empty 2-D array, got shape {w.shape}")
        object.__setattr__(self, "weight", w)
        if self.bias is not None:
            b = _as_int_array(self.bias, "bias")
            if b.shape != (w.shape[0],):
                raise ValueError(f"bias must have shape ({w.shape[0]},), got {b.shape}")
            object.__setattr__(self, "bias", b)
        object.__setattr__(self, "input_zero_point", int(self.input_zero_point))

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True, eq=False)
class Round(Node):
    """Remove ``lsbs`` least significant bits with rounding (``round_bit_pattern``).

    The value keeps its scale: ``((x + 2**(lsbs-1)) >> lsbs) << lsbs`` (round half up),
    so the table lookup that follows sees an input with ``lsbs`` fewer significant bits.
    ``method`` is ``"exact"`` or ``"approximate"`` (FHE only: the approximate method may
    be off by one step but costs less; the integer backend computes the exact value).
    """

    op: ClassVar[str] = "round"
    lsbs: int
    method: str = "exact"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "lsbs", int(self.lsbs))
        if self.lsbs < 0:
            raise ValueError("lsbs must be >= 0")
        if self.method not in ROUNDING_METHODS:
            raise ValueError(f"method must be one of {ROUNDING_METHODS}, got {self.method!r}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.lsbs == 0:
            return x
        return ((x + (1 << (self.lsbs - 1))) >> self.lsbs) << self.lsbs


@dataclass(frozen=True, eq=False)
class TableLookup(Node):
    """Elementwise univariate function: one PBS per element under FHE."""

    op: ClassVar[str] = "table_lookup"
    fn: UnivariateFunction

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.fn, UnivariateFunction):
            raise TypeError("fn must be a UnivariateFunction")


@dataclass(frozen=True, eq=False)
class Add(Node):
    """Elementwise sum of two integer values of the same width (residual connections).

    The IR has no notion of scale: whoever builds the circuit makes both operands share
    one scale (and zero point 0), so that the integer sum is the sum of the real values.
    """

    op: ClassVar[str] = "add"
    arity: ClassVar[int] = 2

    def apply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b


@dataclass(frozen=True, eq=False)
class Concat(Node):
    """Concatenation of two values along the (flat) feature axis: ``[a, b]``.

    For ``(C, *spatial)`` tensors this is the concatenation of channels.  As for
    :class:`Add`, whoever builds the circuit gives both operands one zero point; their
    scales may differ per feature.
    """

    op: ClassVar[str] = "concat"
    arity: ClassVar[int] = 2

    def apply(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b], axis=-1)


@dataclass(frozen=True, eq=False)
class Dequantize(Node):
    """Integer -> float: ``(x - zero_point) * scale + offset`` (client side, in the clear).

    ``offset`` (default 0) carries an affine output transform folded into the circuit,
    e.g. a regressor's target de-standardisation, so that every backend, the ONNX export
    and the deployment client return outputs in the user's units.
    """

    op: ClassVar[str] = "dequantize"
    scale: np.ndarray
    zero_point: np.ndarray
    offset: np.ndarray = 0.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "scale", _frozen(self.scale, np.float64, "scale"))
        object.__setattr__(self, "zero_point", _as_int_array(self.zero_point, "zero_point"))
        object.__setattr__(self, "offset", _frozen(self.offset, np.float64, "offset"))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.zero_point) * self.scale + self.offset


NODE_TYPES: dict[str, type[Node]] = {
    cls.op: cls for cls in (QuantizeInput, Gemm, Round, TableLookup, Add, Concat, Dequantize)
}

"""Lowering an imported torch graph (:mod:`.fx_import`) to an IR circuit.

Shared by post-training quantization (:mod:`.ptq`) and the brevitas QAT importer
(:mod:`.brevitas_import`); they differ only in where quantization parameters come from,
which a :class:`QuantPolicy` supplies.

How each operation becomes integer IR (values are flattened row-major, so a
``(C, H, W)`` tensor is ``C*H*W`` features and ``Flatten`` costs nothing):

* ``Linear`` / ``Conv1d`` / ``Conv2d``: integer weights (per output channel scales),
  then one :class:`~latentopt.ir.Gemm`.  A convolution becomes the gemm of its
  (sparse) Toeplitz matrix, computed exactly by running the integer kernel on the
  identity basis; the bias is an integer in accumulator units.
* activations: one :class:`~latentopt.ir.TableLookup` that dequantizes, applies the
  activation and requantizes (one PBS per element under FHE).
* average pooling, ``mean``, an unfolded batch norm: linear maps whose rows have one
  magnitude: a gemm of ``+-1`` weights and a per-row scale (exact, no lookup).
* residual ``a + b``: both operands are quantized with one shared scale (a lookup on an
  operand only when it is not already), then an :class:`~latentopt.ir.Add`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import (
    Add,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    Node,
    QuantActivation,
    QuantizeInput,
    TableLookup,
    int_range,
)
from ..ir.ranges import Interval, add_bounds, propagate
from .fx_import import Op, UnsupportedOpError

__all__ = ["QParams", "QuantPolicy", "QValue", "lower_graph"]

#: Largest dense matrix (entries) a convolution or pooling may lower to.
MAX_DENSE_ENTRIES = 1 << 26
#: Largest explicit table (entries over all channels) for activations without a name.
MAX_TABLE_ENTRIES = 1 << 24


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


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 1


class _Builder:
    def __init__(self, ops: list[Op], shapes: dict[str, tuple[int, ...]],
                 policy: QuantPolicy) -> None:
        self.ops = {op.name: op for op in ops}
        self.order = ops
        self.shapes = shapes
        self.policy = policy
        self.nodes: list[Node] = []
        self.ranges: dict[str, Interval] = {}
        self.env: dict[str, QValue | Pending | None] = {}
        self.consumers: dict[str, list[Op]] = {op.name: [] for op in ops}
        for op in ops:
            for i in op.inputs:
                self.consumers[i].append(op)
        self.n_features = 0
        self._names: set[str] = set()

    # ------------------------------------------------------------ bookkeeping
    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names or name == "input":
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def _emit(self, node: Node) -> None:
        if isinstance(node, Add):
            rng = add_bounds(self.ranges[node.inputs[0]], self.ranges[node.inputs[1]])
        else:
            src = self.ranges.get(node.inputs[0], Interval(np.zeros(1), np.zeros(1)))
            rng = propagate(node, src, self.n_features)
        self.ranges[node.name] = rng
        self.nodes.append(node)

    def _qvalue(self, op: Op, what: str) -> QValue:
        v = self.env[op.inputs[0]]
        if isinstance(v, Pending):
            raise UnsupportedOpError(
                f"{what} reading an unquantized float tensor (add a brevitas quantizer, "
                f"e.g. QuantIdentity or QuantReLU, before it)", op.name)
        assert v is not None
        return v

    # ------------------------------------------------------------- lookups
    def _lookup(self, name: str, src: QValue, fns: list[Any], params: QParams,
                shape: tuple[int, ...]) -> QValue:
        """A table lookup: dequantize ``src``, apply ``fns``, quantize with ``params``."""
        tname = self._unique(name)
        width = _numel(shape)
        act_names = [a for _, a in fns]
        in_scale = src.scale[0] if src.uniform else src.scale
        if src.zero_point == 0 and len(fns) <= 1 and all(a is not None for a in act_names):
            fn: Any = QuantActivation(
                act_names[0] if fns else "identity", input_scale=in_scale,
                output_scale=np.asarray(params.scale), output_zero_point=params.zero_point,
                n_bits=params.n_bits, signed=params.signed, narrow=params.narrow)
        else:
            fn = self._explicit_table(src, fns, params, width)
        self._emit(TableLookup(tname, (src.name,), fn=fn))
        return QValue(tname, shape, np.full(width, params.scale), params.zero_point, params)

    def _explicit_table(self, src: QValue, fns: list[Any], params: QParams,
                        width: int) -> ExplicitTable:
        rng = self.ranges[src.name]
        lo, hi = rng.min, rng.max
        size = hi - lo + 1
        channels = 1 if src.uniform else width
        if size * channels > MAX_TABLE_ENTRIES:
            raise ValueError(
                f"the table of {fns[0][0]!r} would need {size * channels} entries "
                f"({channels} channels x {size} inputs): use fewer bits, or an activation "
                f"with a parametric table (relu, sigmoid, tanh, gelu, silu, relu6)")
        v = np.arange(lo, hi + 1, dtype=np.float64) - src.zero_point
        x = v[None, :] * (src.scale[:channels, None] if channels > 1 else src.scale[0])
        t = torch.as_tensor(x, dtype=torch.float64)
        with torch.no_grad():
            for f, _ in fns:
                t = f(t)
        qmin, qmax = int_range(params.n_bits, params.signed, params.narrow)
        q = np.clip(np.rint(t.numpy() / params.scale) + params.zero_point, qmin, qmax)
        table = q.astype(np.int64)
        return ExplicitTable(table[0] if channels == 1 else table, offset=lo)

    def _materialise(self, v: QValue | Pending, params: QParams, name: str) -> QValue:
        if isinstance(v, Pending):
            return self._lookup(name, v.src, v.fns, params, v.shape)
        if v.params == params:
            return v
        return self._lookup(name, v, [], params, v.shape)

    # ------------------------------------------------------------- operations
    def _input(self, op: Op) -> None:
        shape = self.shapes[op.name]
        self.n_features = _numel(shape)
        cons = [c for c in self.consumers[op.name] if c.kind != "shape_query"]
        if any(c.kind == "quant" for c in cons):  # brevitas: its QuantIdentity quantizes
            if len(cons) != 1:
                raise UnsupportedOpError("an input read by a quantizer and other layers",
                                         op.name)
            self.env[op.name] = None
            return
        params = self.policy.input_params(op, cons)
        self._quantize_input(op.name, params, shape)

    def _quantize_input(self, name: str, params: QParams, shape: tuple[int, ...]) -> None:
        qname = self._unique(f"{name}_q")
        self._emit(QuantizeInput(qname, ("input",), scale=np.asarray(params.scale),
                                 zero_point=np.asarray(params.zero_point), n_bits=params.n_bits,
                                 signed=params.signed, narrow=params.narrow))
        self.env[name] = QValue(qname, shape, np.full(_numel(shape), params.scale),
                                params.zero_point, params)

    def _weighted(self, op: Op) -> None:
        x = self._qvalue(op, type(op.module).__name__)
        if not x.uniform:  # per-channel scales cannot be folded into integer weights
            x = self._materialise(x, self.policy.requant_params(op.inputs[0]),
                                  f"{op.inputs[0]}_requant")
        w_int, w_scale, bias = self.policy.weights(op)
        in_shape, out_shape = self.shapes[op.inputs[0]], self.shapes[op.name]
        m = op.module
        if op.kind == "conv":
            assert m is not None
            conv = F.conv1d if w_int.ndim == 3 else F.conv2d
            kernel = torch.as_tensor(w_int, dtype=torch.float64)
            mat = _probe(lambda e: conv(e, kernel, None, m.stride, m.padding, m.dilation,
                                        m.groups), in_shape, out_shape, op.name)
            channel = np.repeat(np.arange(w_int.shape[0]), _numel(out_shape[1:]))
        elif len(in_shape) > 1:  # linear on the last axis of a 3-D+ tensor
            kernel = torch.as_tensor(w_int, dtype=torch.float64)
            mat = _probe(lambda e: e @ kernel.T, in_shape, out_shape, op.name)
            channel = np.tile(np.arange(w_int.shape[0]), _numel(out_shape[:-1]))
        else:
            mat = w_int
            channel = np.arange(w_int.shape[0])
        acc_scale = x.scale[0] * w_scale[channel]
        b = None if bias is None else self.policy.bias_int(op, bias, x.scale[0] * w_scale)
        gname = self._unique(op.name)
        self._emit(Gemm(gname, (x.name,), weight=np.rint(mat).astype(np.int64),
                        bias=None if b is None else b[channel],
                        input_zero_point=x.zero_point))
        self.env[op.name] = QValue(gname, out_shape, acc_scale, 0)

    def _sum_like(self, op: Op, mat: np.ndarray, bias: np.ndarray | None) -> None:
        """A fixed linear map whose rows have one magnitude (pooling, mean, diagonal)."""
        x = self._qvalue(op, "pooling")
        eff = np.abs(mat) * x.scale[None, :]
        row_mag = eff.max(axis=1)
        ok = np.all((eff == 0) | np.isclose(eff, row_mag[:, None], rtol=1e-9, atol=0))
        if not ok and not x.uniform:
            x = self._materialise(x, self.policy.requant_params(op.inputs[0]),
                                  f"{op.inputs[0]}_requant")
            eff = np.abs(mat) * x.scale[None, :]
            row_mag = eff.max(axis=1)
            ok = np.all((eff == 0) | np.isclose(eff, row_mag[:, None], rtol=1e-9, atol=0))
        if not ok or np.any(row_mag == 0):
            raise UnsupportedOpError("a weighted pooling (rows of different magnitudes)",
                                     op.name)
        weight = np.sign(mat).astype(np.int64)
        b = None if bias is None else np.rint(bias / row_mag).astype(np.int64)
        gname = self._unique(op.name)
        self._emit(Gemm(gname, (x.name,), weight=weight, bias=b, input_zero_point=x.zero_point))
        self.env[op.name] = QValue(gname, self.shapes[op.name], row_mag, 0)

    def _pool(self, op: Op) -> None:
        assert op.fn is not None
        fn = op.fn
        mat = _probe(lambda e: fn(e), self.shapes[op.inputs[0]], self.shapes[op.name], op.name)
        self._sum_like(op, mat, None)

    def _affine(self, op: Op) -> None:  # batch norm that could not be folded
        bn = op.module
        assert bn is not None
        a = (bn.weight if bn.affine else torch.ones_like(bn.running_var)).double() / torch.sqrt(
            bn.running_var.double() + bn.eps)
        c = (bn.bias.double() if bn.affine else 0.0) - bn.running_mean.double() * a
        shape = self.shapes[op.name]
        spatial = _numel(shape[1:])
        a_flat = np.repeat(a.detach().numpy(), spatial)
        c_flat = np.repeat(np.broadcast_to(np.asarray(c.detach().numpy()), a.shape), spatial)
        self._sum_like(op, np.diag(a_flat), c_flat)

    def _act(self, op: Op) -> None:
        v = self.env[op.inputs[0]]
        assert v is not None
        assert op.fn is not None
        fns: FloatFns = [(op.fn, op.act_name)]
        pend = Pending(v.src, v.fns + fns, v.shape) if isinstance(v, Pending) else Pending(
            v, fns, v.shape)
        params = self.policy.act_params(op)
        self.env[op.name] = pend if params is None else self._materialise(pend, params, op.name)

    def _quant(self, op: Op) -> None:
        """A brevitas quantizer module, maybe with an activation (QuantReLU ...)."""
        params = self.policy.act_params(op)
        assert params is not None
        v = self.env[op.inputs[0]]
        if v is None:  # the model input
            self._quantize_input(op.inputs[0], params, self.shapes[op.name])
            self.env[op.name] = self.env[op.inputs[0]]
            return
        if op.act_name is not None and op.act_name != "identity":
            assert op.fn is not None
            fns: FloatFns = [(op.fn, op.act_name)]
            v = Pending(v.src, v.fns + fns, v.shape) if isinstance(v, Pending) else Pending(
                v, fns, v.shape)
        self.env[op.name] = self._materialise(v, params, op.name)

    def _add(self, op: Op) -> None:
        params = self.policy.shared_params(op.inputs)
        operands = []
        for i in op.inputs:
            v = self.env[i]
            assert v is not None
            operands.append(self._materialise(v, params, f"{i}_requant"))
        aname = self._unique(op.name)
        self._emit(Add(aname, (operands[0].name, operands[1].name)))
        self.env[op.name] = QValue(aname, self.shapes[op.name], operands[0].scale.copy(), 0)

    def build(self, metadata: dict[str, Any]) -> Circuit:
        for op in self.order:
            kind = op.kind
            if kind == "input":
                self._input(op)
            elif kind in ("linear", "conv"):
                self._weighted(op)
            elif kind == "act":
                self._act(op)
            elif kind == "quant":
                self._quant(op)
            elif kind == "pool":
                self._pool(op)
            elif kind == "affine":
                self._affine(op)
            elif kind == "add":
                self._add(op)
            elif kind == "reshape":
                v = self.env[op.inputs[0]]
                if isinstance(v, QValue):
                    v = QValue(v.name, self.shapes[op.name], v.scale, v.zero_point, v.params)
                elif isinstance(v, Pending):
                    v = Pending(v.src, v.fns, self.shapes[op.name])
                self.env[op.name] = v
            elif kind == "shape_query":
                continue
            elif kind == "output":
                return self._finish(op, metadata)
        raise ValueError("the graph has no output")  # pragma: no cover

    def _finish(self, op: Op, metadata: dict[str, Any]) -> Circuit:
        v = self.env[op.inputs[0]]
        if isinstance(v, Pending):
            params = self.policy.requant_params(op.inputs[0])
            v = self._materialise(v, params, f"{op.inputs[0]}_out")
        if v is None or not any(isinstance(n, (Gemm, TableLookup)) for n in self.nodes):
            raise UnsupportedOpError("a model without any layer", op.name)
        scale = v.scale[0] if v.uniform else v.scale
        self.nodes.append(Dequantize(self._unique("output"), (v.name,), scale=scale,
                                     zero_point=np.asarray(v.zero_point)))
        meta = dict(metadata, output_shape=list(v.shape))
        return Circuit(self.nodes, n_features=self.n_features, metadata=meta)


def _probe(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: tuple[int, ...],
           out_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Matrix ``M`` (out, in) of a linear map, from its values on the identity basis."""
    n_in, n_out = _numel(in_shape), _numel(out_shape)
    if n_in * n_out > MAX_DENSE_ENTRIES:
        raise ValueError(
            f"{name!r} would lower to a {n_out} x {n_in} integer matrix (over "
            f"{MAX_DENSE_ENTRIES} entries): inputs this large are not supported yet "
            f"(convolutions are lowered to dense gemms)")
    with torch.no_grad():
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
        out = fn(basis).reshape(n_in, -1)
    if out.shape[1] != n_out:  # pragma: no cover - shapes come from the same graph
        raise ValueError(f"{name!r}: unexpected output size {out.shape[1]} != {n_out}")
    return out.T.numpy().copy()


def lower_graph(ops: list[Op], shapes: dict[str, tuple[int, ...]], policy: QuantPolicy,
                metadata: dict[str, Any] | None = None) -> Circuit:
    """Build the IR circuit of an imported graph under a quantization policy."""
    return _Builder(ops, shapes, policy).build(dict(metadata or {}))

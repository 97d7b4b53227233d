"""Lowering an imported torch graph (:mod:`.fx_import`) to an IR circuit.

Shared by post-training quantization (:mod:`.ptq`) and the brevitas QAT importer
(:mod:`.brevitas_import`); they differ only in where quantization parameters come from,
which a :class:`QuantPolicy` supplies.

How each operation becomes integer IR (values are flattened row-major, so a
``(C, H, W)`` tensor is ``C*H*W`` features and ``Flatten`` costs nothing):

* ``Linear``: integer weights (per output channel scales), then one
  :class:`~latentopt.ir.Gemm`; the bias is an integer in accumulator units.
* ``Conv1d`` / ``Conv2d``: likewise one :class:`~latentopt.ir.Conv` (stride, padding,
  dilation, groups); poolings, constant factors and other fixed linear maps: see
  :mod:`.spatial_lowering`.
* activations: one :class:`~latentopt.ir.TableLookup` that dequantizes, applies the
  activation and requantizes (one PBS per element under FHE).
* average pooling and spatial means: a :class:`~latentopt.ir.SumPool` whose divisors
  fold into the output scale (exact, no lookup); max pooling: a
  :class:`~latentopt.ir.MaxPool`; a batch norm that could not be folded: a depthwise
  1x1 :class:`~latentopt.ir.Conv` of ``+-1`` weights and a per-channel scale.
* residual ``a + b``: both operands are quantized with one shared scale (a lookup on an
  operand only when it is not already), then an :class:`~latentopt.ir.Add`;
  ``torch.cat`` along the channels: a :class:`~latentopt.ir.Concat` (operands on one zero
  point).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ir import (
    Add,
    Circuit,
    Concat,
    Conv,
    Dequantize,
    ExplicitTable,
    Gemm,
    Node,
    QuantActivation,
    QuantizeInput,
    SumPool,
    TableLookup,
    int_range,
)
from ..ir.ranges import Interval, add_bounds, concat_bounds, propagate
from .fx_import import Op, UnsupportedOpError
from .quant_values import FloatFns, Pending, QParams, QuantPolicy, QValue
from .spatial_lowering import SpatialOps, _numel, _probe

__all__ = ["QParams", "QuantPolicy", "QValue", "lower_graph"]

#: Largest explicit table (entries over all channels) for activations without a name.
MAX_TABLE_ENTRIES = 1 << 24


class _Builder(SpatialOps):
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
        if isinstance(node, (Add, Concat)):
            rule = add_bounds if isinstance(node, Add) else concat_bounds
            rng = rule(self.ranges[node.inputs[0]], self.ranges[node.inputs[1]])
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
        # one table row per distinct input scale (a convolution's per-channel scales
        # repeat over positions), and each element's row
        scales, rows = np.unique(np.asarray(src.scale[:width], np.float64),
                                 return_inverse=True)
        channels = 1 if src.uniform else scales.size
        if size * channels > MAX_TABLE_ENTRIES:
            per = (f"{channels} tables, one per distinct scale of its input, "
                   f"x {size} input values" if channels > 1
                   else f"its input spans {size} integer steps")
            raise ValueError(
                f"the table of {fns[0][0]!r} would need {size * channels} entries ({per}): "
                f"lower n_bits, put inputs on a scale of about 1 (a tiny input step makes "
                f"later values span many steps), or use an activation with a parametric "
                f"table (relu, sigmoid, tanh, gelu, silu, relu6)")
        v = np.arange(lo, hi + 1, dtype=np.float64) - src.zero_point
        x = v[None, :] * (scales[:, None] if channels > 1 else src.scale[0])
        t = torch.as_tensor(x, dtype=torch.float64)
        with torch.no_grad():
            for f, _ in fns:
                t = f(t)
        qmin, qmax = int_range(params.n_bits, params.signed, params.narrow)
        q = np.clip(np.rint(t.numpy() / params.scale) + params.zero_point, qmin, qmax)
        table = q.astype(np.int64)
        if channels == 1:
            return ExplicitTable(table[0], offset=lo)
        return ExplicitTable(table, offset=lo, rows=rows.reshape(-1))

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
        if op.kind == "conv":
            self._conv(op, x, w_int, w_scale, bias)
            return
        if len(in_shape) > 1:  # linear on the last axis of a 3-D+ tensor
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
        shapes = [self.shapes[i] for i in op.inputs]
        if shapes[0] != shapes[1]:
            raise UnsupportedOpError(
                f"addition of tensors of shapes {shapes[0]} and {shapes[1]} per sample "
                f"(broadcasting; only tensors of one shape are added)", op.name)
        params = self.policy.shared_params(op.inputs)
        operands = []
        for i in op.inputs:
            v = self.env[i]
            assert v is not None
            operands.append(self._materialise(v, params, f"{i}_requant"))
        aname = self._unique(op.name)
        self._emit(Add(aname, (operands[0].name, operands[1].name)))
        self.env[op.name] = QValue(aname, self.shapes[op.name], operands[0].scale.copy(), 0)

    def _cat(self, op: Op) -> None:
        """Concatenation along the first feature axis: the flat values one after the
        other, on one zero point (scales may differ per feature)."""
        rank = len(self.shapes[op.name]) + 1
        if op.meta["dim"] % rank != 1:
            raise UnsupportedOpError("a concatenation along an axis other than the first "
                                     "feature axis (channels)", op.name)
        values = [self.env[i] for i in op.inputs]
        zps = {v.zero_point for v in values if isinstance(v, QValue)}
        if len(zps) != 1 or not all(isinstance(v, QValue) for v in values):
            params = self.policy.shared_params(op.inputs)
            values = [self._materialise(v, params, f"{i}_requant")  # type: ignore[arg-type]
                      for v, i in zip(values, op.inputs)]
        acc = values[0]
        for k, v in enumerate(values[1:]):
            assert isinstance(acc, QValue) and isinstance(v, QValue)
            name = self._unique(op.name if k == len(values) - 2 else f"{op.name}_part")
            self._emit(Concat(name, (acc.name, v.name)))
            acc = QValue(name, (), np.concatenate([acc.scale, v.scale]), acc.zero_point)
        assert isinstance(acc, QValue)
        self.env[op.name] = QValue(acc.name, self.shapes[op.name], acc.scale, acc.zero_point)

    def _reshape(self, op: Op) -> None:
        """A new shape over the same row-major flat order: nothing to compute."""
        v = self.env[op.inputs[0]]
        if isinstance(v, QValue):
            v = QValue(v.name, self.shapes[op.name], v.scale, v.zero_point, v.params)
        elif isinstance(v, Pending):
            v = Pending(v.src, v.fns, self.shapes[op.name])
        self.env[op.name] = v

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
            elif kind == "maxpool":
                self._maxpool(op)
            elif kind == "scale":
                self._scale(op)
            elif kind == "affine":
                self._affine(op)
            elif kind == "add":
                self._add(op)
            elif kind == "cat":
                self._cat(op)
            elif kind == "reshape":
                self._reshape(op)
            elif kind == "reorder":
                self._reorder(op)
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
        if v is None or not any(isinstance(n, (Gemm, Conv, SumPool, TableLookup))
                                 for n in self.nodes):
            raise UnsupportedOpError("a model without any layer", op.name)
        scale = v.scale[0] if v.uniform else v.scale
        self.nodes.append(Dequantize(self._unique("output"), (v.name,), scale=scale,
                                     zero_point=np.asarray(v.zero_point)))
        meta = dict(metadata, output_shape=list(v.shape))
        return Circuit(self.nodes, n_features=self.n_features, metadata=meta)


def lower_graph(ops: list[Op], shapes: dict[str, tuple[int, ...]], policy: QuantPolicy,
                metadata: dict[str, Any] | None = None) -> Circuit:
    """Build the IR circuit of an imported graph under a quantization policy."""
    return _Builder(ops, shapes, policy).build(dict(metadata or {}))

"""The ONNX renderer: each schedule step as standard ONNX operators.

:func:`circuit_to_onnx` schedules a circuit (:mod:`latentopt.ir.schedule`) and renders
its steps, one function per step type (:data:`RENDERERS`), in the schedule's integer
carrier.  The graph interface, the lowering of each step and the choice of carrier are
described in :mod:`.onnx_export`, the public entry point.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ir import Circuit, ExplicitTable
from ..ir.schedule import (
    CARRIERS,
    AddStep,
    AffineShortcut,
    ConcatStep,
    ConvStep,
    DequantizeStep,
    GemmStep,
    LookupStep,
    MaxPoolStep,
    QuantizeStep,
    RoundStep,
    Step,
    SumPoolStep,
    exact_below,
    schedule,
)
from .onnx_graph import INPUT, META, OUTPUT, OUTPUT_INTEGERS, GraphBuilder, integer_entry
from .onnx_window import render_conv, render_max_pool, render_sum_pool

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "RENDERERS", "circuit_to_onnx"]

#: Default ONNX opset (every operator used is available since opset 13).
DEFAULT_OPSET = 17
MIN_OPSET = 13
#: Newest opset accepted: the newest onnxruntime 1.31 loads (27 and 28 fail in it).
MAX_OPSET = 26
_CARRIERS: dict[str, Any] = {np.dtype(c).name: c for c in CARRIERS}


def _quantize(g: GraphBuilder, step: QuantizeStep, xs: list[str]) -> str:
    """The float32 arithmetic of ``QuantizeInput.apply_float32``, then a cast."""
    node, n = step.node, step.name
    x = g.op("Div", [INPUT, g.const(f"{n}/scale", node.scale, np.float32)], f"{n}/div")
    x = g.op("Round", [x], f"{n}/round")
    if np.any(node.zero_point):
        x = g.op("Add", [x, g.const(f"{n}/zero_point", node.zero_point, np.float32)],
                 f"{n}/add")
    lo, hi = node.qrange
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if int(lo32) < lo:  # same inner bounds as apply_float32 beyond 24 bits
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if int(hi32) > hi:
        hi32 = np.nextafter(hi32, np.float32(-np.inf))
    bounds = [g.const(f"{n}/min", lo32, np.float32), g.const(f"{n}/max", hi32, np.float32)]
    if g.carrier is np.float32:
        return g.op("Clip", [x, *bounds], n)
    return g.cast(g.op("Clip", [x, *bounds], f"{n}/clip"), g.carrier, n)


def _gemm(g: GraphBuilder, step: GemmStep, xs: list[str]) -> str:
    node, n, dt, x = step.node, step.name, g.carrier, xs[0]
    if node.input_zero_point:
        x = g.op("Sub", [x, g.const(f"{n}/zero_point", node.input_zero_point, dt)], f"{n}/sub")
    w = g.const(f"{n}/weight_t", np.ascontiguousarray(node.weight.T), dt)
    if node.bias is None:
        return g.op("MatMul", [x, w], n)
    y = g.op("MatMul", [x, w], f"{n}/matmul")
    return g.op("Add", [y, g.const(f"{n}/bias", node.bias, dt)], n)


def _round(g: GraphBuilder, step: RoundStep, xs: list[str]) -> str:
    n, dt, k, x = step.name, g.carrier, step.lsbs, xs[0]
    if k == 0:
        return x
    y = g.op("Add", [x, g.const(f"{n}/half", 1 << (k - 1), dt)], f"{n}/add")
    if dt is np.int64:
        m = g.op("Mod", [y, g.const(f"{n}/step", 1 << k, dt)], f"{n}/mod", fmod=0)
        return g.op("Sub", [y, m], n)
    y = g.op("Mul", [y, g.const(f"{n}/inv_step", 2.0**-k, dt)], f"{n}/scale")
    y = g.op("Floor", [y], f"{n}/floor")
    return g.op("Mul", [y, g.const(f"{n}/step", 1 << k, dt)], n)


def _exact(values: Any, dt: Any) -> bool:
    return all(int(dt(v)) == int(v) for v in np.ravel(values))


def _lookup(g: GraphBuilder, step: LookupStep, xs: list[str]) -> str:
    fn, n, dt, x = step.node.fn, step.name, g.carrier, xs[0]
    if isinstance(fn, ExplicitTable):  # its own table, clipped at its ends
        size = fn.table.shape[-1]  # each channel reads its row of the flat table
        row = np.zeros(1, np.int64) if fn.table.ndim == 1 else fn.channel_rows
        start = row.astype(np.int64) * size
        table, offset, end, stride = fn.table.reshape(-1), start - fn.offset, start + size - 1, 1
    else:
        step.check_table_size(remedy=_TABLE_REMEDY)
        affine = step.affine(dt) if g.affine else None
        if affine is not None:
            return _affine_lookup(g, n, x, affine)
        dom, stride = step.domain, step.domain.step
        table, start = step.table(), dom.starts
        offset, end = start * stride - dom.lo, start + dom.sizes - 1
    if fn.n_channels is None:
        offset, start, end = offset[0], start[0], end[0]
    # index = clip(x + offset, start * step, end * step) / step.  In the float carrier
    # when exact: in-domain sums are m * step with m <= end, and a sum outside the table
    # (explicit tables) stays outside after rounding, so the clip gives the same index.
    limit = exact_below(dt)
    in_float = limit is not None and int(np.max(end)) < limit and _exact(offset, dt)
    it = dt if in_float else np.int64
    idx = x if it is dt else g.cast(x, np.int64, f"{n}/index")
    if np.any(offset):
        idx = g.op("Add", [idx, g.const(f"{n}/offset", offset, it)], f"{n}/shift")
    lo_b = g.const(f"{n}/start", start * stride, it)
    hi_b = g.const(f"{n}/end", end * stride, it)
    if np.ndim(start) == 0:
        idx = g.op("Clip", [idx, lo_b, hi_b], f"{n}/clip")
    else:
        idx = g.op("Min", [g.op("Max", [idx, lo_b], f"{n}/max"), hi_b], f"{n}/min")
    if stride > 1 and in_float:
        idx = g.op("Mul", [idx, g.const(f"{n}/inv_step", 1.0 / stride, dt)], f"{n}/scale")
    elif stride > 1:
        idx = g.op("Div", [idx, g.const(f"{n}/step", stride, np.int64)], f"{n}/div")
    if in_float:
        idx = g.cast(idx, np.int64, f"{n}/index")
    # GatherElements on a (1, size) table and (1, N * width) indices: same values as a
    # Gather, several times faster in onnxruntime
    shape = g.op("Shape", [idx], f"{n}/shape")
    flat = g.op("Reshape", [idx, g.const(f"{n}/flat_shape", [1, -1], np.int64)], f"{n}/flat")
    table_2d = g.const(f"{n}/table", table[None, :], dt)
    y = g.op("GatherElements", [table_2d, flat], f"{n}/gather", axis=1)
    return g.op("Reshape", [y, shape], n)


#: What to do about a table over :data:`MAX_TABLE_ENTRIES`, in the estimators' terms.
_TABLE_REMEDY = ("the ONNX export writes at most 2**22 entries per lookup: export a model "
                 "compiled with rounding (compile(rounding_bits=...): fewer bits, smaller "
                 "tables), or train it with fewer bits")


def _affine_lookup(g: GraphBuilder, n: str, x: str, affine: AffineShortcut) -> str:
    dt = g.carrier
    y = g.op("Round", [g.op("Mul", [x, g.const(f"{n}/ratio", affine.ratio, dt)], f"{n}/mul")],
             f"{n}/round")
    if affine.zero_point:
        y = g.op("Add", [y, g.const(f"{n}/zero_point", affine.zero_point, dt)], f"{n}/add")
    return g.op("Clip", [y, g.const(f"{n}/min", affine.qmin, dt),
                         g.const(f"{n}/max", affine.qmax, dt)], n)


def _add(g: GraphBuilder, step: AddStep, xs: list[str]) -> str:
    return g.op("Add", xs, step.name)


def _concat(g: GraphBuilder, step: ConcatStep, xs: list[str]) -> str:
    return g.op("Concat", xs, step.name, axis=-1)


def _conv(g: GraphBuilder, step: ConvStep, xs: list[str]) -> str:
    return render_conv(g, step.node, xs[0])


def _sum_pool(g: GraphBuilder, step: SumPoolStep, xs: list[str]) -> str:
    return render_sum_pool(g, step.node, xs[0])


def _max_pool(g: GraphBuilder, step: MaxPoolStep, xs: list[str]) -> str:
    return render_max_pool(g, step.node, xs[0])


def _dequantize(g: GraphBuilder, step: DequantizeStep, xs: list[str]) -> str:
    """``(q - zero_point) * scale + offset`` in float64, as ``Dequantize.apply``."""
    node, n = step.node, step.name
    ints = g.cast(xs[0], np.int64, n, out=OUTPUT_INTEGERS)
    y = g.cast(ints, np.float64, f"{n}/float")
    if np.any(node.zero_point):
        y = g.op("Sub", [y, g.const(f"{n}/zero_point", node.zero_point, np.float64)], f"{n}/sub")
    if not np.any(node.offset):
        return g.op("Mul", [y, g.const(f"{n}/scale", node.scale, np.float64)], n, out=OUTPUT)
    y = g.op("Mul", [y, g.const(f"{n}/scale", node.scale, np.float64)], f"{n}/mul")
    return g.op("Add", [y, g.const(f"{n}/offset", node.offset, np.float64)], n, out=OUTPUT)


#: The ONNX rendering of each step type: ``(builder, step, input tensors) -> output``.
RENDERERS: dict[type[Step[Any]], Callable[[GraphBuilder, Any, list[str]], str]] = {
    QuantizeStep: _quantize,
    GemmStep: _gemm,
    RoundStep: _round,
    LookupStep: _lookup,
    AddStep: _add,
    ConcatStep: _concat,
    ConvStep: _conv,
    SumPoolStep: _sum_pool,
    MaxPoolStep: _max_pool,
    DequantizeStep: _dequantize,
}


def circuit_to_onnx(
    circuit: Circuit,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | str = "dynamic",
    integer_input: bool = False,
    carrier: str | None = None,
    lookup: str = "auto",
) -> onnx.ModelProto:
    """Lower ``circuit`` to an ONNX model (see :mod:`.onnx_export` for the graph).

    Parameters
    ----------
    circuit : Circuit
    opset : int
        ONNX opset of the default domain, 13 to 26 (:data:`MIN_OPSET` to
        :data:`MAX_OPSET`: onnxruntime 1.31 runs 13 to 26); else a ``ValueError``.
    batch : "dynamic" or int
        Batch dimension: symbolic ``"N"`` or a fixed size.
    integer_input : bool
        Read already quantized ``int64`` ``input_integers`` instead of float features.
    carrier : {"float32", "float64", "int64"}, optional
        Type carrying the integers; by default the narrowest exact one (the schedule's
        carrier).  A type narrower than that is refused.
    lookup : {"auto", "gather"}
        ``"gather"`` lowers every table lookup to a gather; ``"auto"`` writes ReLU and
        identity requantizations as ``Clip(Round(x * ratio) + zp)`` in the carrier where
        the schedule proves that equal to the table on the whole input domain (as the
        integer backend does), which runs faster.

    Raises
    ------
    ValueError
        Unsupported opset or carrier, or a lookup whose table would be too large
        (over :data:`~latentopt.ir.schedule.MAX_TABLE_ENTRIES` entries).
    TypeError
        A step type this renderer does not know, or an opset that is not an int.
    """
    import onnx
    from onnx import helper

    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"opset must be an int, got {opset!r}")
    top = min(MAX_OPSET, onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= opset <= top:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {top}] (the opsets onnxruntime "
                         f"runs), got {opset}")
    opset = int(opset)
    if lookup not in ("auto", "gather"):
        raise ValueError(f"lookup must be 'auto' or 'gather', got {lookup!r}")
    if batch != "dynamic" and not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be 'dynamic' or a positive int, got {batch!r}")
    plan = schedule(circuit)
    dtype = plan.carrier
    if carrier is not None:
        order = list(_CARRIERS)
        if carrier not in _CARRIERS:
            raise ValueError(f"carrier must be one of {order}, got {carrier!r}")
        needed = np.dtype(dtype).name
        if order.index(carrier) < order.index(needed):
            raise ValueError(f"carrier {carrier} is not exact for this circuit; needs {needed}")
        dtype = _CARRIERS[carrier]
    g = GraphBuilder(dtype, affine=lookup == "auto")
    values: dict[str, str] = {}
    for step in plan.steps:
        render = RENDERERS.get(type(step))
        if render is None:
            raise TypeError(f"cannot export node {step.name!r} of type "
                            f"{type(step.node).__name__}")
        values[step.name] = render(g, step, [values[i] for i in step.inputs if i in values])
    n = "N" if batch == "dynamic" else batch
    graph = helper.make_graph(
        g.nodes, "latentopt_circuit",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [n, circuit.n_features])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.DOUBLE, [n, circuit.n_outputs]),
         helper.make_tensor_value_info(OUTPUT_INTEGERS, onnx.TensorProto.INT64,
                                       [n, circuit.n_outputs])],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="latentopt",
                              ir_version=helper.find_min_ir_version_for(opsets))
    model.doc_string = repr(circuit)
    lo, hi = plan.quantize.qrange
    helper.set_model_props(model, {
        META + "carrier": np.dtype(dtype).name,
        META + "quantized": values[plan.quantize.name],
        META + "input_range": f"{lo},{hi}",
    })
    return integer_entry(model) if integer_input else model

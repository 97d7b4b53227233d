"""An 8-bit rendering of MLP circuits for onnxruntime: int8 GEMMs with fused requantization.

The standard ONNX rendering (:mod:`.onnx_render`) carries the integers in float32 and
runs float GEMMs, which makes the integer circuit slower than the float network it came
from.  Low-bit MLPs fit 8-bit integers: inputs, weights and activations are a few bits
wide.  This module renders the common MLP schedule ::

    quantize -> (gemm -> affine lookup)* -> gemm -> dequantize

with onnxruntime's integer kernels (MLAS):

* the input quantizer is ``QuantizeLinear`` (``x / scale`` in float32, round half to
  even, saturate) to ``uint8`` with the zero point ``-qmin``, then ``Clip``;
* each hidden layer is one ``com.microsoft.QGemm``: ``uint8 x int8`` products summed in
  int32 with the bias, then requantized as ``rint(float32(acc) * ratio) + zero_point``
  and saturated -- exactly the lookup's proven affine form
  (:meth:`~latentopt.ir.schedule.LookupStep.affine`), with ``ratio`` as the (per
  column) ``b_scale`` so that onnxruntime's ``a_scale * b_scale / y_scale`` is
  ``ratio`` itself -- then ``Clip`` to the lookup's range;
* a lookup without a float32 affine form (an accumulator too wide to prove it) that is
  a ReLU or identity requantization is computed from the ``QGemm``'s float32
  accumulator in float64 exactly as :class:`~latentopt.ir.QuantActivation` does;
* the last layer is a ``QGemm`` with a float32 output (exact: the schedule's float32
  carrier proves every accumulator below 2**24), cast to int64 and dequantized in
  float64 like :meth:`Dequantize.apply <latentopt.ir.Dequantize.apply>`.

:func:`int8_mlp_onnx` returns ``None`` for any circuit outside this pattern, or whose
values do not provably fit (8-bit values, int32 accumulators, float32 carrier, and,
on CPUs without VNNI, products small enough that AVX2's 16-bit pair sums in
``uint8 x int8`` kernels cannot saturate).  The result is not a standard ONNX model
(it uses a contrib operator): it is an execution plan for
:class:`~latentopt.backends.runtime.ExactRuntime`, which checks it against the numpy
reference before using it; :mod:`.onnx_export` stays standard.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Circuit, QuantActivation
from ..ir.schedule import DequantizeStep, GemmStep, LookupStep, QuantizeStep, RoundStep, schedule
from .onnx_graph import INPUT, OUTPUT, OUTPUT_INTEGERS

__all__ = ["int8_mlp_onnx"]

_I16 = 32767


def _vnni() -> bool:
    """Whether the CPU has VNNI (``uint8 x int8`` dot products summed in int32, never
    saturating), which onnxruntime's MLAS uses when present."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: assume AVX2's saturating 16-bit pair sums
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def _affine(step: Any) -> Any:
    """The lookup's fused form: its proven float32 affine shortcut, else ``"float64"``
    for a ReLU / identity requantization evaluated as :class:`QuantActivation` does (in
    float64, after the exact float32 accumulator), else ``None``."""
    if not isinstance(step, LookupStep) or step.lsbs != 0:
        return None
    affine = step.affine(np.float32)
    if affine is not None:
        return affine
    fn = step.node.fn
    if isinstance(fn, QuantActivation) and fn.activation in ("relu", "identity"):
        return "float64"
    return None


def _float64_lookup(nodes: list[Any], const: Any, x: str, fn: QuantActivation, n: str) -> str:
    """``clip(rint(act(v * input_scale) / output_scale) + zp, qmin, qmax) - qmin`` in
    float64, as ``QuantActivation.__call__``, cast to uint8."""
    from onnx import TensorProto, helper

    qlo, qhi = fn.qrange
    nodes.append(helper.make_node("Cast", [x], [f"{n}/f64"], to=TensorProto.DOUBLE))
    nodes.append(helper.make_node("Mul", [f"{n}/f64", const(f"{n}/in", fn.input_scale,
                                                            np.float64)], [f"{n}/mul"]))
    y = f"{n}/mul"
    if fn.activation == "relu":
        nodes.append(helper.make_node("Relu", [y], [f"{n}/relu"]))
        y = f"{n}/relu"
    nodes.append(helper.make_node("Div", [y, const(f"{n}/out", fn.output_scale, np.float64)],
                                  [f"{n}/div"]))
    nodes.append(helper.make_node("Round", [f"{n}/div"], [f"{n}/round"]))
    shift = np.asarray(fn.output_zero_point, np.float64) - qlo
    nodes.append(helper.make_node("Add", [f"{n}/round", const(f"{n}/zp", shift, np.float64)],
                                  [f"{n}/add"]))
    nodes.append(helper.make_node("Clip", [f"{n}/add", const(f"{n}/lo", 0.0, np.float64),
                                           const(f"{n}/hi", qhi - qlo, np.float64)],
                                  [f"{n}/clip"]))
    nodes.append(helper.make_node("Cast", [f"{n}/clip"], [n], to=TensorProto.UINT8))
    return n


def int8_mlp_onnx(circuit: Circuit) -> Any:
    """The int8 onnxruntime model of ``circuit`` (float32 ``input``; ``output`` and
    ``output_integers`` as the standard export), or ``None`` where it does not apply."""
    plan = schedule(circuit)
    if plan.carrier is not np.float32:
        return None
    steps = [s for s in plan.steps if not (isinstance(s, RoundStep) and s.lsbs == 0)]
    if not (isinstance(steps[0], QuantizeStep) and isinstance(steps[-1], DequantizeStep)):
        return None
    body = steps[1:-1]
    if len(body) % 2 != 1 or not all(isinstance(s, GemmStep) for s in body[::2]):
        return None
    affines = [_affine(s) for s in body[1::2]]
    if any(a is None or (a != "float64" and np.ndim(a.zero_point)) for a in affines):
        return None
    for prev, step in zip(steps, steps[1:]):  # a straight chain
        if tuple(step.inputs) != (prev.name,):
            return None

    import onnx
    from onnx import helper
    from onnx import numpy_helper as nh

    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: Any, dtype: Any) -> str:
        inits.append(nh.from_array(np.asarray(value, dtype=dtype), name))
        return name

    qnode = steps[0].node
    lo, hi = qnode.qrange
    zp_in = np.asarray(qnode.zero_point)
    scale = np.asarray(qnode.scale, np.float32)
    if np.ndim(zp_in) or scale.ndim > 1 or hi - lo > 255:
        return None
    shift = int(zp_in) - lo  # stored u = q - lo = rint(x / s) + zp - lo
    if not 0 <= shift <= 255:
        return None
    axis: dict[str, Any] = {"axis": 1} if scale.ndim == 1 else {}
    zp_vec = np.full(scale.shape, shift, np.uint8) if scale.ndim == 1 else shift
    nodes.append(helper.make_node("QuantizeLinear", [INPUT, const("x/scale", scale, np.float32),
                                                     const("x/zp", zp_vec, np.uint8)],
                                  ["x/sat"], **axis))
    nodes.append(helper.make_node("Clip", ["x/sat", const("x/lo", 0, np.uint8),
                                           const("x/hi", hi - lo, np.uint8)], ["x"]))
    x, offset, top = "x", lo, hi - lo  # value = u + offset, u in [0, top]
    vnni = _vnni()
    one = const("one", 1.0, np.float32)
    for i, gemm in enumerate(body[::2]):
        node = gemm.node
        w = np.asarray(node.weight)
        bias = np.zeros(w.shape[0], np.int64) if node.bias is None else np.asarray(node.bias)
        a_zp = int(node.input_zero_point) - offset  # (value - izp) = u - a_zp
        pair = 2 * top * max(int(np.abs(w).max()), 1)  # a 16-bit pair sum, without VNNI
        if (np.ndim(node.input_zero_point) or not 0 <= a_zp <= 255 or w.min() < -128
                or w.max() > 127 or np.abs(bias).max() >= 2**31 or (pair > _I16 and not vnni)):
            return None
        inputs = [x, one, const(f"l{i}/a_zp", a_zp, np.uint8),
                  const(f"l{i}/w", np.ascontiguousarray(w.T), np.int8)]
        last = i == len(affines)
        if last:
            inputs += [one, const(f"l{i}/b_zp", 0, np.int8), const(f"l{i}/bias", bias, np.int32)]
            nodes.append(helper.make_node("QGemm", inputs, [f"l{i}/acc"], domain="com.microsoft"))
            x = f"l{i}/acc"
            break
        aff = affines[i]
        if isinstance(aff, str):  # float64 requantization after an exact float32 acc
            fn = body[2 * i + 1].node.fn
            qlo, qhi = fn.qrange
            if qhi - qlo > 255:
                return None
            inputs += [one, const(f"l{i}/b_zp", 0, np.int8), const(f"l{i}/bias", bias, np.int32)]
            nodes.append(helper.make_node("QGemm", inputs, [f"l{i}/acc"], domain="com.microsoft"))
            x = _float64_lookup(nodes, const, f"l{i}/acc", fn, f"l{i}")
            offset, top = int(qlo), int(qhi - qlo)
            continue
        ratio = np.asarray(aff.ratio, np.float32)
        y_zp = int(aff.zero_point) - int(aff.qmin)
        if ratio.ndim > 1 or not 0 <= y_zp <= 255 or aff.qmax - aff.qmin > 255:
            return None
        b_scale = np.broadcast_to(ratio, (w.shape[0],)) if ratio.ndim else ratio
        inputs += [const(f"l{i}/b_scale", b_scale, np.float32),
                   const(f"l{i}/b_zp", np.zeros(np.shape(b_scale), np.int8), np.int8),
                   const(f"l{i}/bias", bias, np.int32), one, const(f"l{i}/y_zp", y_zp, np.uint8)]
        nodes.append(helper.make_node("QGemm", inputs, [f"l{i}/sat"], domain="com.microsoft"))
        offset, top = int(aff.qmin), int(aff.qmax - aff.qmin)
        nodes.append(helper.make_node("Clip", [f"l{i}/sat", const(f"l{i}/lo", 0, np.uint8),
                                               const(f"l{i}/hi", top, np.uint8)], [f"l{i}"]))
        x = f"l{i}"
    out = steps[-1].node
    nodes.append(helper.make_node("Cast", [x], [OUTPUT_INTEGERS], to=onnx.TensorProto.INT64))
    nodes.append(helper.make_node("Cast", [OUTPUT_INTEGERS], ["out/f64"],
                                  to=onnx.TensorProto.DOUBLE))
    y = "out/f64"
    if np.any(out.zero_point):
        nodes.append(helper.make_node("Sub", [y, const("out/zp", out.zero_point, np.float64)],
                                      ["out/sub"]))
        y = "out/sub"
    mul = OUTPUT if not np.any(out.offset) else "out/mul"
    nodes.append(helper.make_node("Mul", [y, const("out/scale", out.scale, np.float64)], [mul]))
    if np.any(out.offset):
        nodes.append(helper.make_node("Add", [mul, const("out/offset", out.offset, np.float64)],
                                      [OUTPUT]))
    n_out = circuit.n_outputs
    graph = helper.make_graph(
        nodes, "latentopt_int8_mlp",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["N", circuit.n_features])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.DOUBLE, ["N", n_out]),
         helper.make_tensor_value_info(OUTPUT_INTEGERS, onnx.TensorProto.INT64, ["N", n_out])],
        initializer=inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])

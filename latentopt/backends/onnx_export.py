"""Export of IR circuits to standard ONNX graphs that onnxruntime runs exactly.

:func:`circuit_to_onnx` (:mod:`.onnx_render`, the renderer of the schedule's steps)
writes the quantized integer network of a :class:`~latentopt.ir.Circuit` as plain ONNX
operators, :func:`save_onnx` writes it to a file, and :class:`OnnxRunner`
(:mod:`.onnx_runner`) runs such a model in onnxruntime (CPU).  The outputs are
*identical* to the reference :class:`~latentopt.backends.integer.IntegerBackend`,
integers and floats alike.

Graph interface
---------------
``input``
    ``float32`` of shape ``(N, n_features)``: the float features.  float32 is the
    precision the quantizer divides in (``QuantizeInput.apply_float32``), so callers
    cast float64 data with ``X.astype(np.float32)`` (round to nearest, exactly what the
    integer backend does first).  With ``integer_input=True`` the model instead reads
    ``input_integers`` (``int64``, already quantized, inside the quantizer's range).
    The graph does not check its input: NaN features give garbage outputs (the cast of
    NaN to an integer), without error; :class:`OnnxRunner` refuses them.
``output``
    ``float64`` ``(N, n_outputs)``: ``(q - zero_point) * scale + offset`` as
    ``Dequantize.apply``.
``output_integers``
    ``int64`` ``(N, n_outputs)``: the integers before dequantization.

Rendering, step by step (:mod:`.onnx_render`)
----------------------------------------------
* QuantizeStep: ``Div`` (float32, by the float32 scale) -> ``Round`` (half to even,
  like ``np.rint``) -> ``Add`` zero point -> ``Clip`` -> ``Cast`` to the carrier: the
  float32 operations of the integer backend, one for one, hence the same integers.
* GemmStep: ``Sub`` input zero point -> ``MatMul`` -> ``Add`` bias, in the *carrier* type.
* RoundStep: carrier float: ``Add`` half -> ``Mul`` 2**-lsbs -> ``Floor`` -> ``Mul`` 2**lsbs
  (exact: power-of-two scaling); carrier int64: ``y = x + half; y - Mod(y, 2**lsbs)``
  (``Mod`` with ``fmod=0`` takes the divisor's sign, i.e. floor semantics, also for
  negative ``y``).  The approximate method is computed exactly, like the integer backend.
* LookupStep: a gather from a 1-D table.  :class:`~latentopt.ir.ExplicitTable` keeps
  its own table (index ``clip(x - offset, 0, size - 1)``); other functions are
  materialised over the schedule's lookup domain (worst case, per channel for
  per-channel functions, at the rounding step when a :class:`~latentopt.ir.Round` feeds
  the lookup; at most :data:`~latentopt.ir.schedule.MAX_TABLE_ENTRIES` (2**22 =
  4,194,304) entries, else a ``ValueError`` that advises ``compile(rounding_bits=...)``).
  Per-channel functions become one flat table; channel ``c`` owns the slice
  ``[start_c, end_c]``, the index is
  ``clip(x + start_c * step - lo_c, start_c * step, end_c * step) / step``, computed in
  the float carrier when exact there (else in int64), then ``Cast`` to int64.  The
  gather is a ``GatherElements`` on the ``(1, size)`` table with the indices reshaped to
  ``(1, -1)``: the values of a ``Gather``, about 4x faster in onnxruntime 1.31.  With
  ``lookup="auto"`` (default), the lookup's proven affine form
  (:meth:`~latentopt.ir.schedule.LookupStep.affine`) becomes
  ``Clip(Round(x * ratio) + zp)`` instead, as in the integer backend.
* ConvStep, SumPoolStep, MaxPoolStep (:mod:`.onnx_window`): in float32 a native ``Conv``
  (a sum pooling: a depthwise ``Conv`` of ones) and ``MaxPool``; onnxruntime has no
  double or integer ``Conv``, so in float64 and int64 an im2col ``Gather`` of the flat
  input (one appended zero column for the padding) feeds a ``MatMul`` or a chain of
  ``Add``, and a max pooling is a ``Max`` of per-tap gathers in int64 (native
  ``MaxPool`` in float64 unless a pad reaches the kernel size).
* AddStep: ``Add`` in the carrier type; ConcatStep: ``Concat`` on the last axis.
  DequantizeStep: ``Cast`` -> ``Sub`` -> ``Mul``
  (-> ``Add`` offset) in float64.

Why this carrier
----------------
onnxruntime 1.31 registers CPU ``MatMul`` kernels for float, double, int32, int64 (and
unsigned); ``Gemm`` only for floating types; ``MatMulInteger`` only for 8-bit inputs with
int32 output, too narrow for general accumulators.  Like the integer backend (the
schedule's :func:`~latentopt.ir.schedule.carrier_dtype`), integers are carried in
float32 when every worst-case value and every partial sum of every product is below
2**24, in float64 below 2**53 (floating
point sums of integers are then exact whatever the summation order, so MLAS' fast
float kernels are exact), and in int64 otherwise.  ``carrier=`` forces a wider type.
(Session options that trade precision for speed, such as onnxruntime's ARM
``mlas.enable_gemm_fastmath_arm64_bfloat16``, would break this; they are off by default.)

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 0.5, 0, 4), Gemm("g", ("q",), [[2, -1]]),
...              Dequantize("out", ("g",), 0.5, 0)], n_features=2)
>>> runner = OnnxRunner(circuit_to_onnx(c))
>>> runner.predict(np.array([[1.0, 0.5]])).tolist()
[[1.5]]
>>> runner.run_integers(np.array([[2, 1]])).tolist()
[[3]]
"""

from __future__ import annotations

import os
from typing import Any

from ..ir import Circuit
from .onnx_render import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, circuit_to_onnx
from .onnx_runner import OnnxRunner

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "OnnxRunner", "circuit_to_onnx",
           "save_onnx"]


def save_onnx(circuit: Circuit, path: str | os.PathLike[str], **kwargs: Any) -> str:
    """Write :func:`circuit_to_onnx` of ``circuit`` to ``path``; returns the path.

    ``kwargs`` are the options of :func:`circuit_to_onnx` (``opset``, ``batch``,
    ``integer_input``, ``carrier``, ``lookup``).
    """
    import onnx

    path = os.fspath(path)
    onnx.save_model(circuit_to_onnx(circuit, **kwargs), path)
    return path

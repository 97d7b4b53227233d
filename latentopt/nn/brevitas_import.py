"""Import of custom brevitas QAT networks: bit-widths and scales read from brevitas.

Supported pattern (the one brevitas recommends for integer inference):

* the input goes through a ``QuantIdentity`` first (the client-side quantizer);
* ``QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d`` with per-tensor or per-output-channel
  weight scales, zero weight zero points, no input/output quantizer of their own, and a
  bias that is either absent or quantized with ``Int32Bias`` (a float bias is rounded
  to the accumulator scale, which differs from brevitas by at most half an accumulator
  step; narrower bias quantizers, which brevitas clamps, are refused), zero padding;
* round-to-nearest activation quantizers (FLOOR / CEIL ones are refused);
* batch norms are never folded into brevitas layers: each is a per-channel affine map
  whose shift is rounded to its input's grid;
* ``QuantReLU`` / ``QuantSigmoid`` / ``QuantTanh`` / ``QuantHardTanh`` / ``QuantIdentity``
  after each layer (per-tensor scale); plain torch activations in between are fused into
  the next quantizer's table lookup;
* average pooling, flatten / reshape, dropout, and residual ``a + b`` whose operands come
  from quantizers with identical parameters (share one quantizer, as brevitas needs for
  an exact integer addition).

The circuit then computes the integers brevitas computes (up to float32 round-off at
rounding boundaries in brevitas' own float arithmetic).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir import Circuit
from .fx_import import Op, UnsupportedOpError, read_graph
from .fx_values import record_values
from .graph_lowering import QParams, lower_graph

__all__ = ["BrevitasPolicy", "import_brevitas"]

#: brevitas activation implementations (by class name: brevitas has its own classes)
_ACT_IMPLS = {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "identity"}


def _scalar(t: Any, what: str) -> float:
    arr = torch.as_tensor(t).detach().double().reshape(-1).numpy()
    if arr.size != 1 and np.any(arr != arr[0]):
        raise UnsupportedOpError(f"per-channel {what}", "")
    return float(arr[0])


def _float_to_int(proxy: Any) -> str | None:
    """The name of a quantizer's float-to-int step other than rounding to nearest (a
    FLOOR quantizer was imported as rounding: 169 of 192 outputs wrong), else None."""
    for sub in proxy.modules():
        kind = type(sub).__name__
        if kind in ("FloorSte", "CeilSte") or (
                kind.endswith("Ste") and "Round" in kind and kind != "RoundSte"):
            return kind
    return None


def quant_params(module: Any, name: str) -> QParams:
    """The output quantizer of a brevitas activation layer (``module``: a brevitas
    ``QuantIdentity`` / ``QuantReLU`` / ...)."""
    a = module.act_quant
    if not a.is_quant_enabled:
        raise UnsupportedOpError(f"{type(module).__name__} with quantization disabled", name)
    rounding = _float_to_int(a)
    if rounding is not None:  # the circuit rounds half to even, as RoundSte does
        raise UnsupportedOpError(f"{type(module).__name__} rounding with {rounding} (only "
                                 f"round-to-nearest quantizers are imported)", name)
    try:
        scale = _scalar(a.scale(), "activation scales")
        zp = _scalar(a.zero_point(), "activation zero points")
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(f"{type(module).__name__} with per-channel scales", name) from exc
    return QParams(scale, int(round(zp)), int(round(_scalar(a.bit_width(), "bit widths"))),
                   signed=bool(a.is_signed), narrow=bool(a.is_narrow_range))


def _bias_bits(module: Any) -> int | None:
    """Bit width of a layer's bias quantizer (None: a float bias, or none)."""
    proxy = getattr(module, "bias_quant", None)
    if proxy is None or not getattr(proxy, "is_quant_enabled", False):
        return None
    width = getattr(getattr(proxy, "quant_injector", None), "bit_width", None)
    return int(width) if isinstance(width, (int, float)) else None


class BrevitasPolicy:
    """Quantization parameters read from brevitas modules."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = {op.name: op for op in ops}

    def input_params(self, op: Op, consumers: list[Op]) -> QParams:
        raise UnsupportedOpError(
            "a brevitas model whose input is not quantized by a QuantIdentity first "
            "(add `QuantIdentity(bit_width=..., return_quant_tensor=True)` at the start)",
            consumers[0].name if consumers else op.name)

    def weights(self, op: Op) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        m = op.module
        assert m is not None
        for proxy in ("input_quant", "output_quant"):
            q = getattr(m, proxy, None)
            if q is not None and q.is_quant_enabled:
                raise UnsupportedOpError(
                    f"{type(m).__name__} with its own {proxy} (use a separate QuantIdentity)",
                    op.name)
        wq = getattr(m, "weight_quant", None)
        if not hasattr(m, "quant_weight") or not getattr(wq, "is_quant_enabled", False):
            raise UnsupportedOpError(
                f"a {type(m).__name__} without weight quantization inside a brevitas model "
                f"(use a brevitas layer with a weight quantizer, or compile_torch_model for a "
                f"float model)", op.name)
        qw = m.quant_weight()
        if np.any(qw.zero_point.detach().numpy() != 0):
            raise UnsupportedOpError("asymmetric (zero point) weight quantization", op.name)
        w_int = qw.int().detach().long().numpy()
        scale = qw.scale.detach().double().reshape(-1).numpy()
        if scale.size == 1:
            scale = np.full(w_int.shape[0], scale[0])
        elif scale.size != w_int.shape[0]:
            raise UnsupportedOpError("weight scales that are not per output channel", op.name)
        bias = None if m.bias is None else m.bias.detach().double().numpy()
        return w_int, scale, bias

    def bias_int(self, op: Op, bias: np.ndarray, acc_scale: np.ndarray) -> np.ndarray:
        # Int32Bias: round(bias / (input scale * weight scale)), half to even like torch
        bits = _bias_bits(op.module)
        if bits is not None and bits < 32:  # brevitas clamps it; the circuit did not
            raise UnsupportedOpError(f"a {bits}-bit bias quantizer (Int32Bias or a float "
                                     f"bias are imported)", op.name)
        return np.rint(bias / acc_scale).astype(np.int64)

    def act_params(self, op: Op) -> QParams | None:
        if op.kind != "quant":
            return None  # a plain torch activation: fused into the next quantizer
        assert op.module is not None
        return quant_params(op.module, op.name)

    def requant_params(self, op_name: str) -> QParams:
        raise UnsupportedOpError(
            "a value used without a brevitas quantizer where an integer is needed (put a "
            "QuantIdentity / QuantReLU after each layer)", op_name)

    def _producer_params(self, name: str) -> QParams | None:
        op = self.ops[name]
        while op.kind in ("reshape", "maxpool"):  # both keep the quantizer's values
            op = self.ops[op.inputs[0]]
        if op.kind != "quant":
            return None
        assert op.module is not None
        return quant_params(op.module, op.name)

    def shared_params(self, op_names: list[str]) -> QParams:
        params = [self._producer_params(n) for n in op_names]
        if any(p is None for p in params) or len(set(params)) != 1:
            raise UnsupportedOpError(
                "an addition whose operands are not quantized with identical parameters "
                "(feed both branches through quantizers with a shared scale)", op_names[0])
        p = params[0]
        assert p is not None
        if p.zero_point != 0:
            raise UnsupportedOpError("an addition of asymmetric (zero point) values",
                                     op_names[0])
        return p


def import_brevitas(model: nn.Module, X: np.ndarray) -> tuple[Circuit, dict[str, Any]]:
    """The IR circuit of a brevitas QAT model and an import report."""
    gm, ops, folded = read_graph(model, example=X)
    if not any(op.kind == "quant" for op in ops):
        raise ValueError("no brevitas quantizer in the model: use compile_torch_model for "
                         "float models (post-training quantization)")
    for op in ops:
        if op.kind == "quant":
            impl = op.module.act_quant.fused_activation_quant_proxy.activation_impl
            if type(impl).__name__ not in _ACT_IMPLS:
                raise UnsupportedOpError(
                    f"{type(op.module).__name__} with activation {type(impl).__name__}",
                    op.name)
            op.act_name = _ACT_IMPLS[type(impl).__name__]
            op.fn = impl
    values = record_values(gm, X)
    shapes = {k: tuple(v.shape[1:]) for k, v in values.items()}
    circuit = lower_graph(ops, shapes, BrevitasPolicy(ops),
                          metadata={"source": "compile_brevitas_qat_model"})
    bits = {op.name: quant_params(op.module, op.name).n_bits for op in ops if op.kind == "quant"}
    report = {"method": "brevitas", "activation_bits": bits, "folded_batch_norms": folded,
              "ops": [(op.name, op.kind) for op in ops]}
    return circuit, report

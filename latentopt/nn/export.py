"""Export of trained :class:`~latentopt.nn.mlp.QuantMLP` modules (the MLP estimators') to the IR.

One of the torch -> IR bridges, one per kind of source model: this module for the
library's own QAT MLPs; :mod:`latentopt.nn.fx_import` with
:mod:`latentopt.nn.graph_lowering` for any torch model traced with ``torch.fx`` (float
models quantized by :mod:`latentopt.nn.ptq`, and brevitas QAT models read by
:mod:`latentopt.nn.brevitas_import`).

The exported circuit's integer execution reproduces brevitas' quantized forward pass:
inputs and activations are the same integers (up to float32 round-off exactly at a
rounding boundary, which is rare), outputs are the same floats up to round-off.

Node names: ``"x_q"`` (input quantizer), ``"fc{i}"`` (accumulators), ``"act{i}"``
(table lookups), ``"output"`` (dequantizer).
"""

from __future__ import annotations

import numpy as np
import torch

from ..ir import Circuit, Dequantize, Gemm, Node, QuantActivation, QuantizeInput, TableLookup
from .mlp import QuantMLP

__all__ = ["brevitas_trace", "export_mlp"]


def _scalar_int(t: torch.Tensor, what: str) -> int:
    arr = t.detach().cpu().reshape(-1).numpy()
    if arr.size and np.any(arr != arr[0]):
        raise ValueError(f"{what}: per-channel zero points are not supported")
    return int(np.rint(arr[0])) if arr.size else 0


def _scale(t: torch.Tensor) -> np.ndarray:
    arr = t.detach().cpu().double().reshape(-1).numpy()
    return np.array(arr[0]) if arr.size == 1 else arr


def _narrow(quant_identity: torch.nn.Module) -> bool:
    return bool(getattr(quant_identity.act_quant, "is_narrow_range", False))


@torch.no_grad()
def export_mlp(module: QuantMLP) -> Circuit:
    """Convert a trained :class:`~latentopt.nn.mlp.QuantMLP` to a :class:`~latentopt.ir.Circuit`.

    The module is put in eval mode (quantizer statistics are frozen).
    """
    module.eval()
    cfg = module.config
    n = cfg["n_features"]
    h = module.input_quant(torch.zeros(1, n))
    nodes: list[Node] = [
        QuantizeInput(
            "x_q", ("input",), scale=_scale(h.scale),
            zero_point=np.asarray(_scalar_int(h.zero_point, "input")),
            n_bits=int(h.bit_width.item()), signed=bool(h.signed),
            narrow=_narrow(module.input_quant),
        )
    ]
    prev = "x_q"
    for i, linear in enumerate(module.linears):
        qw = linear.quant_weight()
        if _scalar_int(qw.zero_point, f"weights of layer {i}") != 0:
            raise ValueError(f"layer {i}: asymmetric weight quantization is not supported")
        qb = linear.bias_quant(linear.bias, h, qw)
        w_int = qw.int().detach().cpu().long().numpy()
        try:
            b_int = qb.int().detach().cpu().long().reshape(-1).numpy()
        except RuntimeError as exc:  # brevitas' "QuantTensor not valid."
            bias_scale = _scale(h.scale).max() * _scale(qw.scale).max()
            raise ValueError(
                f"layer {i}: the bias cannot be represented on its integer grid (scale "
                f"{bias_scale:.3g}, the input scale times the weights' scale: below "
                f"float32's resolution of the bias).  The inputs are too small "
                f"(input scale {_scale(h.scale).max():.3g}): standardise X.") from exc
        nodes.append(Gemm(f"fc{i}", (prev,), weight=w_int, bias=b_int,
                          input_zero_point=_scalar_int(h.zero_point, f"input of layer {i}")))
        acc_scale = _scale(h.scale) * _scale(qw.scale)
        if i < len(module.activations):
            layer = module.activations[i]
            out = layer.quant(torch.zeros(1, linear.out_features))
            fn = QuantActivation(
                layer.activation, input_scale=acc_scale, output_scale=_scale(out.scale),
                output_zero_point=_scalar_int(out.zero_point, f"activation {i}"),
                n_bits=int(out.bit_width.item()), signed=bool(out.signed),
                narrow=_narrow(layer.quant),
            )
            nodes.append(TableLookup(f"act{i}", (f"fc{i}",), fn=fn))
            prev, h = f"act{i}", out
        else:
            nodes.append(Dequantize("output", (f"fc{i}",), scale=acc_scale,
                                    zero_point=np.asarray(0)))
    return Circuit(nodes, n_features=n, metadata={"source": "latentopt.nn.QuantMLP",
                                                  "config": cfg})


@torch.no_grad()
def brevitas_trace(module: QuantMLP, X: np.ndarray) -> dict[str, np.ndarray]:
    """Integers brevitas computes on ``X``, keyed like the exported circuit's nodes.

    ``"x_q"`` and ``"act{i}"`` hold integer arrays; ``"output"`` holds brevitas' float
    output.  Used to check that the export is faithful.
    """
    module.eval()
    h = module.input_quant(torch.as_tensor(np.asarray(X), dtype=torch.float32))
    out: dict[str, np.ndarray] = {"x_q": h.int().long().numpy()}
    for i, linear in enumerate(module.linears):
        y = linear(h)
        if i < len(module.activations):
            h = module.activations[i](y)
            out[f"act{i}"] = h.int().long().numpy()
        else:
            out["output"] = y.detach().double().numpy()
    return out

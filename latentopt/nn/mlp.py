"""Quantization-aware MLP built from brevitas layers.

``QuantIdentity`` quantizes the input; each layer is a ``QuantLinear`` with an
``Int32Bias`` (so the bias lives in the integer accumulator) followed, for hidden
layers, by a float activation and an output quantizer.  Scales are learned floats, or
powers of two (``power_of_two_scales=True``) so that requantization is a bit shift.
The linear layers accept an optional fixed weight mask (:class:`MaskedQuantLinear`,
used by ``latentopt.prune``).

Examples
--------
>>> import torch
>>> m = QuantMLP(4, (8,), 3, n_w_bits=3, n_a_bits=3)
>>> m(torch.zeros(2, 4)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import brevitas.nn as qnn
import numpy as np
import torch
from brevitas.quant import (
    Int8ActPerTensorFixedPoint,
    Int8ActPerTensorFloat,
    Int8WeightPerTensorFixedPoint,
    Int8WeightPerTensorFloat,
    Int32Bias,
    Uint8ActPerTensorFixedPoint,
    Uint8ActPerTensorFloat,
)
from torch import nn

__all__ = ["TORCH_ACTIVATIONS", "UNSIGNED_ACTIVATIONS", "MaskedQuantLinear",
           "QuantActivationLayer", "QuantMLP", "per_layer"]

#: Torch implementations of the activations known to the IR (same names).
TORCH_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, as in the IR
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "hardtanh": nn.Hardtanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
#: Activations whose output is never negative: quantized unsigned.
UNSIGNED_ACTIVATIONS = frozenset({"relu", "relu6", "sigmoid", "softplus"})


def signed_inputs(X: Any) -> bool:
    """Whether training inputs ``X`` need a signed input quantizer (some value is
    negative); inputs never negative (pixels, counts) are quantized unsigned.

    >>> signed_inputs([[0.0, 1.0]]), signed_inputs([[-0.5, 1.0]])
    (False, True)
    """
    return bool(np.min(X) < 0)


def per_layer(value: int | Sequence[int], n: int, name: str) -> list[int]:
    """Broadcast a scalar bit-width to ``n`` layers, or check a per-layer list.

    >>> per_layer(3, 2, "n_w_bits"), per_layer([2, 4], 2, "n_w_bits")
    ([3, 3], [2, 4])
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a sequence of ints")
    if isinstance(value, (int, np.integer)):
        values = [int(value)] * n
    else:
        if isinstance(value, np.ndarray) and value.ndim == 1:  # as hidden_layer_sizes
            value = value.tolist()
        if not isinstance(value, Sequence) or isinstance(value, str) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name} must be an int or a sequence of ints, got {value!r}")
        values = [int(v) for v in value]
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries, expected {n} (one per layer)")
    if name == "n_w_bits" and 1 in values:
        # a signed narrow-range 1-bit quantizer has the single level 0: training diverged
        # at every learning rate (1e-2 to 1e-6), and "lower lr" was the advice
        raise ValueError(f"n_w_bits values must be in [2, 16], got {values} (binary weights "
                         f"are not supported: a signed 1-bit weight quantizer has the single "
                         f"level 0, so the network cannot train)")
    lo = 2 if name == "n_w_bits" else 1
    if any(v < lo or v > 16 for v in values):
        raise ValueError(f"{name} values must be in [{lo}, 16], got {values}")
    return values


class QuantActivationLayer(nn.Module):
    """Float activation followed by an output quantizer (the fused TLU of the IR)."""

    def __init__(self, activation: str, n_bits: int, power_of_two: bool = False) -> None:
        super().__init__()
        if activation not in TORCH_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; known: {sorted(TORCH_ACTIVATIONS)}"
            )
        self.activation = activation
        self.act = TORCH_ACTIVATIONS[activation]()
        unsigned = activation in UNSIGNED_ACTIVATIONS
        if power_of_two:
            quant = Uint8ActPerTensorFixedPoint if unsigned else Int8ActPerTensorFixedPoint
        else:
            quant = Uint8ActPerTensorFloat if unsigned else Int8ActPerTensorFloat
        self.quant = qnn.QuantIdentity(act_quant=quant, bit_width=n_bits, return_quant_tensor=True)

    def forward(self, x: torch.Tensor) -> Any:
        """The quantized activation (a brevitas ``QuantTensor``)."""
        value = x.value if hasattr(x, "value") else x
        return self.quant(self.act(value))


class MaskedQuantLinear(qnn.QuantLinear):
    """``QuantLinear`` with an optional fixed 0/1 weight mask (unstructured pruning).

    Without a mask it is exactly a brevitas ``QuantLinear`` (same state dict).  With one
    (``set_weight_mask``), the mask is a registered buffer ``weight_mask`` of the weight's
    shape, applied to the float weight *before* quantization: masked weights are exact
    integer zeros, receive no gradient, and the weight scale is computed from the
    surviving weights.  ``load_state_dict`` recreates the buffer when the state holds one,
    so ``QuantMLP(**config)`` + ``load_state_dict`` restores masks.

    >>> import torch
    >>> lin = MaskedQuantLinear(3, 2, bias=True)
    >>> _ = torch.nn.init.constant_(lin.weight, 0.5)
    >>> lin.set_weight_mask(torch.tensor([[1, 0, 1], [0, 1, 0]]))
    >>> (lin.quant_weight().int() != 0).sum(1).tolist()
    [2, 1]
    """

    weight_mask: torch.Tensor | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_mask", None)

    @torch.no_grad()
    def set_weight_mask(self, mask: torch.Tensor | None) -> None:
        """Install (or, with ``None``, remove) a mask and zero the masked float weights."""
        if mask is None:
            self.weight_mask = None
            return
        mask = torch.as_tensor(mask).to(dtype=self.weight.dtype, device=self.weight.device)
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape "
                             f"{tuple(self.weight.shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("weight mask must hold only 0 and 1")
        self.weight_mask = mask.clone()
        self.weight.mul_(self.weight_mask)

    def quant_weight(self, quant_input: Any = None, subtensor_slice_list: Any = None) -> Any:
        """The quantized weight (a brevitas ``QuantTensor``), masked first if masked."""
        mask = self.weight_mask
        if mask is None:
            return super().quant_weight(quant_input, subtensor_slice_list)
        if subtensor_slice_list is not None:
            raise NotImplementedError("sub-tensor weight quantization of a masked layer")
        weight = self.weight * mask
        if self.weight_quant.requires_quant_input:
            return self.weight_quant(weight, quant_input)
        return self.weight_quant(weight)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any,
                              **kwargs: Any) -> None:
        key = prefix + "weight_mask"
        if key in state_dict and self.weight_mask is None:
            self.weight_mask = torch.ones_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class QuantMLP(nn.Module):
    """Fully-connected quantized network.

    ``linears`` and ``activations`` are ``nn.ModuleList`` s (typed as sequences of their
    layer classes).

    Parameters
    ----------
    n_features, hidden_sizes, n_outputs
        Layer widths.
    n_w_bits : int or sequence of int
        Weight bits, one per linear layer (``len(hidden_sizes) + 1``).
    n_a_bits : int or sequence of int
        Activation bits, one per hidden layer.
    n_input_bits : int, optional
        Input quantizer bits (defaults to the first activation's bits).
    input_signed : bool
        Quantize the input signed (``False``: unsigned, all ``2**n_input_bits`` levels on
        ``[0, max]``, for inputs that are never negative, such as pixels or counts; a
        signed quantizer would use only half of its levels there).
    activation : str
        Hidden activation, a key of :data:`TORCH_ACTIVATIONS`.
    power_of_two_scales : bool
        Restrict every scale to a power of two.
    """

    linears: Sequence[MaskedQuantLinear]
    activations: Sequence[QuantActivationLayer]

    def __init__(
        self,
        n_features: int,
        hidden_sizes: Sequence[int],
        n_outputs: int,
        n_w_bits: int | Sequence[int] = 3,
        n_a_bits: int | Sequence[int] = 3,
        n_input_bits: int | None = None,
        activation: str = "relu",
        power_of_two_scales: bool = False,
        input_signed: bool = True,
    ) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden_sizes]
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {hidden}")
        w_bits = per_layer(n_w_bits, len(hidden) + 1, "n_w_bits")
        a_bits = per_layer(n_a_bits, len(hidden), "n_a_bits") if hidden else []
        in_bits = per_layer(
            n_input_bits if n_input_bits is not None else (a_bits[0] if a_bits else 8), 1,
            "n_input_bits",
        )[0]
        self.config: dict[str, Any] = {
            "n_features": int(n_features), "hidden_sizes": hidden, "n_outputs": int(n_outputs),
            "n_w_bits": w_bits, "n_a_bits": a_bits, "n_input_bits": in_bits,
            "activation": activation, "power_of_two_scales": bool(power_of_two_scales),
            "input_signed": bool(input_signed),
        }
        if input_signed:
            in_quant = (Int8ActPerTensorFixedPoint if power_of_two_scales
                        else Int8ActPerTensorFloat)
        else:
            in_quant = (Uint8ActPerTensorFixedPoint if power_of_two_scales
                        else Uint8ActPerTensorFloat)
        w_quant = Int8WeightPerTensorFixedPoint if power_of_two_scales else Int8WeightPerTensorFloat
        self.input_quant = qnn.QuantIdentity(
            act_quant=in_quant, bit_width=in_bits, return_quant_tensor=True
        )
        sizes = [int(n_features), *hidden, int(n_outputs)]
        self.linears = cast("Sequence[MaskedQuantLinear]", nn.ModuleList(
            MaskedQuantLinear(
                sizes[i], sizes[i + 1], bias=True, weight_quant=w_quant,
                weight_bit_width=w_bits[i], bias_quant=Int32Bias, return_quant_tensor=False,
            )
            for i in range(len(sizes) - 1)
        ))
        self.activations = cast("Sequence[QuantActivationLayer]", nn.ModuleList(
            QuantActivationLayer(activation, a_bits[i], power_of_two_scales)
            for i in range(len(hidden))
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_quant(x)
        for i, linear in enumerate(self.linears):
            h = linear(h)
            if i < len(self.activations):
                h = self.activations[i](h)
        return h

    def float_copy(self) -> nn.Sequential:
        """A plain float ``nn.Sequential`` with the same (dequantized) weights.

        Useful as the float baseline of a benchmark: same shapes, no quantizers.
        """
        layers: list[nn.Module] = []
        for i, linear in enumerate(self.linears):
            lin = nn.Linear(linear.in_features, linear.out_features)
            with torch.no_grad():
                lin.weight.copy_(linear.quant_weight().value)
                lin.bias.copy_(linear.bias)
            layers.append(lin)
            if i < len(self.activations):
                layers.append(TORCH_ACTIVATIONS[self.config["activation"]]())
        return nn.Sequential(*layers)

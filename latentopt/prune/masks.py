"""Fixed weight masks of a :class:`~latentopt.nn.mlp.QuantMLP` (unstructured pruning).

A mask lives in each layer as the registered buffer ``weight_mask`` of
:class:`~latentopt.nn.mlp.MaskedQuantLinear`: it is applied before weight quantization,
so masked weights are exact integer zeros in the exported circuit, get no gradient
during fine-tuning, and survive ``QuantMLP(**module.config)`` + ``load_state_dict``.

Examples
--------
>>> from latentopt.nn.mlp import QuantMLP
>>> m = QuantMLP(4, (3,), 2)
>>> has_masks(m)
False
>>> masks = ensure_masks(m)
>>> [tuple(t.shape) for t in masks], has_masks(m)
([(3, 4), (2, 3)], True)
>>> clear_masks(m); has_masks(m)
False
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..nn.mlp import MaskedQuantLinear

__all__ = ["clear_masks", "ensure_masks", "get_masks", "has_masks", "set_masks", "slice_mask"]


def _masked_layers(module: Any) -> list[MaskedQuantLinear]:
    layers = list(module.linears)
    for i, layer in enumerate(layers):
        if not isinstance(layer, MaskedQuantLinear):
            raise TypeError(
                f"layer {i} is a {type(layer).__name__}, not a MaskedQuantLinear: "
                "weight masks are not supported on it"
            )
    return layers


def get_masks(module: Any) -> list[torch.Tensor | None]:
    """The mask of every linear layer (``None`` where a layer has none)."""
    return [getattr(layer, "weight_mask", None) for layer in module.linears]


def has_masks(module: Any) -> bool:
    """Whether any linear layer carries a weight mask."""
    return any(m is not None for m in get_masks(module))


def ensure_masks(module: Any) -> list[torch.Tensor]:
    """Give every layer a mask (all ones where it has none); return the masks."""
    out = []
    for layer in _masked_layers(module):
        if layer.weight_mask is None:
            layer.set_weight_mask(torch.ones_like(layer.weight))
        assert layer.weight_mask is not None
        out.append(layer.weight_mask)
    return out


def set_masks(module: Any, masks: Sequence[torch.Tensor | None]) -> None:
    """Install one mask per linear layer (``None`` removes a layer's mask)."""
    layers = _masked_layers(module)
    if len(masks) != len(layers):
        raise ValueError(f"expected {len(layers)} masks, got {len(masks)}")
    for layer, mask in zip(layers, masks):
        layer.set_weight_mask(mask)


def clear_masks(module: Any) -> None:
    """Remove every mask (masked weights stay zero until trained again)."""
    for layer in module.linears:
        if getattr(layer, "weight_mask", None) is not None:
            layer.weight_mask = None


@torch.no_grad()
def slice_mask(layer: torch.nn.Module, keep: Sequence[int], dim: int) -> None:
    """Keep only the ``keep`` rows (``dim=0``) or columns (``dim=1``) of a layer's mask.

    Used after structured pruning removed output or input channels of ``layer``.
    """
    mask = getattr(layer, "weight_mask", None)
    if mask is None:
        return
    index = torch.as_tensor(list(keep), dtype=torch.long, device=mask.device)
    layer.weight_mask = mask.index_select(dim, index).clone()

"""Checks that a traced graph computes what the torch model computes.

``torch.fx`` records operations, not Python's aliasing: an in-place operation on a
tensor that another operation also reads, or ``h += a`` while another name still refers
to ``h``, is traced as if it made a new tensor, and the imported circuit would compute
something else than the model, silently.  :func:`check_in_place` refuses the first from
the graph; :func:`check_trace` runs the graph against the model on example inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from .unsupported import UnsupportedOpError

__all__ = ["check_in_place", "check_trace"]


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(str(node.target)), "inplace", False))
    if node.op in ("call_function", "call_method"):
        return node.kwargs.get("inplace") is True
    return False


def check_in_place(gm: fx.GraphModule) -> None:
    """An in-place operation overwrites its input: where another operation reads that
    input too, it reads the overwritten values in torch, the graph's own value here."""
    for node in gm.graph.nodes:
        if not _in_place(gm, node) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        others = sorted(u.name for u in src.users if u is not node)
        if others:
            raise UnsupportedOpError(
                f"an in-place operation (inplace=True) on {src.name!r}, which {others} "
                f"also read (torch overwrites it for them; use inplace=False)", node.name)


def check_trace(model: nn.Module, gm: fx.GraphModule, example: torch.Tensor) -> None:
    """The traced graph must compute what the model does: torch.fx records ``h += a`` as
    ``h + a`` (other references to ``h`` keep the old values) and drops Python-side
    state, so a model relying on either would be imported silently wrong."""
    def value(out: Any) -> torch.Tensor | None:
        out = getattr(out, "value", out)  # a brevitas QuantTensor
        return out if isinstance(out, torch.Tensor) else None

    try:
        with torch.no_grad():
            ref, got = value(model(example.clone())), value(gm(example.clone()))
    except Exception:  # noqa: BLE001 - the callers' own runs report bad inputs clearly
        return
    if ref is None or got is None or ref.shape != got.shape:
        return
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    if not torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True):
        err = float((got - ref).abs().max())
        raise UnsupportedOpError(
            f"an operation torch.fx does not record as the model computes it: the traced "
            f"graph's outputs differ from the model's by up to {err:.3g} (scale "
            f"{scale:.3g}) on the example inputs. In-place updates of a tensor that "
            f"another variable still refers to (h += a, x.relu_()) and state kept outside "
            f"tensors are the usual causes; write them out of place", "forward")

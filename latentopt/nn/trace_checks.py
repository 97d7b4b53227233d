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
import torch.nn.functional as F
from torch import fx, nn

from .unsupported import UnsupportedOpError

__all__ = ["check_in_place", "check_trace"]


#: Operations whose output shares its input's memory (an in-place write through one is a
#: write to all of them), by method name, function and module type.
_VIEW_METHODS = {"view", "reshape", "flatten", "unflatten", "permute", "transpose",
                 "swapaxes", "t", "contiguous", "view_as", "squeeze", "unsqueeze"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose,
                   torch.swapaxes, torch.t, torch.unflatten, torch.squeeze, torch.unsqueeze}
_VIEW_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d,
                 nn.Dropout2d, nn.AlphaDropout)
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout}


def _in_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """An operation that writes into its input (not a dropout: in eval mode it writes
    nothing)."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return bool(getattr(m, "inplace", False)) and not isinstance(m, _VIEW_MODULES)
    if node.op in ("call_function", "call_method"):
        return node.kwargs.get("inplace") is True and node.target not in _DROPOUT_FUNCTIONS
    return False


def _is_view(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_method":
        return str(node.target) in _VIEW_METHODS
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS or node.target in _DROPOUT_FUNCTIONS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), _VIEW_MODULES)
    return False


def _base(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """The tensor whose memory ``node`` shares (itself, or what it is a view of)."""
    while _is_view(gm, node) and node.args and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def check_in_place(gm: fx.GraphModule) -> None:
    """An in-place operation overwrites its input, and every view of the same memory:
    where another operation reads them after it, it reads the overwritten values in
    torch, the graph's own value here.  (Readers before it are unaffected.)"""
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    base = {n: _base(gm, n) for n in nodes}
    for node in nodes:
        if not _in_place(gm, node) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        group = {n for n in nodes if base[n] is base[src]}  # the memory it writes into
        later = sorted({u.name for n in group for u in n.users
                        if u is not node and u not in group and order[u] > order[node]})
        if later:
            raise UnsupportedOpError(
                f"an in-place operation (inplace=True) on {src.name!r}, whose values "
                f"{later} read afterwards (torch overwrites them for those; use "
                f"inplace=False)", node.name)


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

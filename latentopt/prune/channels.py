"""Structured channel pruning of a float torch model (any supported architecture).

Every output channel of a convolution is one table lookup per output position (one
PBS each under FHE) and one input channel of the next layer; every hidden unit of a
linear layer one lookup.  :func:`prune_channels` removes a fraction of them with
torch-pruning, on the float model, before it is converted to QAT and fine-tuned
(:mod:`latentopt.sklearn.torch_qat`):

* **which groups are coupled**: torch-pruning's ``DependencyGraph``, traced through the
  model (convolution -> batch norm -> flatten -> linear couplings included);
* **how important**: :func:`latentopt.prune.importance.make_importance` (``"l1"``,
  ``"l2"``, ``"random"``);
* **how much**: one ratio for every prunable layer, or one per layer (module name ->
  ratio); the layers that produce the model's output are never pruned, and the input
  channels of the first layer are the model's input (never pruned either).

Examples
--------
>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
>>> report = prune_channels(m, torch.zeros(1, 1, 6, 6), 0.5)
>>> m[0].out_channels, m[3].in_features, m[3].out_features
(4, 64, 3)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .importance import make_importance

__all__ = ["CHANNEL_IMPORTANCES", "PRUNABLE", "output_layers", "prunable_layers",
           "prune_channels"]

#: Layer types whose output channels / units are pruned.
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Channel rankings :func:`prune_channels` takes by name.
CHANNEL_IMPORTANCES = ("l1", "l2", "random")


def output_layers(model: nn.Module) -> list[str]:
    """Names of the linear / convolution layers whose outputs reach the model's output
    without another such layer in between (their output width is the model's)."""
    from ..nn.fx_import import read_graph

    _, ops, _ = read_graph(model)
    by_name = {op.name: op for op in ops}
    out, seen = [], set()
    stack = [i for op in ops if op.kind == "output" for i in op.inputs]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        op = by_name[name]
        if op.kind in ("linear", "conv"):
            out.append(op.target)
        else:
            stack.extend(op.inputs)
    return out


def prunable_layers(model: nn.Module) -> list[str]:
    """Module names of the layers :func:`prune_channels` may prune: every ``Linear`` /
    ``Conv1d`` / ``Conv2d`` but the :func:`output_layers`, in module order.

    >>> m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))
    >>> prunable_layers(m)
    ['0']
    """
    ignored = set(output_layers(model))
    return [n for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n not in ignored]


def _check_coupled(pruner: Any, named: dict[str, nn.Module], ratios: dict[str, float],
                   ignored: list[str], todo: dict[nn.Module, float], coupled: str) -> None:
    """Refuse different ratios for layers whose output channels are pruned together (or,
    ``coupled="largest"``, prune them at the largest with a warning), and warn when a
    named ratio prunes unnamed layers with it (``todo`` gets the group's ratio)."""
    name_of = {m: n for n, m in named.items()}
    dg = pruner.DG
    for group in dg.get_all_groups(ignored_layers=[named[n] for n in ignored],
                                   root_module_types=list(PRUNABLE)):
        outs = sorted({name_of[dep.target.module] for dep, _ in group
                       if dep.target.module in name_of
                       and dg.is_out_channel_pruning_fn(dep.handler)})
        asked = {n: ratios[n] for n in outs if n in ratios}
        if len(outs) < 2 or not any(r > 0 for r in asked.values()):
            continue
        r = max(asked.values())
        if len(set(asked.values())) > 1:
            why = (f"layers {outs} share their output channels (a residual addition or a "
                   f"depthwise convolution couples them) and are pruned together")
            if coupled == "error":
                raise ValueError(f"{why}: give them one ratio, not {asked}")
            warnings.warn(f"{why}, at the largest ratio asked, {r:g} ({asked})", stacklevel=3)
        unnamed = [n for n in outs if n not in asked]
        if unnamed:
            warnings.warn(f"layers {unnamed} share their output channels with {sorted(asked)} "
                          f"and are pruned with them at ratio {r:g}", stacklevel=3)
        todo.update({named[n]: r for n in outs})


def prune_channels(model: nn.Module, example: torch.Tensor, ratio: float | Mapping[str, float],
                   importance: str = "l1", seed: int | None = 0,
                   coupled: str = "error") -> dict[str, Any]:
    """Remove ``ratio`` of the output channels of every prunable layer, in place.

    Parameters
    ----------
    model : torch.nn.Module
        A float model; its prunable layers are ``Linear``, ``Conv1d`` and ``Conv2d``.
    example : torch.Tensor
        One input batch (traced by torch-pruning).
    ratio : float in [0, 1) or dict
        Share of output channels removed from every layer but the output layers (layers
        too narrow to lose a channel at that ratio are left as they are), or a dict from
        layer (module) name to ratio.  Unnamed layers are not pruned, except where they
        share their output channels with a named one (a residual addition, a depthwise
        convolution): such coupled layers are pruned together, with a warning, and must
        not be given different ratios.
    importance : {"l1", "l2", "random"}
        Channel ranking (see :func:`~latentopt.prune.importance.make_importance`).
    coupled : {"error", "largest"}
        Coupled layers given different ratios: a ``ValueError``, or all pruned at the
        largest of them with a warning (what a search sampling one ratio per layer needs).

    Returns
    -------
    dict
        ``"before"`` and ``"after"``: output channels per layer; ``"ignored"``: the
        output layers.
    """
    import torch_pruning as tp

    if coupled not in ("error", "largest"):
        raise ValueError(f"coupled must be 'error' or 'largest', got {coupled!r}")
    named: dict[str, nn.Module] = {n: m for n, m in model.named_modules()
                                   if isinstance(m, PRUNABLE)}
    ignored_names = output_layers(model)
    ratios: dict[str, float]
    if isinstance(ratio, Mapping):
        unknown = set(ratio) - set(named)
        if unknown:
            raise ValueError(f"pruning ratios name unknown layers {sorted(unknown)}; "
                             f"prunable: {sorted(named)}")
        ratios = {k: float(v) for k, v in ratio.items()}
    else:
        ratios = {n: float(ratio) for n in named}
    for name, r in ratios.items():
        if not 0.0 <= r < 1.0:
            raise ValueError(f"pruning ratio of {name!r} must be in [0, 1), got {r}")
    width = {n: int(getattr(m, "out_features", 0) or getattr(m, "out_channels", 0))
             for n, m in named.items()}
    before = dict(width)
    kept = []
    for n, r in list(ratios.items()):
        if n not in ignored_names and int(width[n] * (1.0 - r)) < 1:
            if not isinstance(ratio, Mapping):  # one ratio for all: too narrow, kept
                ratios[n] = 0.0
                if width[n] > 1:  # (one channel: no ratio can prune it, nothing to say)
                    kept.append(f"{n} ({width[n]})")
                continue
            raise ValueError(f"ratio {r} would remove every channel of {n!r} ({width[n]})")
    if kept:
        warnings.warn(
            f"pruning ratio {ratio!r} would remove every channel of {', '.join(kept)}: "
            "left unpruned (a dict of ratios per layer prunes them less)",
            UserWarning, stacklevel=2)
    todo: dict[nn.Module, float] = {named[n]: r for n, r in ratios.items()
                                    if r > 0 and n not in ignored_names}
    if todo:
        gen = torch.random.fork_rng(devices=[])
        with gen, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            if seed is not None:
                torch.manual_seed(int(seed))
            was_training = model.training
            model.eval()
            pruner = tp.pruner.MetaPruner(
                model, example, importance=make_importance(importance), pruning_ratio=0.0,
                pruning_ratio_dict=todo, ignored_layers=[named[n] for n in ignored_names],
                root_module_types=list(PRUNABLE))
            _check_coupled(pruner, named, ratios, ignored_names, todo, coupled)
            pruner.step()
            try:  # torch-pruning follows the graph, not sizes written in forward
                with torch.no_grad():
                    model(example)
            except RuntimeError as exc:  # torch's "mat1 and mat2 shapes cannot be ..."
                raise ValueError(
                    f"after channel pruning the model no longer runs ({exc}): a pruned "
                    f"width meets one that cannot change, e.g. a residual addition onto "
                    f"the model's input, or a size written in forward such as "
                    f"x.view(-1, 64) (write x.view(x.size(0), -1) or torch.flatten(x, 1)); "
                    f"name the layers to prune in a pruning_ratio dict, or prune without "
                    f"it (pruning_ratio=0)") from exc
            finally:
                model.train(was_training)
    after = {n: int(getattr(m, "out_features", 0) or getattr(m, "out_channels", 0))
             for n, m in named.items()}
    off = [f"{n} {before[n]} -> {after[n]} (asked {r:g})" for n, r in ratios.items()
           if r > 0 and n not in ignored_names
           and abs(after[n] - int(before[n] * (1.0 - r))) > max(1, before[n] // 16)]
    if off:
        warnings.warn(f"channel pruning could not meet the ratio of {', '.join(off)}: grouped "
                      f"or depthwise convolutions are pruned in whole groups", stacklevel=2)
    return {"before": before, "after": after, "ignored": ignored_names,
            "importance": importance}

"""Structured pruning: remove whole hidden neurons of a trained QuantMLP.

Every hidden neuron is one table lookup (one programmable bootstrapping under FHE) and
one input of every accumulator of the next layer, so removing neurons cuts latency
twice.  torch-pruning does the work:

* **which groups are coupled** -- its ``DependencyGraph``, traced through brevitas'
  forward pass.  ``brevitas.nn.QuantLinear`` subclasses ``torch.nn.Linear`` and is
  handled natively by torch-pruning's ``LinearPruner`` (no custom pruner: a custom one
  would hide the layers from its magnitude/Taylor importances, which only recognise the
  built-in pruning functions).  A neuron's group is its row in ``linears[i]`` and its
  column in ``linears[i + 1]``; the activation quantizers in between hold per-tensor
  scalars and are untouched.
* **how important** -- :mod:`latentopt.prune.importance`.
* **how to cut / how much and when** -- ``MetaPruner`` with per-layer or global ratios
  and ``iterative_steps``; this module calls a fine-tuning callback after each step.

Brevitas state stays consistent: assigning a new ``weight``/``bias`` parameter makes
brevitas re-initialise that layer's weight/bias quantizer around it (per-tensor weight
scales are statistics of the weight, recomputed at every forward).  Any learned state of
those quantizers (learned or per-channel scales) is saved before the cut and restored
after it, sliced along the pruned output channels where it is per-channel.  Weight masks
(:mod:`latentopt.prune.masks`, a buffer torch-pruning does not know about) are sliced
with the indices read from each group just before it is cut.  The output layer and the
input features are never pruned.  torch-pruning silently skips a group that would
remove every neuron of a layer (possible with global ranking); that is refused here
with a ``ValueError`` instead.

Note that removing neurons can change a layer's weight scale (the largest weight may be
gone), so an accumulator budget enforced earlier by
:func:`~latentopt.prune.accumulator.prune_accumulator` must be enforced again after
structured pruning: prune structurally first, then for the accumulator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .importance import LossFn, accumulate_gradients, make_importance, needs_gradients
from .masks import slice_mask
from .report import PruneReport, check_quant_mlp, module_summary, preserved_mode

__all__ = ["layer_ratios", "prune_structured"]

FineTune = Callable[[Any], Any]


def _check_ratio(value: Any, what: str) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number in [0, 1), got {value!r}") from exc
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value!r}")
    return r


def layer_ratios(
    hidden_sizes: Sequence[int],
    ratio: float,
    per_layer: Sequence[float] | Mapping[int, float] | None = None,
) -> list[float]:
    """Pruning ratio of every hidden layer, checked so that no layer loses all neurons.

    ``per_layer`` (a sequence with one ratio per hidden layer, or a dict from hidden
    layer index to ratio, others taking ``ratio``) overrides ``ratio``.  torch-pruning
    keeps ``int(n * (1 - ratio))`` of a layer's ``n`` neurons.

    >>> layer_ratios([8, 4], 0.5), layer_ratios([8, 4], 0.0, {1: 0.5})
    ([0.5, 0.5], [0.0, 0.5])
    """
    n = len(hidden_sizes)
    ratios = [_check_ratio(ratio, "ratio")] * n
    if per_layer is not None:
        if isinstance(per_layer, Mapping):
            for key, value in per_layer.items():
                if not isinstance(key, (int, np.integer)) or not 0 <= int(key) < n:
                    raise ValueError(f"per_layer key {key!r} is not a hidden layer index "
                                     f"(0..{n - 1})")
                ratios[int(key)] = _check_ratio(value, f"per_layer[{key}]")
        else:
            values = list(per_layer)
            if len(values) != n:
                raise ValueError(f"per_layer has {len(values)} ratios, expected {n} "
                                 "(one per hidden layer)")
            ratios = [_check_ratio(v, f"per_layer[{i}]") for i, v in enumerate(values)]
    for i, (size, r) in enumerate(zip(hidden_sizes, ratios)):
        if int(size * (1.0 - r)) < 1:
            raise ValueError(
                f"ratio {r} would prune hidden layer {i} to zero neurons (it has {size}); "
                "a layer needs at least one neuron"
            )
    return ratios


def _quantizer_state(layer: nn.Module) -> dict[str, torch.Tensor]:
    """State of a layer's quantizers (everything but weight, bias and mask)."""
    skip = {"weight", "bias", "weight_mask"}
    return {k: v.detach().clone() for k, v in layer.state_dict().items() if k not in skip}


@torch.no_grad()
def _restore_quantizer_state(
    layer: nn.Module, saved: dict[str, torch.Tensor], old_out: int, keep_out: list[int] | None
) -> None:
    """Put back quantizer state that re-initialisation lost, sliced if per-channel.

    Brevitas rebuilds a layer's weight quantizer when its weight parameter is replaced;
    learned scales (e.g. ``parameter_from_stats``) would be re-initialised from the
    weight statistics at the next forward pass.  Their trained values are restored
    here, keeping only the surviving output channels of per-channel state.
    """
    if not saved:
        return
    restore: dict[str, torch.Tensor] = {}
    for key, old in saved.items():
        value = old
        if keep_out is not None and old.ndim >= 1 and old.shape[0] == old_out > 1:
            value = old[keep_out]
        restore[key] = value
    layer.load_state_dict(restore, strict=False)
    current = layer.state_dict()
    for key, value in restore.items():
        if key not in current or current[key].shape != value.shape:
            got = tuple(current[key].shape) if key in current else "nothing"
            raise RuntimeError(f"could not restore quantizer state {key!r} after pruning: "
                               f"expected shape {tuple(value.shape)}, got {got}")


def _check_global_plan(groups: list[Any], dg: Any, linears: list[Any],
                       target: int) -> None:
    """Refuse a global pruning step that torch-pruning could not carry out fully."""
    planned = sum(
        len(set(idxs)) for group in groups for dep, idxs in group
        if dep.target.module in linears[:-1] and dg.is_out_channel_pruning_fn(dep.handler)
    )
    current = sum(int(lin.out_features) for lin in linears[:-1])
    if current - planned > target:
        raise ValueError(
            "global pruning would remove every neuron of a hidden layer (its neurons all "
            "rank lowest); lower the ratio or use per-layer ratios"
        )


def _cut(groups: list[Any], dg: Any, linears: list[Any]) -> None:
    """Check then execute torch-pruning groups, keeping masks and quantizers consistent.

    ``linears``: the ``QuantMLP``'s linear layers (brevitas, typed ``Any``)."""
    plan: list[tuple[Any, list[tuple[Any, int, list[int]]]]] = []
    for group in groups:
        cuts: list[tuple[Any, int, list[int]]] = []
        for dep, idxs in group:
            layer = dep.target.module
            if not isinstance(layer, nn.Linear):
                continue
            out = dg.is_out_channel_pruning_fn(dep.handler)
            size = layer.out_features if out else layer.in_features
            if out and layer is linears[-1]:
                raise RuntimeError("internal error: the output layer was selected for pruning")
            if out and len(set(idxs)) >= size:
                i = linears.index(layer)
                raise ValueError(
                    f"pruning would remove all {size} neurons of hidden layer {i}; lower the "
                    "ratio (with global_pruning=True a whole layer can rank lowest)"
                )
            cuts.append((layer, 0 if out else 1, sorted(set(int(j) for j in idxs))))
        plan.append((group, cuts))
    for group, cuts in plan:
        saved = {id(layer): (_quantizer_state(layer), layer.out_features)
                 for layer, _, _ in cuts}
        keeps = []
        for layer, dim, idxs in cuts:
            drop = set(idxs)
            keeps.append([j for j in range(layer.weight.shape[dim]) if j not in drop])
        group.prune()
        for (layer, dim, _), keep in zip(cuts, keeps):
            slice_mask(layer, keep, dim)
            state, old_out = saved[id(layer)]
            _restore_quantizer_state(layer, state, old_out, keep if dim == 0 else None)


def prune_structured(
    module: Any,
    ratio: float = 0.5,
    *,
    per_layer: Sequence[float] | Mapping[int, float] | None = None,
    importance: Any = "l1",
    global_pruning: bool = False,
    steps: int = 1,
    fine_tune: FineTune | None = None,
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
    loss_fn: LossFn | None = None,
    seed: int | None = None,
) -> PruneReport:
    """Remove whole hidden neurons of a :class:`~latentopt.nn.mlp.QuantMLP`, in place.

    Parameters
    ----------
    module : QuantMLP
        A trained module (masked or not).  It is modified in place and its
        ``config["hidden_sizes"]`` updated, so ``QuantMLP(**module.config)`` +
        ``load_state_dict(module.state_dict())`` recreates it.
    ratio : float in [0, 1)
        Fraction of the neurons of every hidden layer to remove (with
        ``global_pruning``, of all hidden neurons together).
    per_layer : sequence of float or dict of int to float, optional
        One ratio per hidden layer (or ``{layer_index: ratio}``), overriding ``ratio``.
    importance : {"l1", "l2", "taylor", "random"} or torch-pruning Importance
        How neurons are ranked (:mod:`latentopt.prune.importance`); ``"taylor"`` needs
        ``X`` and ``y``.
    global_pruning : bool
        Rank neurons of all hidden layers together instead of layer by layer.
    steps : int
        Number of pruning steps; the ratio is reached linearly (iterative pruning).
    fine_tune : callable, optional
        ``fine_tune(module)`` is called after each step (e.g. a few epochs of
        :func:`~latentopt.nn.train.train_module`).
    X, y : arrays, optional
        Data for gradient-based importance.
    loss_fn : callable, optional
        ``loss_fn(output, target)``; default cross-entropy for integer ``y``, else MSE.
    seed : int, optional
        Seeds random importance (the global torch RNG is left untouched).

    Returns
    -------
    PruneReport
        Neurons, TLUs, active inputs and accumulator bits before and after.

    Raises
    ------
    ValueError
        On a ratio outside [0, 1), a ratio that would empty a layer (with
        ``global_pruning``, detected at the step where it happens: earlier steps of an
        iterative run are kept), a module without hidden layers, or ``"taylor"``
        without data.

    Examples
    --------
    >>> from latentopt.nn.mlp import QuantMLP
    >>> m = QuantMLP(4, (8, 6), 3)
    >>> rep = prune_structured(m, 0.5)
    >>> rep.hidden_after, m.config["hidden_sizes"], rep.tlus_before, rep.tlus_after
    ([4, 3], [4, 3], 14, 7)
    """
    import torch_pruning as tp

    from ..nn.train import seeded

    check_quant_mlp(module)
    hidden = [int(h) for h in module.config["hidden_sizes"]]
    if not hidden:
        raise ValueError("the module has no hidden layer to prune")
    if global_pruning and per_layer is not None:
        raise ValueError("per_layer ratios and global_pruning=True are exclusive")
    ratios = layer_ratios(hidden, ratio, per_layer)
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    imp = make_importance(importance)
    grads = needs_gradients(imp)
    if grads and (X is None or y is None):
        raise ValueError("a gradient-based importance ('taylor') needs X and y")

    before = module_summary(module)
    linears = list(module.linears)
    with preserved_mode(module), seeded(seed), warnings.catch_warnings():
        # brevitas' per-tensor scales are 0-d parameters torch-pruning cannot (and need
        # not) prune; it warns about them.
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        with torch.no_grad():  # masked weights are zero: magnitude importance sees them
            for layer in linears:
                mask = getattr(layer, "weight_mask", None)
                if mask is not None:
                    layer.weight.mul_(mask)
        pruner = tp.pruner.MetaPruner(
            module,
            torch.zeros(1, int(module.config["n_features"])),
            importance=imp,
            global_pruning=bool(global_pruning),
            pruning_ratio=ratios[0] if per_layer is None else 0.0,
            pruning_ratio_dict=(
                None if per_layer is None else {linears[i]: r for i, r in enumerate(ratios)}
            ),
            iterative_steps=int(steps),
            ignored_layers=[linears[-1]],
            root_module_types=[nn.Linear],
        )
        total = sum(hidden)
        for step in range(int(steps)):
            module.eval()
            if grads:
                assert X is not None and y is not None
                accumulate_gradients(module, X, y, loss_fn)
            groups = list(pruner.step(interactive=True))
            if global_pruning:
                # torch-pruning silently skips a group that would empty a layer
                target = int(total * (1 - (ratios[0] / steps) * (step + 1)))
                _check_global_plan(groups, pruner.DG, linears, target)
            _cut(groups, pruner.DG, linears)
            if grads:
                module.zero_grad(set_to_none=True)
            module.config["hidden_sizes"] = [int(lin.out_features) for lin in linears[:-1]]
            if fine_tune is not None:
                fine_tune(module)
    after = module_summary(module)
    details = {"ratios": ratios, "importance": importance if isinstance(importance, str)
               else type(importance).__name__, "global_pruning": bool(global_pruning),
               "steps": int(steps)}
    return PruneReport("structured", before, after, details)

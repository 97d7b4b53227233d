"""Pruning of quantized MLPs for fast FHE inference.

In FHE every hidden neuron costs a programmable bootstrapping and every active input
widens the accumulator, so pruning buys latency twice:

* :func:`prune_structured` removes whole hidden neurons (torch-pruning's dependency
  graph; ``l1``/``l2``/``taylor``/``random`` importance; per-layer or global ratios;
  one-shot or iterative with fine-tuning) -- fewer table lookups;
* :func:`prune_accumulator` masks the smallest weights of every neuron until each
  accumulator fits a bit budget, verified on the exported IR -- narrower accumulators.

Both work in place on a :class:`~latentopt.nn.mlp.QuantMLP` and return a
:class:`PruneReport`.  Prune structurally first, then for the accumulator.
torch-pruning is imported only when structured pruning runs.

Examples
--------
>>> from latentopt.nn.mlp import QuantMLP
>>> m = QuantMLP(6, (8,), 2, n_w_bits=3, n_a_bits=3)
>>> prune_structured(m, 0.5).hidden_after
[4]
>>> prune_accumulator(m, 7).max_accumulator_bits <= 7
True
"""

from __future__ import annotations

from .accumulator import accumulator_limits, min_accumulator_bits, prune_accumulator
from .importance import IMPORTANCES
from .masks import clear_masks, ensure_masks, get_masks, has_masks, set_masks
from .report import PruneReport, module_summary
from .structured import layer_ratios, prune_structured

__all__ = [
    "IMPORTANCES",
    "PruneReport",
    "accumulator_limits",
    "clear_masks",
    "ensure_masks",
    "get_masks",
    "has_masks",
    "layer_ratios",
    "min_accumulator_bits",
    "module_summary",
    "prune_accumulator",
    "prune_structured",
    "set_masks",
]

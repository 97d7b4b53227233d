"""Magnitude (unstructured) pruning to an accumulator bit budget.

Under FHE every accumulator must fit the circuit's integer width, and every active input
of a neuron widens it.  :func:`prune_accumulator` removes the smallest-magnitude weights
of each neuron (fixed masks, :mod:`latentopt.prune.masks`) until every accumulator --
the integer bias included -- fits in ``n_accum_bits`` bits, and *checks the result on
the exported IR* before returning.

Bit-widths follow the IR's convention (:func:`latentopt.ir.bit_width`): a layer whose
accumulators are never negative may use ``n_accum_bits`` unsigned bits, otherwise it is
two's-complement signed.  When a layer must be tightened, every neuron is brought into
the signed range ``[-2**(n-1), 2**(n-1) - 1]``, which fits either way.

The guarantee loop
------------------
1. Initial masks: ``strategy="fit"`` keeps, in each neuron, the largest-magnitude
   weights for which the range fits (given the current integer weights);
   ``strategy="count"`` keeps the ``k`` largest where ``k * max|w| * max|x|`` fits, so
   the bound holds for *any* weight values a later fine-tuning may reach.
2. ``fine_tune(module)`` (masks fixed: masked weights get no gradient).
3. Tighten and verify: export to the IR, take each layer's accumulator range (worst
   case from :meth:`~latentopt.ir.Circuit.worst_case_ranges`, or calibrated on ``X``);
   in the first layer that violates the budget, limit the bias of each violating neuron
   to half the budget (a bias at the edge leaves its weights no room: a neuron constant
   in its input), then remove, neuron by neuron, the smallest-magnitude weights that push the
   violated bound until the neuron fits; re-export (a removed weight can change the
   layer's weight scale and the ranges of later layers) and repeat until every layer
   fits.  Each pass removes a weight or clamps a bias, so the loop terminates.
4. A final independent check on a fresh export; a module that violates the budget is
   never returned.

``ranges="calibrated"`` uses the accumulator values observed on ``X`` (through
``IntegerBackend(circuit).calibrate(X)``) instead of the worst case: it prunes far less,
but the bound is *not guaranteed* for inputs unlike ``X``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..ir import Gemm, Interval, QuantActivation, QuantizeInput, TableLookup, bit_width
from .masks import ensure_masks
from .report import PruneReport, check_quant_mlp, module_summary, preserved_mode

__all__ = ["accumulator_limits", "check_accumulator_budget", "min_accumulator_bits",
           "prune_accumulator"]

RANGES = ("worst_case", "calibrated")
STRATEGIES = ("fit", "count")


def accumulator_limits(n_bits: int) -> tuple[int, int]:
    """Signed range of an ``n_bits`` accumulator.

    >>> accumulator_limits(8)
    (-128, 127)
    """
    return -(1 << (n_bits - 1)), (1 << (n_bits - 1)) - 1


def _weight_max(layer: Any) -> int:
    """Largest integer weight magnitude the layer's weight quantizer can produce."""
    qw = layer.quant_weight()
    b = int(qw.bit_width.item())
    narrow = bool(getattr(layer.weight_quant, "is_narrow_range", True))
    return (1 << (b - 1)) - (1 if narrow else 0)


def _input_magnitude(circuit: Any, gemm: Any) -> int:
    """Largest ``|x - zero_point|`` over the full quantized range of a gemm's input
    (``gemm``: a :class:`~latentopt.ir.Gemm` node of ``circuit``)."""
    src = circuit[gemm.inputs[0]]
    if isinstance(src, QuantizeInput):
        lo, hi = src.qrange
    elif isinstance(src, TableLookup):
        if not isinstance(src.fn, QuantActivation):  # pragma: no cover - QuantMLP circuits
            raise TypeError(f"unexpected lookup function {type(src.fn).__name__}")
        lo, hi = src.fn.qrange
    else:  # pragma: no cover - QuantMLP circuits only contain the two above
        raise TypeError(f"unexpected gemm input node {type(src).__name__}")
    zp = gemm.input_zero_point
    return max(abs(int(lo) - zp), abs(int(hi) - zp))


def min_accumulator_bits(module: Any) -> list[int]:
    """Smallest feasible budget per layer: the bits of one product ``max|w| * max|x|``.

    >>> from latentopt.nn.mlp import QuantMLP
    >>> min_accumulator_bits(QuantMLP(4, (5,), 2, n_w_bits=3, n_a_bits=3))  # 3*4, 3*7
    [5, 6]
    """
    from ..nn.export import export_mlp

    check_quant_mlp(module)
    with preserved_mode(module):
        circuit = export_mlp(module)
        out = []
        for i, layer in enumerate(module.linears):
            p = _weight_max(layer) * _input_magnitude(circuit, circuit[f"fc{i}"])
            out.append(bit_width(-p, p))
    return out


def check_accumulator_budget(module: Any, n_bits: int, remedy: str = "") -> None:
    """ValueError when ``n_bits`` is below :func:`min_accumulator_bits` in some layer
    (``remedy``, if given, ends the message)."""
    floor = min_accumulator_bits(module)
    too_small = [i for i, b in enumerate(floor) if b > n_bits]
    if too_small:
        raise ValueError(
            f"n_accum_bits={n_bits} is impossible in layer(s) {too_small}: a single product "
            f"max|w| * max|x| already needs {max(floor)} bits (minimum per layer: {floor})"
            + (f"; {remedy}" if remedy else ""))


def _acc_scale(circuit: Any, i: int, n_layers: int) -> np.ndarray:
    """Float value of one accumulator unit, per output channel."""
    node = circuit[f"act{i}"].fn if i < n_layers - 1 else circuit.output
    scale = node.input_scale if i < n_layers - 1 else node.scale
    return np.broadcast_to(np.asarray(scale, dtype=np.float64),
                           (circuit[f"fc{i}"].out_features,))


def _pick(w_row: np.ndarray, tiebreak: np.ndarray, removable: np.ndarray) -> int:
    """Index of the smallest-magnitude removable weight (float magnitude breaks ties)."""
    cand = np.flatnonzero(removable)
    if cand.size == 0:  # pragma: no cover - excluded by the bias clamp
        raise RuntimeError("internal error: no weight left to remove")
    order = np.lexsort((tiebreak[cand], np.abs(w_row[cand])))
    return int(cand[order[0]])


def _clamp_bias(b: int, lim: tuple[int, int]) -> int:
    """The bias of a neuron that violates ``lim``, limited to half of it.

    A bias at the edge of the budget leaves its weights no room: with signed inputs every
    weight pushes the violated bound, and all of them were removed (a neuron constant in
    its input; a classifier on small-scale inputs became a constant predictor).  Half
    the budget stays for the weights.
    """
    lo_lim, hi_lim = lim
    return int(np.clip(b, lo_lim // 2, hi_lim // 2))


def _fix_worst_case(
    gemm: Gemm, x: Interval, lim: tuple[int, int], tiebreak: np.ndarray
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Weights to drop and biases to clamp so every neuron's worst case fits ``lim``."""
    w = gemm.weight.astype(np.int64)
    b = np.zeros(gemm.out_features, np.int64) if gemm.bias is None else gemm.bias.copy()
    zp = gemm.input_zero_point
    xlo = np.broadcast_to(x.lo - zp, (gemm.in_features,)).astype(np.int64)
    xhi = np.broadcast_to(x.hi - zp, (gemm.in_features,)).astype(np.int64)
    plo = np.minimum(w * xlo, w * xhi)  # per-weight contribution to the lower bound
    phi = np.maximum(w * xlo, w * xhi)
    lo_lim, hi_lim = lim
    drops: list[tuple[int, int]] = []
    biases: dict[int, int] = {}
    for i in range(gemm.out_features):
        lo, hi = int(b[i] + plo[i].sum()), int(b[i] + phi[i].sum())
        if lo_lim <= lo and hi <= hi_lim:
            continue
        nb = _clamp_bias(int(b[i]), lim)
        if nb != b[i]:
            biases[i] = nb
            lo, hi = lo + nb - int(b[i]), hi + nb - int(b[i])
        alive = w[i] != 0
        while hi > hi_lim or lo < lo_lim:
            removable = alive & ((phi[i] > 0) if hi > hi_lim else (plo[i] < 0))
            j = _pick(w[i], tiebreak[i], removable)
            alive[j] = False
            lo, hi = lo - int(plo[i, j]), hi - int(phi[i, j])
            drops.append((i, j))
    return drops, biases


def _fix_calibrated(
    gemm: Gemm, x: np.ndarray, lim: tuple[int, int], tiebreak: np.ndarray
) -> tuple[list[tuple[int, int]], dict[int, int]]:
    """Weights to drop and biases to clamp so every neuron's observed range fits ``lim``."""
    w = gemm.weight.astype(np.int64)
    b = np.zeros(gemm.out_features, np.int64) if gemm.bias is None else gemm.bias.copy()
    xs = x.astype(np.int64) - gemm.input_zero_point
    lo_lim, hi_lim = lim
    drops: list[tuple[int, int]] = []
    biases: dict[int, int] = {}
    for i in range(gemm.out_features):
        acc = xs @ w[i] + b[i]
        if acc.min() >= lo_lim and acc.max() <= hi_lim:
            continue
        nb = _clamp_bias(int(b[i]), lim)
        if nb != b[i]:
            biases[i] = nb
            acc = acc + (nb - int(b[i]))
        alive = w[i] != 0
        while acc.max() > hi_lim or acc.min() < lo_lim:
            high = acc.max() > hi_lim
            n = int(acc.argmax() if high else acc.argmin())
            contrib = w[i] * xs[n]
            j = _pick(w[i], tiebreak[i], alive & ((contrib > 0) if high else (contrib < 0)))
            alive[j] = False
            acc = acc - w[i, j] * xs[:, j]
            drops.append((i, j))
    return drops, biases


@torch.no_grad()
def _apply(layer: Any, drops: list[tuple[int, int]], biases: dict[int, int],
           scale: np.ndarray) -> None:
    mask = layer.weight_mask.clone()
    for i, j in drops:
        mask[i, j] = 0
    layer.set_weight_mask(mask)
    for i, nb in biases.items():
        layer.bias[i] = float(nb * scale[i])


def _layer_bits(circuit: Any, n_layers: int, values: dict[str, np.ndarray] | None) -> list[int]:
    worst = circuit.worst_case_ranges()
    return [
        (Interval.from_values(values[f"fc{i}"]) if values is not None else worst[f"fc{i}"]).bits
        for i in range(n_layers)
    ]


def _trace(module: Any, X: np.ndarray | None) -> tuple[Any, dict[str, np.ndarray] | None]:
    from ..backends.integer import IntegerBackend
    from ..nn.export import export_mlp

    circuit = export_mlp(module)
    if X is None:
        return circuit, None
    backend = IntegerBackend(circuit)
    _, values = backend.run_integers(backend.quantize(X), return_all=True)
    return circuit, values


def _tighten(module: Any, n_bits: int, X: np.ndarray | None, stats: dict[str, int]) -> None:
    """The guarantee loop (step 3 of the module docstring)."""
    layers = list(module.linears)
    lim = accumulator_limits(n_bits)
    budget = sum(int(layer.weight.numel()) + layer.out_features for layer in layers) + 8
    for _ in range(budget):
        circuit, values = _trace(module, X)
        bits = _layer_bits(circuit, len(layers), values)
        bad = [i for i, b in enumerate(bits) if b > n_bits]
        if not bad:
            return
        i = bad[0]
        gemm = circuit[f"fc{i}"]
        tiebreak = np.abs((layers[i].weight * layers[i].weight_mask).detach().cpu().numpy())
        if values is None:
            drops, biases = _fix_worst_case(gemm, circuit.worst_case_ranges()[gemm.inputs[0]],
                                            lim, tiebreak)
        else:
            drops, biases = _fix_calibrated(gemm, values[gemm.inputs[0]], lim, tiebreak)
        _apply(layers[i], drops, biases, _acc_scale(circuit, i, len(layers)))
        stats["weights_removed"] += len(drops)
        stats["biases_clamped"] += len(biases)
        stats["passes"] += 1
    raise RuntimeError("internal error: the accumulator budget loop did not converge")


@torch.no_grad()
def _keep_top_k(module: Any, n_bits: int) -> int:
    """``strategy="count"``: keep the k largest weights per neuron, k from the bound."""
    from ..nn.export import export_mlp

    circuit = export_mlp(module)
    _, hi_lim = accumulator_limits(n_bits)
    removed = 0
    for i, layer in enumerate(module.linears):
        k = hi_lim // (_weight_max(layer) * _input_magnitude(circuit, circuit[f"fc{i}"]))
        if k >= layer.in_features:
            continue
        magnitude = (layer.weight * layer.weight_mask).abs()
        top = magnitude.topk(int(k), dim=1).indices
        mask = torch.zeros_like(layer.weight_mask).scatter_(1, top, 1.0) * layer.weight_mask
        removed += int(layer.weight_mask.sum().item() - mask.sum().item())
        layer.set_weight_mask(mask)
    return removed


def _warn_constant_neurons(before: list[np.ndarray], after: list[np.ndarray],
                           n_bits: int) -> None:
    """Warn when the budget left neurons without any weight (constant in the input)."""
    lost = [(i, int(((b > 0) & (a == 0)).sum()), len(a))
            for i, (b, a) in enumerate(zip(before, after, strict=True))]
    lost = [t for t in lost if t[1]]
    if lost:
        import warnings

        which = ", ".join(f"{k} of {n} neurons of layer {i}" for i, k, n in lost)
        warnings.warn(
            f"n_accum_bits={n_bits} left {which} without any weight: their outputs no "
            "longer depend on the input (a model can become a constant predictor). The "
            "integer biases fill the budget, typically because the inputs are on a small "
            "scale (standardise them) or the budget is tight: raise n_accum_bits",
            UserWarning, stacklevel=3)


def prune_accumulator(
    module: Any,
    n_accum_bits: int,
    *,
    X: np.ndarray | None = None,
    ranges: str = "worst_case",
    strategy: str = "fit",
    fine_tune: Callable[[Any], Any] | None = None,
    rounds: int = 1,
) -> PruneReport:
    """Prune weights of a :class:`~latentopt.nn.mlp.QuantMLP` until every accumulator fits.

    Parameters
    ----------
    module : QuantMLP
        Trained module, modified in place: weight masks are added or tightened (and the
        bias of a neuron that violates the budget is limited to half of it).  Works on structurally
        pruned modules; run structured pruning *before* this (see
        :mod:`latentopt.prune.structured`).
    n_accum_bits : int >= 2
        Budget for every accumulator (integer bias included), in the IR's convention.
    X : array of shape (n_samples, n_features), optional
        Calibration data; required by ``ranges="calibrated"``.
    ranges : {"worst_case", "calibrated"}
        ``"worst_case"`` guarantees the budget for every possible input;
        ``"calibrated"`` only on ``X`` (not a guarantee for unseen data).
    strategy : {"fit", "count"}
        Initial masks: fit the current weights (keeps more), or keep a weight-agnostic
        number of inputs per neuron (robust to fine-tuning).
    fine_tune : callable, optional
        ``fine_tune(module)``, called after masking (masks stay fixed); the budget is
        enforced again afterwards.
    rounds : int
        Number of (fine-tune, tighten) cycles when ``fine_tune`` is given.

    Returns
    -------
    PruneReport
        With ``details``: the budget, weights removed, biases clamped.

    Raises
    ------
    ValueError
        ``n_accum_bits < 2``, a budget smaller than a single product ``max|w| * max|x|``
        in some layer (see :func:`min_accumulator_bits`), or bad arguments.

    Examples
    --------
    >>> from latentopt.nn.mlp import QuantMLP
    >>> m = QuantMLP(8, (6,), 2, n_w_bits=3, n_a_bits=3)
    >>> rep = prune_accumulator(m, 7)
    >>> rep.max_accumulator_bits <= 7
    True
    """
    check_quant_mlp(module)
    if isinstance(n_accum_bits, bool) or not isinstance(n_accum_bits, (int, np.integer)):
        raise ValueError(f"n_accum_bits must be an int, got {n_accum_bits!r}")
    n_bits = int(n_accum_bits)
    if n_bits < 2:
        raise ValueError(f"n_accum_bits must be >= 2, got {n_bits}")
    if ranges not in RANGES:
        raise ValueError(f"ranges must be one of {RANGES}, got {ranges!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if ranges == "calibrated":
        if X is None:
            raise ValueError("ranges='calibrated' needs calibration data X")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0 or X.shape[1] != module.config["n_features"]:
            raise ValueError(f"X must have shape (n_samples>0, {module.config['n_features']})")
    cal = X if ranges == "calibrated" else None
    check_accumulator_budget(module, n_bits)

    before = module_summary(module, cal)
    stats = {"weights_removed": 0, "biases_clamped": 0, "passes": 0}
    with preserved_mode(module):
        ensure_masks(module)
        if strategy == "count":
            stats["weights_removed"] += _keep_top_k(module, n_bits)
        _tighten(module, n_bits, cal, stats)
        for _ in range(int(rounds) if fine_tune is not None else 0):
            assert fine_tune is not None
            fine_tune(module)
            module.eval()
            _tighten(module, n_bits, cal, stats)
    after = module_summary(module, cal)
    final = after["accumulator_bits_calibrated"] if cal is not None else after["accumulator_bits"]
    if max(final) > n_bits:  # independent check of the loop's result
        raise RuntimeError(f"internal error: accumulators need {final} bits > {n_bits}")
    _warn_constant_neurons(before["active_inputs"], after["active_inputs"], n_bits)
    details = dict(stats, n_accum_bits=n_bits, ranges=ranges, strategy=strategy,
                   active_weights=int(sum(int(a.sum()) for a in after["active_inputs"])))
    return PruneReport("accumulator", before, after, details)

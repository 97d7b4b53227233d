"""Regression targets: standardised for training, de-standardised inside the circuit.

A regressor trains on standardised targets ``(y - y_mean_) / y_scale_``.  Instead of
undoing that in the clear after each backend, the inverse transform is folded into the
circuit's output dequantizer (``Dequantize.offset``): ``(x - zero_point) * scale *
y_scale_ + y_mean_``.  The integer backend, FHE simulation and execution, the ONNX export
and the deployment client then all return targets in the user's units.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, Dequantize, Gemm, QuantizeInput
>>> c = Circuit([QuantizeInput("q", ("input",), 0.5, 0, 4), Gemm("g", ("q",), [[2, -1]]),
...              Dequantize("out", ("g",), 0.5, 0)], n_features=2)
>>> folded = fold_target_scaling(c, mean=np.array([10.0]), scale=np.array([2.0]))
>>> float(folded.output.apply(np.array([[3]]))[0, 0])  # 3 * 0.5 * 2 + 10
13.0
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..ir import Circuit

__all__ = ["fold_target_scaling", "linear_head", "standardise_head", "target_scaling",
           "trained_scaling", "warn_target_units"]


def target_scaling(y2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-target mean and scale: the standard deviation, or for a constant target
    ``1e-6 * |mean|`` (``1e-6`` for zeros).  A scale of 1 left the network's output noise,
    about 0.02, in the target's units: a constant 2**-10 came out between -0.0099 and
    0.0215; ``1e-6 * max(|mean|, 1)`` still gave 1e-9 out as 1e-7.  The deviation is
    taken on ``y / max|y|``: squares of targets below ~1e-154 underflow to 0, and such a
    target was read as constant (predictions 1e163 times too large)."""
    y2 = np.asarray(y2, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mean = y2.mean(axis=0)
        top = np.abs(y2).max(axis=0) if len(y2) else np.zeros(y2.shape[1:])
        unit = np.where((top > 0) & np.isfinite(top), top, 1.0)
        std = (y2 / unit).std(axis=0) * unit
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        # the mean of targets near float64's limit overflows: no scale to train with
        raise ValueError(
            f"y is too large to standardise (max |y| = {np.abs(y2).max():.3g}: its "
            f"mean or deviation overflows float64); rescale the targets, e.g. y / "
            f"{10.0 ** np.floor(np.log10(np.abs(y2).max())):.0e}")
    constant = np.where(mean != 0, 1e-6 * np.abs(mean), 1e-6)
    return mean, np.where(std > 0, std, constant)


def fold_target_scaling(circuit: Circuit, mean: np.ndarray, scale: np.ndarray) -> Circuit:
    """``circuit`` whose outputs are ``outputs * scale + mean`` (folded into its dequantizer).

    Calibrated ranges are kept: the integers the circuit computes do not change.
    """
    out = circuit.output
    mean, scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    folded = dataclasses.replace(out, scale=out.scale * scale, offset=out.offset * scale + mean)
    return circuit.replace(nodes=[*list(circuit)[:-1], folded])


def linear_head(module: Any, n_outputs: int) -> str | None:
    """The name of ``module``'s output layer when it is an ``nn.Linear`` of ``n_outputs``
    features (its output is the model's), else None."""
    import torch

    from ..nn.fx_import import _trace

    try:
        gm = _trace(module)
    except Exception:  # noqa: BLE001 - not traceable: the import will say why
        return None
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if getattr(out, "op", None) != "call_module":
        return None
    layer = module.get_submodule(str(out.target))
    if type(layer) is torch.nn.Linear and layer.out_features == n_outputs:
        return str(out.target)
    return None


def warn_target_units(y2: np.ndarray) -> None:
    """Warn when a model fine-tuned in its own units has targets far from unit scale."""
    import warnings

    std = y2.std(axis=0)
    if np.any((std > 0) & ((std < 1e-2) | (std > 1e4))):
        warnings.warn(
            f"the module's output is not an nn.Linear layer, so it is fine-tuned in the "
            f"targets' own units (standard deviation {float(std.min()):.3g} to "
            f"{float(std.max()):.3g}): far from 1, fine-tuning may fail (Adam's steps are "
            f"about lr whatever the weights); standardise the targets, or end the model "
            f"with an nn.Linear", UserWarning, stacklevel=4)


def standardise_head(model: Any, head: str, mean: np.ndarray, scale: np.ndarray) -> Any:
    """A copy of the torch ``model`` whose output layer ``head`` (an ``nn.Linear``, see
    :func:`linear_head`) computes ``(W x + b - mean) / scale``: standardised targets,
    which :func:`fold_target_scaling` undoes in the circuit.  Fine-tuned in its own
    units, a model of targets in 1e-4 units came out at R^2 -5.6 (Adam's steps do not
    shrink with the weights of such a head: about ``lr`` each)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    layer = model.get_submodule(head)
    s = torch.as_tensor(scale, dtype=layer.weight.dtype)
    m = torch.as_tensor(mean, dtype=layer.weight.dtype)
    with torch.no_grad():
        layer.weight.div_(s[:, None])
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(torch.zeros_like(m))
        layer.bias.sub_(m).div_(s)
        finite = bool(torch.isfinite(layer.weight).all() and torch.isfinite(layer.bias).all())
    if not finite or not bool((s > 0).all()):
        raise ValueError(
            f"the targets' scale ({np.min(scale):.3g}) is beyond the range of the model's "
            f"{layer.weight.dtype} head: standardising it overflows.  Rescale y (e.g. "
            f"y / {10.0 ** np.floor(np.log10(np.max(scale))):.0e}) and the model's head "
            "with it, or fit a factory's fresh model")
    return model


def trained_scaling(module: Any, y2: np.ndarray) -> tuple[str | None, np.ndarray, np.ndarray]:
    """``(head, mean, scale)`` for fine-tuning a trained torch ``module`` on ``y2``:
    standardised through its Linear head (:func:`standardise_head`), or, without one,
    in its own units (mean 0, scale 1; :func:`warn_target_units`)."""
    head = linear_head(module, y2.shape[1])
    if head is None:
        warn_target_units(y2)
        return None, np.zeros(y2.shape[1]), np.ones(y2.shape[1])
    mean, scale = target_scaling(y2)
    return head, mean, scale

"""What :class:`~latentopt.search.LatencySearch` needs from the torch QAT estimators.

The search samples *pseudo-parameters* (:data:`~latentopt.search.space.TORCH_SPACE`)
that an estimator turns into its own parameters (:meth:`TorchSearchHooks._assemble_params`):

* ``n_w_bits``, ``n_a_bits``, ``n_input_bits`` (global) and ``"n_w_bits.<layer>"`` /
  ``"n_a_bits.<layer>"`` (one layer, a module name of the model) build ``n_bits``;
* ``"pruning_ratio.<layer>"`` (one prunable layer) build a per-layer ``pruning_ratio``
  dict; layers not searched keep the estimator's (or the sampled global) ratio;
  ``"pruning_ratio.*"`` stands for every prunable layer of the model
  (:meth:`TorchSearchHooks._expand_search_space`).

:func:`~latentopt.search.space.torch_space` writes a space with one pruning ratio per
prunable layer.  The search's reference is the user's float model
(:class:`FloatReference`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

__all__ = ["BIT_PARAMS", "FloatReference", "TorchSearchHooks"]

#: Search pseudo-parameters that build ``n_bits`` (``"n_w_bits.conv1"``: one layer).
BIT_PARAMS = {"n_input_bits": "inputs", "n_w_bits": "weights", "n_a_bits": "activations"}
#: Search pseudo-parameter of one layer's pruning ratio (``"pruning_ratio.conv1"``).
PRUNE_PARAM = "pruning_ratio"
#: Seeded configurations of a torch search (pseudo-parameters, clipped into the space).
#: ``"prune"``: ``"mid"`` is 0.5 on every layer, ``"heavy"`` the space's largest ratio
#: on the layers with the most lookups per channel and 0.5 on the others, ``"light"``
#: 0.25.  Measured on real MNIST (``benchmarks/mnist_search.py``, issue CNN, float
#: 0.940): 4-bit weights and activations at 3-bit inputs with half the channels pruned
#: (and the first convolution, 36 lookups per channel against 16, pruned by three
#: quarters) reached 0.934-0.946 on the test digits at 200-272 lookups; random sampling
#: of 120 trials found that pruning but not those bits (7-bit inputs, 6.6 s against
#: 4.7 s).  Distillation
#: (where the space searches it) is on in half the seeds: it lifted that CNN by about a
#: point but cost the MNIST MLP one.
TORCH_SEEDS: tuple[dict[str, Any], ...] = (
    {"n_w_bits": 4, "n_a_bits": 4, "n_input_bits": 3, "prune": "heavy", "distill_alpha": 0.5},
    {"n_w_bits": 4, "n_a_bits": 4, "n_input_bits": 4, "prune": "mid", "distill_alpha": 0.0},
    {"n_w_bits": 3, "n_a_bits": 3, "n_input_bits": 3, "prune": "heavy", "distill_alpha": 0.5},
    {"n_w_bits": 4, "n_a_bits": 4, "n_input_bits": 4, "prune": "light", "distill_alpha": 0.0},
)


class TorchSearchHooks:
    """Search hooks of :class:`~latentopt.QuantizedTorchClassifier` and
    :class:`~latentopt.QuantizedTorchRegressor` (mixed into both)."""

    module: Any
    n_bits: Any
    pruning_ratio: Any
    _classifier: bool

    def _default_search_space(self) -> dict[str, Any]:
        import torch

        from ..search.space import TORCH_SPACE

        space = dict(TORCH_SPACE)
        if not isinstance(self.module, torch.nn.Module):  # a factory: nothing to distil
            space.pop("distill_alpha")
        return space

    @staticmethod
    def _is_search_name(name: str) -> bool:
        """Whether ``name`` is a search pseudo-parameter (builds ``n_bits`` or a per-layer
        ``pruning_ratio``)."""
        base, _, layer = name.partition(".")
        if base == PRUNE_PARAM:
            return bool(layer)
        return base in BIT_PARAMS and not (base == "n_input_bits" and layer)

    def _expand_search_space(self, space: Mapping[str, Any]) -> dict[str, Any]:
        """``space`` with ``"pruning_ratio.*"`` replaced by one ``"pruning_ratio.<layer>"``
        entry per prunable layer (entries the space names itself are kept).  A module
        factory with a ``distill_alpha`` > 0 in the space is refused: it has no trained
        model to distil."""
        import torch

        wildcard = f"{PRUNE_PARAM}.*"
        out = {k: v for k, v in space.items() if k != wildcard}
        if not isinstance(self.module, torch.nn.Module) and "distill_alpha" in space:
            values = space["distill_alpha"]
            values = values if isinstance(values, (list, tuple)) else [values]
            if any(not isinstance(v, str) and float(v) > 0 for v in values):
                raise ValueError("search space entry 'distill_alpha' > 0 distils the trained "
                                 "float module; a module factory builds an untrained one: "
                                 "leave 'distill_alpha' out of the space "
                                 "(torch_space(distill=False))")
        if wildcard not in space:
            return out
        if not isinstance(self.module, torch.nn.Module):
            raise ValueError(f"search space entry {wildcard!r} needs a torch.nn.Module (its "
                             f"layer names), not a module factory: name the layers "
                             f"('{PRUNE_PARAM}.<layer>') or search '{PRUNE_PARAM}'")
        from ..prune.channels import prunable_layers

        names = prunable_layers(self.module)
        if not names:
            raise ValueError(f"search space entry {wildcard!r}: the model has no prunable "
                             f"layer (only its output layers are linear / convolutions)")
        for name in names:
            out.setdefault(f"{PRUNE_PARAM}.{name}", space[wildcard])
        return out

    def _search_seeds(self, space: Mapping[str, Any], X: Any = None) -> list[dict[str, Any]]:
        """The seeded start of a torch search: :data:`TORCH_SEEDS` in ``space`` terms.

        Every seed uses the space's largest learning rate.  Per-layer pruning ratios
        (``"pruning_ratio.<layer>"``) of a ``"heavy"`` seed prune the layers with the
        most lookups per output channel (measured on ``X``, one sample) the most.
        """
        from ..search.screening import clip_to_space

        per_channel = self._lookups_per_channel(X) if X is not None else {}
        cut = float(np.median(list(per_channel.values()))) if per_channel else np.inf
        out: list[dict[str, Any]] = []
        for seed in TORCH_SEEDS:
            trial: dict[str, Any] = {}
            for name, spec in space.items():
                base, _, layer = name.partition(".")
                if base == PRUNE_PARAM:
                    ratio = {"mid": 0.5, "light": 0.25}.get(seed["prune"], 0.5)
                    if seed["prune"] == "heavy" and layer and per_channel.get(layer, 0) > cut:
                        ratio = 1.0  # clipped to the space's largest ratio
                    trial[name] = clip_to_space(ratio, spec)
                elif base in seed:
                    trial[name] = clip_to_space(seed[base], spec)
                elif name == "lr":
                    trial[name] = clip_to_space(1.0, spec)
            if trial and trial not in out:
                out.append(trial)
        return out

    def _lookups_per_channel(self, X: Any) -> dict[str, float]:
        """Output elements per channel of every prunable layer for one sample of ``X``
        (a proxy of the lookups one pruned channel saves); empty for a factory or an
        input the model does not take."""
        import torch

        from ..prune.channels import prunable_layers

        if not isinstance(self.module, torch.nn.Module):
            return {}
        model = copy.deepcopy(self.module).float().eval()
        names = set(prunable_layers(model))
        sizes: dict[str, float] = {}
        hooks = [m.register_forward_hook(
            lambda _m, _i, out, n=n: sizes.__setitem__(n, out[0].numel() / max(1, out.shape[1])))
            for n, m in model.named_modules() if n in names]
        try:
            with torch.no_grad():
                model(torch.as_tensor(np.asarray(X)[:1], dtype=torch.float32))
        except Exception:  # noqa: BLE001 - a seed heuristic only: fall back to uniform
            return {}
        finally:
            for h in hooks:
                h.remove()
        return sizes

    def _bits_dict(self) -> dict[str, Any]:
        if not isinstance(self.n_bits, Mapping):
            b = int(self.n_bits)
            return {"inputs": b, "weights": b, "activations": b}
        out: dict[str, Any] = {"inputs": 8, "weights": 8, "activations": 8}
        for k, v in self.n_bits.items():
            out[k] = dict(v) if isinstance(v, Mapping) else (
                v if k in out else {"weights": v, "activations": v})
        return out

    def _ratio_dict(self, base: Any) -> dict[str, float]:
        """``base`` (a ratio or a dict) as one ratio per prunable layer of the module."""
        if isinstance(base, Mapping):
            return {str(k): float(v) for k, v in base.items()}
        from ..prune.channels import prunable_layers

        names = prunable_layers(self.module) if hasattr(self.module, "named_modules") else []
        return {n: float(base) for n in names}

    def _assemble_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Search parameters in estimator terms: ``n_w_bits`` / ``n_a_bits`` /
        ``n_input_bits`` (and ``n_w_bits.<layer>`` / ``n_a_bits.<layer>``) merged into
        this estimator's ``n_bits``; ``pruning_ratio.<layer>`` into a per-layer
        ``pruning_ratio`` dict (over the sampled or the estimator's global ratio)."""
        out: dict[str, Any] = {}
        bits, changed = self._bits_dict(), False
        layer_ratios: dict[str, float] = {}
        for key, value in params.items():
            base, _, layer = key.partition(".")
            if not self._is_search_name(key):
                out[key] = value
            elif base == PRUNE_PARAM:
                layer_ratios[layer] = float(value)
            else:
                what, changed = BIT_PARAMS[base], True
                if layer:
                    bits.setdefault(layer, {})[what] = int(value)
                else:
                    bits[what] = int(value)
        if changed:
            out["n_bits"] = bits
        if layer_ratios:
            ratios = self._ratio_dict(out.get(PRUNE_PARAM, self.pruning_ratio))
            ratios.update(layer_ratios)
            out[PRUNE_PARAM] = dict(sorted(ratios.items()))
        return out

    def _float_reference(self) -> FloatReference | None:
        """The float model as a scorer (the search's reference score); None for a module
        factory (no trained float model: the search falls back to scikit-learn's MLP)."""
        import torch

        if not isinstance(self.module, torch.nn.Module):
            return None
        return FloatReference(self.module, self._classifier)


class FloatReference(BaseEstimator):
    """The float model scored like the estimators (the search's reference; ``fit`` only
    records the classes: the model is the user's, never retrained)."""

    def __init__(self, module: Any = None, classifier: bool = True) -> None:
        self.module = module
        self.classifier = classifier

    def _out(self, X: Any) -> np.ndarray:
        import torch

        m = copy.deepcopy(self.module).float().eval()
        with torch.no_grad():
            return np.asarray(m(torch.as_tensor(np.asarray(X), dtype=torch.float32)).numpy())

    def fit(self, X: Any, y: Any) -> FloatReference:
        if self.classifier:
            self.classes_ = np.unique(y)
        return self

    def __sklearn_tags__(self) -> Any:  # a search's scorer (scoring=) reads the task
        tags = super().__sklearn_tags__()
        tags.estimator_type = "classifier" if self.classifier else "regressor"
        return tags

    def predict(self, X: Any) -> np.ndarray:
        out = self._out(X)
        flat = out.reshape(len(out), -1)
        if self.classifier:
            return np.asarray(self.classes_[flat.argmax(1)])
        return flat[:, 0] if flat.shape[1] == 1 else flat

    def predict_proba(self, X: Any) -> np.ndarray:
        if not self.classifier:
            raise AttributeError("predict_proba: the float model is a regressor")
        from .base import softmax

        return softmax(self._out(X).reshape(len(X), -1).astype(np.float64))

    def score(self, X: Any, y: Any) -> float:
        from sklearn.metrics import accuracy_score, r2_score

        if self.classifier:
            return float(accuracy_score(y, self.predict(X)))
        out = self._out(X)
        y = np.asarray(y)
        return float(r2_score(y.reshape(len(y), -1), out.reshape(len(out), -1)))

"""Quantization-aware fine-tuning of any supported float torch model, as estimators.

:class:`QuantizedTorchClassifier` and :class:`QuantizedTorchRegressor` take a trained
float ``torch.nn.Module``.  ``fit(X, y)`` deep-copies it (keeping its weights),
optionally prunes output channels (:func:`latentopt.prune.channels.prune_channels`),
converts it to a brevitas QAT network by layer swapping
(:func:`latentopt.nn.qat_convert.convert_to_qat`), initialises its scales from data,
fine-tunes it on ``(X, y)`` with early stopping (:func:`latentopt.nn.train.train_module`)
and imports it into an IR circuit (:mod:`latentopt.nn.brevitas_import`).  Inference,
``compile``, ``score`` and the rest are the API every estimator shares
(:class:`~latentopt.sklearn.base.QuantizedEstimatorBase`).  The user never writes
brevitas code, and :class:`~latentopt.search.LatencySearch` searches their bits and
pruning (:data:`~latentopt.search.space.TORCH_SPACE`).

Examples
--------
>>> import numpy as np, torch
>>> from torch import nn
>>> from sklearn.datasets import load_digits
>>> X, y = load_digits(return_X_y=True)
>>> X = (X / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
>>> clf = QuantizedTorchClassifier(cnn, n_bits=4, max_epochs=3, lr=1e-2, random_state=0,
...                                verbose=0).fit(X[:600], y[:600])
>>> clf.score(X[600:900], y[600:900]) > 0.8
True
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from .base import QuantizedEstimatorBase, softmax
from .torch_model import flat_samples

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["QuantizedTorchClassifier", "QuantizedTorchRegressor"]

#: Rows of training data kept to calibrate scales and FHE compilation.
N_CALIBRATION = 512
#: Search pseudo-parameters that build ``n_bits`` (``"n_w_bits.conv1"``: one layer).
BIT_PARAMS = {"n_input_bits": "inputs", "n_w_bits": "weights", "n_a_bits": "activations"}
IMPORTANCES = ("l1", "l2", "random")

_DOC = """
    Parameters
    ----------
    module : torch.nn.Module
        The trained float model (supported operations:
        :data:`latentopt.nn.fx_import.SUPPORTED`).  Never modified: ``fit`` works on a
        deep copy, so its trained weights are the starting point of every fit (and of
        every trial of a search).
    n_bits : int or dict, default=4
        Bits of inputs, weights and activations: one int, or a dict as in
        :func:`~latentopt.compile_torch_model` (keys ``"inputs"``, ``"weights"``,
        ``"activations"``, and layer names mapping to an int or to ``{"weights": ..,
        "activations": ..}``; a layer's ``"activations"`` are those of the quantizer
        after it).  Missing global keys take 8.
    pruning_ratio : float in [0, 1) or dict, default=0.0
        Share of output channels (convolutions) and hidden units (linear layers) removed
        before fine-tuning (torch-pruning), or a dict from layer name to ratio.  The
        layers producing the model's output and the model's inputs are never pruned.
    prune_importance : {"l1", "l2", "random"}, default="l1"
        How channels are ranked for pruning.
    calibrate : bool, default=True
        Initialise the activation scales from the training data (a post-training
        calibration pass) before fine-tuning; otherwise from the first training steps.
    max_epochs : int, default=10
        Fine-tuning epochs (0: calibration only, no training).
    lr : float, default=1e-3
        Adam learning rate (cosine decay).
    batch_size : int, default=64
    weight_decay : float, default=0.0
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping.
    early_stopping : bool, default=True
        Keep the weights of the best validation epoch; stop after ``patience`` epochs
        without improvement.
    patience : int, default=5
    random_state : int, RandomState or None, default=None
        Seeds pruning, batch order and the validation split.
    verbose : int, default=1
        0 is silent; >= 1 shows a progress bar per fine-tuning (and FHE work).
    fhe_mode : {"disable", "simulate", "execute"}, default="disable"
        Default of ``predict(X, fhe=None)``.

    Attributes
    ----------
    input_shape_, output_shape_ : tuple of int
        Shapes of one sample, without the batch axis.
    n_features_in_ : int
        Values per sample (``prod(input_shape_)``); ``X`` may be given flat too.
    float_module_ : torch.nn.Module
        The float model after pruning (before QAT).
    qat_module_ : torch.fx.GraphModule
        The fine-tuned brevitas network (pickled as its state dict).
    qat_report_ : dict
        Bits per layer and quantizer, inserted quantizers, folded batch norms, pruning.
    history_ : latentopt.nn.train.TrainingHistory or None
        Fine-tuning losses per epoch (None with ``max_epochs=0``).
    import_report_ : dict
        What the brevitas importer read.
    circuit_, calibration_set_, rounded_circuit_, fhe_circuit_, fhe_report_,
    compile_options_, compile_inputset_, inner_search_
        As for every estimator (see :class:`~latentopt.QuantizedMLPClassifier`).
"""


class _TorchQATBase(QuantizedEstimatorBase):
    """Hyper-parameters, fit and pickling shared by the two estimators."""

    input_shape_: tuple[int, ...]
    output_shape_: tuple[int, ...]
    _classifier = False

    def __init__(self, module: Any, n_bits: int | Mapping[str, Any] = 4, *,
                 pruning_ratio: float | Mapping[str, float] = 0.0,
                 prune_importance: str = "l1", calibrate: bool = True, max_epochs: int = 10,
                 lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0,
                 validation_fraction: float = 0.1, early_stopping: bool = True,
                 patience: int = 5, random_state: Any = None, verbose: int = 1,
                 fhe_mode: str = "disable") -> None:
        self.module = module
        self.n_bits = n_bits
        self.pruning_ratio = pruning_ratio
        self.prune_importance = prune_importance
        self.calibrate = calibrate
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.random_state = random_state
        self.verbose = verbose
        self.fhe_mode = fhe_mode

    # ------------------------------------------------------------- validation
    def _check_params(self) -> Any:
        """Validate every hyper-parameter (before any training); the parsed bits."""
        import torch

        from ..nn.fx_import import read_graph
        from ..nn.ptq import parse_bits
        from .base import FHE_MODES

        if not isinstance(self.module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(self.module).__name__}")
        _, ops, _ = read_graph(self.module)
        bits = parse_bits(dict(self.n_bits) if isinstance(self.n_bits, Mapping) else self.n_bits,
                          ops)
        ratios = (self.pruning_ratio.values() if isinstance(self.pruning_ratio, Mapping)
                  else [self.pruning_ratio])
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise ValueError(f"pruning_ratio must be in [0, 1), got {self.pruning_ratio!r}")
        if self.prune_importance not in IMPORTANCES:
            raise ValueError(f"prune_importance must be one of {IMPORTANCES}, got "
                             f"{self.prune_importance!r}")
        for name, lo in (("max_epochs", 0), ("batch_size", 1), ("patience", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    v > 0 if name == "lr" else v >= 0):
                raise ValueError(f"{name} must be a number {'> 0' if name == 'lr' else '>= 0'}"
                                 f", got {v!r}")
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got "
                             f"{self.validation_fraction!r}")
        if self.fhe_mode not in FHE_MODES:
            raise ValueError(f"fhe_mode must be one of {FHE_MODES}, got {self.fhe_mode!r}")
        return bits

    def _check_X_fit(self, X: Any) -> np.ndarray:
        if hasattr(X, "detach"):
            X = X.detach().cpu().numpy()
        X = np.asarray(X)
        if X.dtype.kind not in "fiub":
            raise ValueError(f"X must be numeric, got dtype {X.dtype}")
        if X.ndim < 2 or len(X) < 2:
            raise ValueError(f"X must be a batch (n_samples >= 2, ...), got shape {X.shape}")
        X = X.astype(np.float32)
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or infinity")
        return X

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        check_is_fitted(self, "circuit_")
        return flat_samples(X, tuple(self.input_shape_), int(self.n_features_in_))

    # ------------------------------------------------------------ search hooks
    def _default_search_space(self) -> dict[str, Any]:
        from ..search.space import TORCH_SPACE

        return dict(TORCH_SPACE)

    @staticmethod
    def _is_search_name(name: str) -> bool:
        """Whether ``name`` is a search pseudo-parameter (builds ``n_bits``)."""
        base, _, layer = name.partition(".")
        return base in BIT_PARAMS and not (base == "n_input_bits" and layer)

    def _bits_dict(self) -> dict[str, Any]:
        if not isinstance(self.n_bits, Mapping):
            b = int(self.n_bits)
            return {"inputs": b, "weights": b, "activations": b}
        out: dict[str, Any] = {"inputs": 8, "weights": 8, "activations": 8}
        for k, v in self.n_bits.items():
            out[k] = dict(v) if isinstance(v, Mapping) else (
                v if k in out else {"weights": v, "activations": v})
        return out

    def _assemble_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Search parameters in estimator terms: ``n_w_bits`` / ``n_a_bits`` /
        ``n_input_bits`` (and ``n_w_bits.<layer>`` / ``n_a_bits.<layer>``) merged into
        this estimator's ``n_bits``."""
        out: dict[str, Any] = {}
        bits, changed = self._bits_dict(), False
        for key, value in params.items():
            base, _, layer = key.partition(".")
            if not self._is_search_name(key):
                out[key] = value
                continue
            what, changed = BIT_PARAMS[base], True
            if layer:
                bits.setdefault(layer, {})[what] = int(value)
            else:
                bits[what] = int(value)
        if changed:
            out["n_bits"] = bits
        return out

    def _float_reference(self) -> _FloatReference:
        """The float model as a scorer (the search's reference score)."""
        return _FloatReference(self.module, self._classifier)

    # -------------------------------------------------------------------- fit
    def _fit(self, X: np.ndarray, y: np.ndarray, n_outputs: int) -> None:
        import torch

        from ..backends.integer import IntegerBackend
        from ..nn.brevitas_import import import_brevitas
        from ..nn.qat_convert import calibrate_qat, convert_to_qat
        from ..nn.train import seeded, torch_threads, train_module
        from .training import MLPTrainingMixin

        bits = self._check_params()
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        model = copy.deepcopy(self.module).float().eval()
        with torch.no_grad():
            out = model(torch.as_tensor(X[:2]))
        if int(np.prod(out.shape[1:])) != n_outputs:
            raise ValueError(f"the module has {int(np.prod(out.shape[1:]))} outputs, the "
                             f"targets need {n_outputs}")
        data = MLPTrainingMixin._split(self, X, y, self._classifier, seed)  # type: ignore[arg-type]
        prune_report = None
        ratio = self.pruning_ratio
        if isinstance(ratio, Mapping) or float(ratio) > 0:
            from ..prune.channels import prune_channels

            prune_report = prune_channels(model, torch.as_tensor(X[:2]), ratio,
                                          importance=self.prune_importance, seed=seed)
        self.float_module_ = model
        self.input_signed_ = bool(X.min() < 0)
        with seeded(seed), torch_threads(1):
            qat, info = convert_to_qat(model, bits, input_signed=self.input_signed_)
            idx = np.sort(rng.permutation(len(data[0]))[:N_CALIBRATION])
            if self.calibrate:
                calibrate_qat(qat, data[0][idx])
            self.history_ = None
            if self.max_epochs > 0:
                X_tr, y_tr, X_val, y_val, _ = data
                self.history_ = train_module(
                    qat, X_tr, y_tr, self._loss, X_val=X_val, y_val=y_val,
                    score_fn=self._score_fn, max_epochs=int(self.max_epochs), lr=float(self.lr),
                    weight_decay=float(self.weight_decay), batch_size=int(self.batch_size),
                    patience=int(self.patience), seed=seed, verbose=int(self.verbose),
                    description=f"{type(self).__name__} QAT")
            qat.eval()
            X_cal = X[np.sort(rng.permutation(len(X))[:N_CALIBRATION])]
            circuit, report = import_brevitas(qat, X_cal)
        self.bits_ = bits
        self.qat_module_ = qat
        self.qat_report_ = dict(info, n_bits=bits.to_dict(), pruning=prune_report)
        self.import_report_ = report
        self.n_iter_ = 0 if self.history_ is None else self.history_.n_epochs
        self.input_shape_ = tuple(int(s) for s in X.shape[1:])
        self.output_shape_ = tuple(int(s) for s in circuit.metadata["output_shape"])
        self.n_features_in_ = int(np.prod(self.input_shape_))
        flat = X_cal.reshape(len(X_cal), -1).astype(np.float64)
        self.circuit_ = IntegerBackend(circuit).calibrate(flat)
        self.calibration_set_ = flat
        self.__dict__.pop("_backend", None)
        self.__dict__.pop("_runtime", None)
        self._forget_compilation()

    # --------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        qat = state.pop("qat_module_", None)
        if qat is not None:  # brevitas modules do not pickle: their state dict does
            import torch

            buf = io.BytesIO()
            torch.save(qat.state_dict(), buf)
            state["_qat_blob"] = buf.getvalue()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob = state.pop("_qat_blob", None)
        super().__setstate__(state)
        if blob is not None:
            import torch

            from ..nn.qat_convert import rebuild

            weights = torch.load(io.BytesIO(blob), weights_only=True)
            self.qat_module_ = rebuild(self.float_module_, self.bits_, self.input_signed_,
                                       weights)


class _FloatReference(BaseEstimator):
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

    def fit(self, X: Any, y: Any) -> _FloatReference:
        if self.classifier:
            self.classes_ = np.unique(y)
        return self

    def score(self, X: Any, y: Any) -> float:
        from sklearn.metrics import accuracy_score, r2_score

        out = self._out(X)
        if self.classifier:
            return float(accuracy_score(y, self.classes_[out.reshape(len(out), -1).argmax(1)]))
        y = np.asarray(y)
        return float(r2_score(y.reshape(len(y), -1), out.reshape(len(out), -1)))


class QuantizedTorchClassifier(ClassifierMixin, _TorchQATBase):
    __doc__ = ("Classifier: quantization-aware fine-tuning of a float torch model.\n\n"
               "    The module's outputs are logits, one per class of ``np.unique(y)`` "
               "(sorted).\n" + _DOC + """
    classes_ : ndarray of shape (n_classes,)
        Class labels seen at fit.
""")

    _classifier = True
    score = QuantizedEstimatorBase.score

    @staticmethod
    def _loss(out: Any, target: Any) -> Any:
        import torch.nn.functional as F

        return F.cross_entropy(out.reshape(len(out), -1), target)

    @staticmethod
    def _score_fn(out: Any, target: Any) -> float:
        return float((out.reshape(len(out), -1).argmax(1) == target).float().mean().item())

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Self:
        """Fine-tune a copy of ``module`` on ``X`` (n_samples, *input_shape) and labels."""
        if y is None:
            raise ValueError("QuantizedTorchClassifier.fit needs labels y")
        X_arr = self._check_X_fit(X)
        y_arr = column_or_1d(np.asarray(y), warn=True)
        if len(y_arr) != len(X_arr):
            raise ValueError(f"X has {len(X_arr)} samples, y {len(y_arr)}")
        check_classification_targets(y_arr)
        self.classes_, y_enc = np.unique(y_arr, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError("QuantizedTorchClassifier needs at least 2 classes in y")
        self._fit(X_arr, y_enc.astype(np.int64), len(self.classes_))
        return self

    def predict(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Predicted class labels; ``fhe`` overrides ``fhe_mode``."""
        return np.asarray(self.classes_[np.argmax(self._raw_output(X, fhe), axis=1)])

    def predict_proba(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Softmax of the dequantized logits."""
        return softmax(self._raw_output(X, fhe))


class QuantizedTorchRegressor(RegressorMixin, _TorchQATBase):
    __doc__ = ("Regressor: quantization-aware fine-tuning of a float torch model.\n\n"
               "    The module outputs the targets (in their units); mean squared error.\n"
               + _DOC)

    score = QuantizedEstimatorBase.score

    @staticmethod
    def _loss(out: Any, target: Any) -> Any:
        import torch.nn.functional as F

        return F.mse_loss(out.reshape(target.shape), target)

    @staticmethod
    def _score_fn(out: Any, target: Any) -> float:
        return -float(((out.reshape(target.shape) - target) ** 2).mean().item())

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Self:
        """Fine-tune a copy of ``module`` on ``X`` and real targets ``y`` (1-D or 2-D)."""
        if y is None:
            raise ValueError("QuantizedTorchRegressor.fit needs targets y")
        X_arr = self._check_X_fit(X)
        y_arr = np.asarray(y, dtype=np.float32)
        if len(y_arr) != len(X_arr) or y_arr.ndim not in (1, 2):
            raise ValueError(f"y must have shape (n_samples,) or (n_samples, n_outputs) "
                             f"with n_samples={len(X_arr)}, got {y_arr.shape}")
        if not np.all(np.isfinite(y_arr)):
            raise ValueError("y contains NaN or infinity")
        self.y_ndim_ = int(y_arr.ndim)
        y2 = y_arr.reshape(len(y_arr), -1)
        self.n_outputs_ = int(y2.shape[1])
        self._fit(X_arr, y2, self.n_outputs_)
        return self

    def predict(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Predicted targets; ``fhe`` overrides ``fhe_mode``."""
        out = self._raw_output(X, fhe)
        return out.ravel() if self.y_ndim_ == 1 else out

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
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y, validate_data

from .atomic import restored_on_error
from .base import QuantizedEstimatorBase, softmax
from .distillation import DistillationMixin
from .targets import fold_target_scaling, standardise_head, target_scaling, trained_scaling
from .torch_model import flat_samples
from .torch_qat_search import TorchSearchHooks
from .training import N_CALIBRATION  # the same calibration rows as the MLP estimators

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["QuantizedTorchClassifier", "QuantizedTorchRegressor"]

_DOC = """
    Parameters
    ----------
    module : torch.nn.Module or callable
        The trained float model (supported operations:
        :data:`latentopt.nn.fx_import.SUPPORTED`).  Never modified: ``fit`` works on a
        deep copy, so its trained weights are the starting point of every fit (and of
        every trial of a search).  Or a factory ``module(input_shape, n_outputs)``
        returning a fresh float model, built at fit time for the data's sample shape and
        the number of classes / targets, seeded by ``random_state`` and trained from its
        initial weights (e.g. :class:`latentopt.nn.factories.MLPFactory`).
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
        Layers sharing their output channels (a residual addition, a depthwise
        convolution) are pruned together, at the largest ratio given to any of them
        (with a warning where they differ or one is not named).
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
    early_stopping : bool, default=False
        Hold out ``validation_fraction``, keep the weights of the best validation epoch
        and stop after ``patience`` epochs without improvement.  Off by default, as for
        the MLP estimators: fine-tuning then runs the whole cosine schedule on every
        row.  Measured on real MNIST (2,000 digits, 30 epochs, rounding 6): the issue's
        CNN pruned by half, 6/5/6 bits, 0.938-0.943 without early stopping against
        0.933-0.937 with it (patience 5); 0.946 against 0.937-0.941 with
        ``distill_alpha=0.5``.
    patience : int, default=5
    distill_alpha : float in [0, 1], default=0.0
        Knowledge distillation from ``module`` itself: the weight of the float model's
        temperature-softened outputs in the fine-tuning loss (classification: KL to its
        softmax; regression: squared error to its outputs), ``1 - distill_alpha`` that of
        the labels (:func:`latentopt.nn.distill.distillation_loss`).  The teacher is the
        unpruned float model, so pruned and low-bit students learn its outputs on every
        training row, not only the labels.  Needs a trained ``module`` (not a factory).
        It helps when the float model is better than what fine-tuning on the labels
        reaches (real MNIST, the CNN above: +0.5 point at ``distill_alpha=0.5``) and
        hurts when it is not (an MLP fine-tuned on new digits beat its float model by 2
        points; distilled, by 1): the default search space tries both, 0 and 0.5.
    distill_temperature : float > 0, default=2.0
        Softening temperature of the classification distillation term.
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


def _ndim(X: Any) -> int:
    """Dimensions of array-like ``X`` (without numpy's array function protocol)."""
    nd = getattr(X, "ndim", None)
    return int(nd) if nd is not None else int(np.asarray(X).ndim)


class _TorchQATBase(TorchSearchHooks, DistillationMixin, QuantizedEstimatorBase):
    """Hyper-parameters, fit and pickling shared by the two estimators."""

    input_shape_: tuple[int, ...]
    output_shape_: tuple[int, ...]
    _classifier = False

    def __init__(self, module: Any, n_bits: int | Mapping[str, Any] = 4, *,
                 pruning_ratio: float | Mapping[str, float] = 0.0,
                 prune_importance: str = "l1", calibrate: bool = True, max_epochs: int = 10,
                 lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0,
                 validation_fraction: float = 0.1, early_stopping: bool = False,
                 patience: int = 5, distill_alpha: float = 0.0,
                 distill_temperature: float = 2.0, random_state: Any = None,
                 verbose: int = 1, fhe_mode: str = "disable") -> None:
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
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        self.random_state = random_state
        self.verbose = verbose
        self.fhe_mode = fhe_mode

    # ------------------------------------------------------------- validation
    def _check_params(self, model: Any = None) -> Any:
        """Validate every hyper-parameter (before any training); the bits parsed against
        ``model`` (default: ``module``; a factory's bits are only parsed at fit, against
        the module it builds: None before)."""
        from .validation import check_torch_qat_params

        return check_torch_qat_params(self, model)

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """``X`` (flat rows, or image-shaped batches) as float32 and ``y`` checked by
        scikit-learn (feature names, sparse and complex input, sample counts)."""
        if hasattr(X, "detach"):  # torch tensor
            X = X.detach().cpu().numpy()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             f"y is None")
        kw = dict(dtype=np.float32, ensure_min_samples=2, ensure_all_finite=True,
                  multi_output=not self._classifier, y_numeric=not self._classifier)
        if _ndim(X) > 2:  # image-shaped: no feature names, one sample per leading index
            self.__dict__.pop("feature_names_in_", None)
            X_arr, y_arr = check_X_y(X, y, allow_nd=True, **kw)  # type: ignore[arg-type]
        else:
            X_arr, y_arr = validate_data(self, X, y, **kw)  # type: ignore[arg-type]
        return np.asarray(X_arr, dtype=np.float32), np.asarray(y_arr)

    def _validate_X(self, X: Any, reset: bool) -> np.ndarray:
        check_is_fitted(self, "circuit_")
        if hasattr(X, "detach"):  # torch tensor
            X = X.detach().cpu().numpy()
        if _ndim(X) > 2:
            X = check_array(X, allow_nd=True, dtype=np.float64, ensure_all_finite=True)
        else:
            X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite=True)
        return flat_samples(X, tuple(self.input_shape_), int(self.n_features_in_))

    # -------------------------------------------------------------------- fit
    def _output_circuit(self, circuit: Any) -> Any:
        """Hook: the imported circuit with outputs in the user's units (the regressor
        folds its target scaling here)."""
        return circuit

    def _make_module(self, input_shape: tuple[int, ...], n_outputs: int, seed: int) -> Any:
        """A float copy of ``module``, or the module its factory builds (seeded)."""
        import torch

        from ..nn.train import seeded

        if isinstance(self.module, torch.nn.Module):
            return copy.deepcopy(self.module).float().eval()
        with seeded(seed):
            model = self.module(input_shape, n_outputs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"the module factory returned {type(model).__name__}, not a "
                            f"torch.nn.Module")
        return model.float().eval()

    def _training_module(self, model: Any) -> Any:
        """Hook: the float model QAT starts from (the regressor rescales its head)."""
        return model

    def _fit(self, X: np.ndarray, y: np.ndarray, n_outputs: int) -> None:
        import torch

        from ..backends.integer import IntegerBackend
        from ..nn.brevitas_import import import_brevitas
        from ..nn.fx_values import run_on_samples
        from ..nn.mlp import signed_inputs
        from ..nn.qat_convert import calibrate_qat, convert_to_qat
        from ..nn.train import seeded, torch_threads, train_module
        from .training import MLPTrainingMixin

        self._check_params()
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        model = self._make_module(tuple(int(s) for s in X.shape[1:]), n_outputs, seed)
        bits = self._check_params(model)
        out = run_on_samples(model, X)  # a clear error for samples of another shape
        if int(np.prod(out.shape[1:])) != n_outputs:
            raise ValueError(f"the module has {int(np.prod(out.shape[1:]))} outputs, the "
                             f"targets need {n_outputs}")
        # distillation's teacher: the float model, before pruning
        soft = self._teacher_outputs(model, X) if self.distill_alpha > 0 else None
        data = MLPTrainingMixin._split(self, X, y, self._classifier, seed,  # type: ignore[arg-type]
                                       soft=soft)
        prune_report = None
        ratio = self.pruning_ratio
        if isinstance(ratio, Mapping) or float(ratio) > 0:
            from ..prune.channels import prune_channels

            prune_report = prune_channels(model, torch.as_tensor(X[:2]), ratio,
                                          importance=self.prune_importance, seed=seed,
                                          coupled="largest")
        self.float_module_ = model
        model = self._training_module(model)  # the regressor's standardised head
        self.input_signed_ = signed_inputs(X)
        with seeded(seed), torch_threads(1):
            qat, info = convert_to_qat(model, bits, input_signed=self.input_signed_,
                                       example=X[:2])
            idx = np.sort(rng.permutation(len(data[0]))[:N_CALIBRATION])
            if self.calibrate:
                calibrate_qat(qat, data[0][idx])
            self.history_ = None
            if self.max_epochs > 0:
                X_tr, y_tr, X_val, y_val, soft_tr = data
                self.history_ = train_module(
                    qat, X_tr, y_tr, self._loss, X_val=X_val, y_val=y_val,
                    score_fn=self._score_fn, max_epochs=int(self.max_epochs), lr=float(self.lr),
                    weight_decay=float(self.weight_decay), batch_size=int(self.batch_size),
                    patience=int(self.patience), seed=seed, verbose=int(self.verbose),
                    description=f"{type(self).__name__} QAT", soft_targets=soft_tr,
                    soft_loss_fn=None if soft_tr is None else self._soft_loss())
            qat.eval()
            X_cal = X[np.sort(rng.permutation(len(X))[:N_CALIBRATION])]
            circuit, report = import_brevitas(qat, X_cal)
        circuit = self._output_circuit(circuit)
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
        self._exact_runtime()  # built now: predict must not add to the estimator's state

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
        state.setdefault("distill_alpha", 0.0)  # pickled before distillation existed
        state.setdefault("distill_temperature", 2.0)
        super().__setstate__(state)
        if blob is not None:
            import torch

            from ..nn.qat_convert import rebuild

            weights = torch.load(io.BytesIO(blob), weights_only=True)
            # the module QAT trained (a regressor's head gains a bias when standardised)
            self.qat_module_ = rebuild(self._training_module(self.float_module_), self.bits_,
                                       self.input_signed_, weights, tuple(self.input_shape_))


def _rows(out: Any) -> Any:
    """The network's output as (samples, values).  A model whose output is a quantized
    sum returns a brevitas ``QuantTensor``, whose ``len()`` is its number of fields (6):
    ``reshape(len(out), -1)`` failed on two summed heads."""
    out = getattr(out, "value", out)
    return out.reshape(out.shape[0], -1)


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

        return F.cross_entropy(_rows(out), target)

    @staticmethod
    def _score_fn(out: Any, target: Any) -> float:
        from ..nn.train import first_argmax

        return float((first_argmax(_rows(out)) == target).float().mean().item())

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> Self:
        """Fine-tune a copy of ``module`` on ``X`` (n_samples, *input_shape) and labels."""
        with restored_on_error(self):
            X_arr, y_arr = self._validate_fit(X, y)
            check_classification_targets(y_arr)
            self.classes_, y_enc = np.unique(y_arr, return_inverse=True)
            if len(self.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in "
                                 f"the data, but the data contains only one class: "
                                 f"{self.classes_[0]!r}")
            self._fit(X_arr, y_enc.astype(np.int64), len(self.classes_))
            return self

    def predict(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Predicted class labels; ``fhe`` overrides ``fhe_mode``."""
        out = self._raw_output(X, fhe)
        return np.asarray(self.classes_[np.argmax(out, axis=1)])

    def predict_proba(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Softmax of the dequantized logits."""
        return softmax(self._raw_output(X, fhe))


class QuantizedTorchRegressor(RegressorMixin, _TorchQATBase):
    __doc__ = ("Regressor: quantization-aware fine-tuning of a float torch model.\n\n"
               "    The module outputs the targets (in their units); mean squared error.  A\n"
               "    factory's fresh module learns standardised targets instead (the scaling\n"
               "    is folded into the circuit's output: every backend returns target units).\n"
               + _DOC + """
    y_mean_, y_scale_ : ndarray of shape (n_outputs,)
        Target standardisation, folded into the circuit's output.  A trained ``module``
        whose output layer is an ``nn.Linear`` learns standardised targets too (that
        layer rescaled on a copy); another trained module keeps its units (0 and 1).
    target_head_ : str or None
        The rescaled output layer of a trained ``module`` (None: not rescaled).
""")

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
        with restored_on_error(self):
            X_arr, y_arr = self._validate_fit(X, y)
            self.y_ndim_ = int(y_arr.ndim)
            # float64: in float32 targets offset by 1e8 all rounded to one value
            y2 = np.asarray(y_arr, dtype=np.float64).reshape(len(y_arr), -1)
            self.n_outputs_ = int(y2.shape[1])
            import torch

            if isinstance(self.module, torch.nn.Module):  # trained: through its head, if any
                self.target_head_, self.y_mean_, self.y_scale_ = trained_scaling(self.module, y2)
            else:  # a factory's fresh model
                self.target_head_ = None
                self.y_mean_, self.y_scale_ = target_scaling(y2)
            y_std = ((y2 - self.y_mean_) / self.y_scale_).astype(np.float32)
            self._fit(X_arr, y_std, self.n_outputs_)
            return self

    def _training_module(self, model: Any) -> Any:
        """A trained model's copy with its Linear head standardised
        (:func:`~latentopt.sklearn.targets.standardise_head`)."""
        head = getattr(self, "target_head_", None)
        if head is None:
            return model
        return standardise_head(model, head, self.y_mean_, self.y_scale_)

    def _output_circuit(self, circuit: Any) -> Any:
        return fold_target_scaling(circuit, self.y_mean_, self.y_scale_)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X: ArrayLike, fhe: str | None = None) -> np.ndarray:
        """Predicted targets; ``fhe`` overrides ``fhe_mode``."""
        out = self._raw_output(X, fhe)
        return out.ravel() if self.y_ndim_ == 1 else out

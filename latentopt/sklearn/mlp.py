"""Quantization-aware MLP estimators: ``QuantizedMLPClassifier`` and ``QuantizedMLPRegressor``.

Inputs should be standardised by the user, e.g. with a ``StandardScaler`` in a
``Pipeline``: the input quantizer has a single learned scale for all features.

Examples
--------
>>> from sklearn.datasets import load_wine
>>> from sklearn.pipeline import make_pipeline
>>> from sklearn.preprocessing import StandardScaler
>>> X, y = load_wine(return_X_y=True)
>>> clf = make_pipeline(StandardScaler(), QuantizedMLPClassifier(
...     hidden_layer_sizes=(16,), max_epochs=50, lr=1e-2, random_state=0, verbose=0))
>>> clf.fit(X, y).score(X, y) > 0.9
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .base import QuantizedEstimatorBase

__all__ = ["QuantizedMLPClassifier", "QuantizedMLPRegressor"]

_COMMON_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(64,)
        Width of each hidden layer.  Every hidden neuron is one table lookup (one
        programmable bootstrapping under FHE).
    n_w_bits : int or sequence of int, default=3
        Weight bits, scalar or one per linear layer (``len(hidden_layer_sizes) + 1``).
    n_a_bits : int or sequence of int, default=3
        Activation (table-lookup output) bits, scalar or one per hidden layer.
    n_input_bits : int, default=6
        Bits of the input quantizer.  Inputs are quantized by the client, so this only
        widens the first accumulator (which rounding can narrow again).
    activation : {"relu", "sigmoid", "tanh", "gelu", "silu", ...}, default="relu"
        Hidden activation, fused with requantization into one table lookup.
    power_of_two_scales : bool, default=False
        Restrict quantization scales to powers of two (requantization becomes a shift).
    max_epochs : int, default=200
        Maximum number of training epochs.
    lr : float, default=1e-3
        Adam learning rate (cosine decay over ``max_epochs``).
    batch_size : int, default=64
        Mini-batch size.
    weight_decay : float, default=0.0
        Adam weight decay.
    validation_fraction : float, default=0.1
        Fraction of the training data held out for early stopping.
    early_stopping : bool, default=True
        Stop when the validation metric has not improved for ``patience`` epochs and
        restore the best weights.
    patience : int, default=30
        Epochs without improvement before stopping.
    pruning_ratio : float in [0, 1), default=0.0
        After training, remove this fraction of every hidden layer's neurons
        (structured pruning with torch-pruning), then fine-tune.  Each removed neuron is
        one table lookup less.
    n_accum_bits : int, optional
        After training (and structured pruning), mask the smallest weights of every
        neuron until every accumulator provably fits in this many bits (IR worst-case
        analysis), then fine-tune with the mask fixed.
    prune_importance : {"l1", "l2", "taylor", "random"}, default="l1"
        How neurons are ranked for structured pruning.
    fine_tune_epochs : int, default=20
        Fine-tuning epochs after each pruning step (0: none).
    random_state : int, RandomState or None, default=None
        Seeds weight initialisation, batch order and the validation split.
    verbose : int, default=1
        0 is silent; >= 1 shows progress bars for training (and FHE work).
    fhe_mode : {"disable", "simulate", "execute"}, default="disable"
        Default of ``predict(X, fhe=None)``: integer backend, FHE simulation or real
        encrypted execution (the last two need :meth:`compile`).
    teacher : estimator, torch.nn.Module or array-like, optional
        Knowledge distillation (:mod:`latentopt.nn.distill`): train on a mix of the labels
        and this teacher's outputs (classification: temperature-softened probabilities;
        regression: its predictions).  A fitted scikit-learn estimator is used as is; an
        unfitted one is cloned and the clone fitted on ``(X, y)`` inside :meth:`fit`
        (``teacher_``).  As ``clone`` and ``GridSearchCV`` clone nested estimators, a
        clone of a student with a fitted teacher refits the teacher on its own
        training data (the scikit-learn way, as in ``StackingClassifier``).  A torch
        module (outputs: logits, or values) and an array of outputs (one row per sample
        of the ``X`` given to ``fit``) are used as they are.  Fine-tuning after pruning
        distils too.
    distill_temperature : float, default=2.0
        Softening temperature of teacher and student probabilities (classification).
    distill_alpha : float in [0, 1], default=0.5
        Weight of the teacher's (soft) loss; ``1 - distill_alpha`` weighs the labels.
        0 trains on the labels alone, 1 on the teacher alone.
"""


class _QuantizedMLPBase(QuantizedEstimatorBase):
    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (64,),
        n_w_bits: int | Sequence[int] = 3,
        n_a_bits: int | Sequence[int] = 3,
        n_input_bits: int = 6,
        activation: str = "relu",
        power_of_two_scales: bool = False,
        max_epochs: int = 200,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        patience: int = 30,
        pruning_ratio: float = 0.0,
        n_accum_bits: int | None = None,
        prune_importance: str = "l1",
        fine_tune_epochs: int = 20,
        random_state: Any = None,
        verbose: int = 1,
        fhe_mode: str = "disable",
        teacher: Any = None,
        distill_temperature: float = 2.0,
        distill_alpha: float = 0.5,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_w_bits = n_w_bits
        self.n_a_bits = n_a_bits
        self.n_input_bits = n_input_bits
        self.activation = activation
        self.power_of_two_scales = power_of_two_scales
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.pruning_ratio = pruning_ratio
        self.n_accum_bits = n_accum_bits
        self.prune_importance = prune_importance
        self.fine_tune_epochs = fine_tune_epochs
        self.random_state = random_state
        self.verbose = verbose
        self.fhe_mode = fhe_mode
        self.teacher = teacher
        self.distill_temperature = distill_temperature
        self.distill_alpha = distill_alpha

    # ------------------------------------------------------------- validation
    def _check_params(self) -> None:
        hidden = self.hidden_layer_sizes
        if isinstance(hidden, (int, np.integer)):
            hidden = (int(hidden),)
        try:
            hidden = tuple(int(h) for h in hidden)
        except TypeError as exc:
            raise ValueError("hidden_layer_sizes must be a sequence of ints") from exc
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive, got {hidden}")
        self._hidden = hidden
        for name in ("max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= float(self.validation_fraction) < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}"
            )
        self._check_fhe(None)
        from ..nn.distill import check_distill_params, teacher_kind

        check_distill_params(self.distill_temperature, self.distill_alpha)
        if self.teacher is not None:
            teacher_kind(self.teacher)
        self._check_pruning(self.pruning_ratio, self.n_accum_bits, self.prune_importance,
                            self.fine_tune_epochs)

    @staticmethod
    def _check_pruning(ratio: Any, n_accum_bits: Any, importance: Any, epochs: Any) -> None:
        from ..prune.importance import IMPORTANCES

        if not isinstance(ratio, (int, float, np.number)) or not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {ratio!r}")
        if n_accum_bits is not None and (
            not isinstance(n_accum_bits, (int, np.integer)) or n_accum_bits < 2
        ):
            raise ValueError(f"n_accum_bits must be an int >= 2 or None, got {n_accum_bits!r}")
        if isinstance(importance, str) and importance not in IMPORTANCES:
            raise ValueError(
                f"prune_importance must be one of {IMPORTANCES}, got {importance!r}"
            )
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"fine_tune_epochs must be an int >= 0, got {epochs!r}")

    def _build_module(self, config: dict[str, Any]):  # type: ignore[no-untyped-def]
        from ..nn.mlp import QuantMLP

        return QuantMLP(
            config["n_features"], config["hidden_sizes"], config["n_outputs"],
            n_w_bits=config["n_w_bits"], n_a_bits=config["n_a_bits"],
            n_input_bits=config["n_input_bits"], activation=config["activation"],
            power_of_two_scales=config["power_of_two_scales"],
        )

    # --------------------------------------------------------------------- fit
    def _split(self, X: np.ndarray, y: np.ndarray, stratify: bool, seed: int,  # type: ignore[no-untyped-def]
               soft: np.ndarray | None = None):
        """Training / validation split for early stopping (no validation if too small).

        Returns ``(X_tr, y_tr, X_val, y_val, soft_tr)``: the teacher's soft targets (if
        any) follow the training rows; validation uses the hard labels only.
        """
        n_val = int(np.floor(self.validation_fraction * len(X)))
        if not (self.early_stopping and n_val >= 1 and len(X) - n_val >= 2):
            return X, y, None, None, soft
        strat = y if stratify and np.min(np.bincount(y)) >= 2 else None
        if strat is not None and n_val < len(np.unique(y)):
            strat = None
        arrays = (X, y) if soft is None else (X, y, soft)
        try:
            parts = train_test_split(*arrays, test_size=n_val, stratify=strat, random_state=seed)
        except ValueError:  # too few samples per class to stratify
            parts = train_test_split(*arrays, test_size=n_val, random_state=seed)
        return parts[0], parts[2], parts[1], parts[3], (None if soft is None else parts[4])

    def _soft_loss(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _teacher_outputs(self, teacher: Any, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _distill_targets(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray | None:
        """Fit ``teacher_`` if needed (``y`` given) and return its soft targets on ``X``."""
        if y is not None:
            from ..nn.distill import fit_teacher

            self.teacher_ = None if self.teacher is None else fit_teacher(self.teacher, X, y)
        teacher = getattr(self, "teacher_", None)
        return None if teacher is None else self._teacher_outputs(teacher, X)

    def _train(self, module, data, seed: int, max_epochs: int, lr: float, what: str):  # type: ignore[no-untyped-def]
        from ..nn.train import seeded, torch_threads, train_module

        X_tr, y_tr, X_val, y_val, soft = data
        with seeded(seed), torch_threads(1):
            return train_module(
                module, X_tr, y_tr, self._loss, X_val=X_val, y_val=y_val,
                score_fn=self._score_fn, max_epochs=max_epochs, lr=lr,
                weight_decay=float(self.weight_decay), batch_size=int(self.batch_size),
                patience=int(self.patience), seed=seed, verbose=int(self.verbose),
                description=f"{type(self).__name__} {what}",
                soft_targets=soft, soft_loss_fn=None if soft is None else self._soft_loss(),
            )

    def _prune(self, module, data, seed: int, ratio: float, n_accum_bits: int | None,  # type: ignore[no-untyped-def]
               importance: str, fine_tune_epochs: int) -> list:
        """Structured then accumulator-budget pruning of ``module``, in place."""
        from ..nn.train import seeded, torch_threads
        from ..prune import prune_accumulator, prune_structured

        self._check_pruning(ratio, n_accum_bits, importance, fine_tune_epochs)

        def fine_tune(m):  # type: ignore[no-untyped-def]
            if fine_tune_epochs:
                self._train(m, data, seed, int(fine_tune_epochs), float(self.lr) * 0.5,
                            "fine-tuning")

        reports = []
        X_tr, y_tr = data[0], data[1]
        with seeded(seed), torch_threads(1):
            if ratio > 0:
                reports.append(prune_structured(
                    module, ratio, importance=importance, fine_tune=fine_tune, X=X_tr,
                    y=y_tr, loss_fn=self._loss, seed=seed,
                ))
            if n_accum_bits is not None:
                reports.append(prune_accumulator(
                    module, int(n_accum_bits), fine_tune=fine_tune, rounds=2,
                ))
        module.eval()
        return reports

    def _fit(self, X: np.ndarray, y: np.ndarray, n_outputs: int, stratify: bool,
             soft: np.ndarray | None = None) -> None:
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        data = self._split(X, y, stratify, seed, soft)
        config = {
            "n_features": X.shape[1], "hidden_sizes": list(self._hidden),
            "n_outputs": n_outputs, "n_w_bits": self.n_w_bits, "n_a_bits": self.n_a_bits,
            "n_input_bits": self.n_input_bits, "activation": self.activation,
            "power_of_two_scales": bool(self.power_of_two_scales),
        }
        from ..nn.train import seeded

        with seeded(seed):
            module = self._build_module(config)
        self.history_ = self._train(module, data, seed, int(self.max_epochs), float(self.lr),
                                    "QAT")
        self.n_iter_ = self.history_.n_epochs
        self.pruning_reports_ = self._prune(
            module, data, seed, float(self.pruning_ratio), self.n_accum_bits,
            self.prune_importance, self.fine_tune_epochs,
        )
        self._set_module(module, X, rng)

    def _set_module(self, module, X: np.ndarray, rng: np.random.RandomState) -> None:  # type: ignore[no-untyped-def]
        from ..backends.integer import IntegerBackend
        from ..nn.export import export_mlp

        self.module_ = module
        circuit = export_mlp(module)
        self.circuit_ = IntegerBackend(circuit).calibrate(X)
        self._backend = IntegerBackend(self.circuit_)
        self._keep_calibration(X, rng)
        # a (re)fit invalidates what compile() produced
        self.fhe_circuit_ = None
        self.compiled_circuit_ = None
        self.compiled_report_ = None
        self._compile_kwargs = None

    def prune(
        self,
        X: Any,
        y: Any,
        *,
        ratio: float = 0.0,
        n_accum_bits: int | None = None,
        importance: str | None = None,
        fine_tune_epochs: int | None = None,
    ):  # type: ignore[no-untyped-def]
        """Prune a fitted estimator further; returns a new fitted estimator.

        The original is untouched (the copy goes through pickling, like ``clone`` for
        fitted state).  ``ratio`` removes that fraction of the remaining hidden neurons;
        ``n_accum_bits`` then bounds every accumulator (guaranteed by the IR's worst-case
        analysis); both fine-tune on ``(X, y)``.  The new estimator's ``pruning_ratio``
        and ``n_accum_bits`` describe the cumulative pruning, so refitting a clone
        reproduces a comparable model.  With a teacher, fine-tuning distils from the
        fitted ``teacher_`` (not refitted; an array teacher must have one row per
        sample of this ``X``).
        """
        import pickle

        check_is_fitted(self, "circuit_")
        X, y_enc = self._encode_for_pruning(X, y)
        new = pickle.loads(pickle.dumps(self))
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        soft = new._distill_targets(X, None)
        data = new._split(X, y_enc, hasattr(self, "classes_"), seed, soft)
        new.pruning_reports_ = list(self.pruning_reports_) + new._prune(
            new.module_, data, seed, float(ratio), n_accum_bits,
            self.prune_importance if importance is None else importance,
            self.fine_tune_epochs if fine_tune_epochs is None else fine_tune_epochs,
        )
        kept = (1.0 - float(self.pruning_ratio)) * (1.0 - float(ratio))
        budgets = [b for b in (self.n_accum_bits, n_accum_bits) if b is not None]
        new.pruning_ratio = 1.0 - kept
        new.n_accum_bits = min(budgets) if budgets else None
        new._set_module(new.module_, X, rng)
        return new


class QuantizedMLPClassifier(ClassifierMixin, _QuantizedMLPBase):
    __doc__ = (
        "Multi-layer perceptron classifier trained with quantization-aware training.\n"
        + _COMMON_DOC
        + """
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    module_ : latentopt.nn.mlp.QuantMLP
        The trained brevitas module.
    circuit_ : latentopt.ir.Circuit
        The quantized integer circuit (with calibrated ranges).
    history_ : latentopt.nn.train.TrainingHistory
    n_iter_ : int
        Epochs run.
    teacher_ : object or None
        The teacher distilled from (fitted), or None.
    """
    )

    @staticmethod
    def _loss(out, target):  # type: ignore[no-untyped-def]
        import torch.nn.functional as F

        return F.cross_entropy(out, target)

    @staticmethod
    def _score_fn(out, target) -> float:  # type: ignore[no-untyped-def]
        return float((out.argmax(1) == target).float().mean().item())

    def _soft_loss(self):  # type: ignore[no-untyped-def]
        from functools import partial

        from ..nn.distill import distillation_loss

        return partial(distillation_loss, temperature=float(self.distill_temperature),
                       alpha=float(self.distill_alpha))

    def _teacher_outputs(self, teacher: Any, X: np.ndarray) -> np.ndarray:
        from ..nn.distill import teacher_targets

        return teacher_targets(teacher, X, classes=self.classes_)

    def fit(self, X: Any, y: Any) -> QuantizedMLPClassifier:
        """Train the quantized network on ``X`` (n_samples, n_features) and labels ``y``."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=True)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                f"but the data contains only one class: {self.classes_[0]!r}"
            )
        soft = self._distill_targets(X, y)
        self._fit(X, y_enc.astype(np.int64), len(self.classes_), stratify=True, soft=soft)
        return self

    def _encode_for_pruning(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=False, dtype=np.float64, ensure_all_finite=True)
        y = column_or_1d(y, warn=True)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels not seen at fit: {unknown.tolist()}")
        return X, np.searchsorted(self.classes_, y).astype(np.int64)

    def decision_function(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Logits (n_samples, n_classes); for 2 classes the logit difference (n_samples,)."""
        logits = self._raw_output(X, fhe)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Class probabilities: softmax of the dequantized logits (computed in the clear)."""
        logits = self._raw_output(X, fhe)
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Predicted class labels; ``fhe`` overrides ``fhe_mode``."""
        logits = self._raw_output(X, fhe)
        return self.classes_[np.argmax(logits, axis=1)]


class QuantizedMLPRegressor(RegressorMixin, _QuantizedMLPBase):
    __doc__ = (
        "Multi-layer perceptron regressor trained with quantization-aware training.\n\n"
        "    Targets are standardised internally (``y_mean_``, ``y_scale_``); outputs are\n"
        "    de-standardised in the clear after dequantization.\n"
        + _COMMON_DOC
        + """
    Attributes
    ----------
    n_features_in_ : int
    n_outputs_ : int
    module_, circuit_, history_, n_iter_, teacher_
        As in :class:`QuantizedMLPClassifier`.
    """
    )

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    @staticmethod
    def _loss(out, target):  # type: ignore[no-untyped-def]
        import torch.nn.functional as F

        return F.mse_loss(out, target)

    @staticmethod
    def _score_fn(out, target) -> float:  # type: ignore[no-untyped-def]
        return -float(((out - target) ** 2).mean().item())

    def _soft_loss(self):  # type: ignore[no-untyped-def]
        from functools import partial

        from ..nn.distill import regression_distillation_loss

        return partial(regression_distillation_loss, alpha=float(self.distill_alpha))

    def _teacher_outputs(self, teacher: Any, X: np.ndarray) -> np.ndarray:
        from ..nn.distill import teacher_targets

        out = teacher_targets(teacher, X, n_outputs=self.n_outputs_)
        return ((out - self.y_mean_) / self.y_scale_).astype(np.float32)

    def fit(self, X: Any, y: Any) -> QuantizedMLPRegressor:
        """Train the quantized network on ``X`` and real targets ``y`` (1-D or 2-D)."""
        self._check_params()
        X, y = validate_data(
            self, X, y, dtype=np.float64, ensure_all_finite=True, multi_output=True,
            y_numeric=True,
        )
        self._y_1d = y.ndim == 1
        y2 = y.reshape(len(y), -1).astype(np.float64)
        self.n_outputs_ = y2.shape[1]
        self.y_mean_ = y2.mean(axis=0)
        scale = y2.std(axis=0)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)
        y_std = ((y2 - self.y_mean_) / self.y_scale_).astype(np.float32)
        soft = self._distill_targets(X, y)
        self._fit(X, y_std, self.n_outputs_, stratify=False, soft=soft)
        return self

    def _encode_for_pruning(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, reset=False, dtype=np.float64, ensure_all_finite=True,
                             multi_output=True, y_numeric=True)
        y2 = y.reshape(len(y), -1).astype(np.float64)
        if y2.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2.shape[1]} targets, the model {self.n_outputs_}")
        return X, ((y2 - self.y_mean_) / self.y_scale_).astype(np.float32)

    def predict(self, X: Any, fhe: str | None = None) -> np.ndarray:
        """Predicted targets; ``fhe`` overrides ``fhe_mode``."""
        check_is_fitted(self, "circuit_")
        out = self._raw_output(X, fhe) * self.y_scale_ + self.y_mean_
        return out.ravel() if self._y_1d else out

"""Training and pruning glue of the MLP estimators: data -> trained module -> circuit.

:class:`MLPTrainingMixin` builds the :class:`~latentopt.nn.mlp.QuantMLP` from the
estimator's hyper-parameters (skorch-style, at fit time), trains it
(:func:`latentopt.nn.train.train_module`, with early stopping on a held-out split and
the teacher's soft targets), prunes it (:mod:`latentopt.prune`), exports it to the IR
(:func:`latentopt.nn.export.export_mlp`) and calibrates the circuit's value ranges.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .distillation import teacher_inputs
from .validation import check_pruning, warn_feature_scales

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..ir import Circuit
    from ..nn.mlp import QuantMLP
    from ..nn.train import TrainingHistory

__all__ = ["N_CALIBRATION", "MLPTrainingMixin"]

#: Rows of training data kept (quantized at compile time) to calibrate FHE compilation.
N_CALIBRATION = 512

#: ``(X_tr, y_tr, X_val, y_val, soft_tr)``: the early-stopping split.
Split = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None",
              "np.ndarray | None"]


#: Hyper-parameters that shape the fitted network (:meth:`MLPTrainingMixin.prune` keeps
#: the fitted values of these)
NETWORK_PARAMS = frozenset({
    "hidden_layer_sizes", "n_w_bits", "n_a_bits", "n_input_bits", "activation",
    "power_of_two_scales", "pruning_ratio", "n_accum_bits"})


class MLPTrainingMixin:
    """Fit, prune and export of the MLP estimators (hyper-parameters: see the estimators)."""

    # hyper-parameters and hooks the estimator provides
    max_epochs: int
    validation_fraction: float
    early_stopping: bool
    weight_decay: float
    batch_size: int
    patience: int
    verbose: int
    lr: float
    random_state: Any
    pruning_ratio: float
    n_accum_bits: int | None
    prune_importance: str
    fine_tune_epochs: int
    n_w_bits: Any
    n_a_bits: Any
    n_input_bits: int
    activation: str
    power_of_two_scales: bool
    _loss: Callable[..., Any]
    _score_fn: Callable[..., float]
    _soft_loss: Callable[[], Callable[..., Any]]
    _distill_targets: Callable[[np.ndarray, np.ndarray | None], np.ndarray | None]
    _forget_compilation: Callable[[], None]
    _exact_runtime: Callable[[], Any]
    _encode_for_pruning: Callable[[Any, Any], tuple[np.ndarray, np.ndarray]]
    get_params: Callable[..., dict[str, Any]]  # scikit-learn's BaseEstimator
    set_params: Callable[..., Any]
    # fitted state
    fitted_params_: dict[str, Any]
    module_: QuantMLP
    circuit_: Circuit
    history_: TrainingHistory
    n_iter_: int
    pruning_reports_: list[Any]
    hidden_layer_sizes_: tuple[int, ...]
    calibration_set_: np.ndarray

    def _build_module(self, config: dict[str, Any]) -> QuantMLP:
        from ..nn.mlp import QuantMLP

        return QuantMLP(
            config["n_features"], config["hidden_sizes"], config["n_outputs"],
            n_w_bits=config["n_w_bits"], n_a_bits=config["n_a_bits"],
            n_input_bits=config["n_input_bits"], activation=config["activation"],
            power_of_two_scales=config["power_of_two_scales"],
            input_signed=config.get("input_signed", True),  # older pickles: signed
        )

    def _split(self, X: np.ndarray, y: np.ndarray, stratify: bool, seed: int,
               soft: np.ndarray | None = None) -> Split:
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

    def _train(self, module: QuantMLP, data: Split, seed: int, max_epochs: int, lr: float,
               what: str) -> TrainingHistory:
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

    def _prune(self, module: QuantMLP, data: Split, seed: int, ratio: float,
               n_accum_bits: int | None, importance: str, fine_tune_epochs: int) -> list[Any]:
        """Structured then accumulator-budget pruning of ``module``, in place."""
        from ..nn.train import seeded, torch_threads
        from ..prune import prune_accumulator, prune_structured

        check_pruning(ratio, n_accum_bits, importance, fine_tune_epochs)

        def fine_tune(m: QuantMLP) -> None:
            if fine_tune_epochs:
                self._train(m, data, seed, int(fine_tune_epochs), float(self.lr) * 0.5,
                            "fine-tuning")

        reports: list[Any] = []
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

    def _fit_network(self, X: np.ndarray, y: np.ndarray, hidden: tuple[int, ...],
                     n_outputs: int, stratify: bool, soft: np.ndarray | None = None) -> None:
        """Build, train, prune and export the network; sets the fitted attributes."""
        # the parameters this network was trained with: prune() reads them, not what
        # set_params changed since (pruning_ratio=0.5 set after the fit counted twice)
        self.fitted_params_ = self.get_params(deep=False)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        warn_feature_scales(X, self.n_input_bits)
        data = self._split(X, y, stratify, seed, soft)
        from ..nn.mlp import signed_inputs

        config = {
            "n_features": X.shape[1], "hidden_sizes": list(hidden),
            "n_outputs": n_outputs, "n_w_bits": self.n_w_bits, "n_a_bits": self.n_a_bits,
            "n_input_bits": self.n_input_bits, "activation": self.activation,
            "power_of_two_scales": bool(self.power_of_two_scales),
            "input_signed": signed_inputs(X),
        }
        from ..nn.train import seeded

        with seeded(seed):
            module = self._build_module(config)
        if float(self.pruning_ratio) > 0 and not hidden:  # refused now, not after training
            raise ValueError(
                f"pruning_ratio={self.pruning_ratio} removes hidden neurons, but "
                "hidden_layer_sizes=() has no hidden layer: use pruning_ratio=0, or "
                "n_accum_bits to prune weights")
        if self.n_accum_bits is not None:  # refused now, not after the training
            from ..prune.accumulator import check_accumulator_budget

            check_accumulator_budget(
                module, int(self.n_accum_bits),
                remedy=f"raise n_accum_bits or lower the bit-widths (n_w_bits={self.n_w_bits}"
                       f", n_a_bits={self.n_a_bits}, n_input_bits={self.n_input_bits})")
        self.history_ = self._train(module, data, seed, int(self.max_epochs), float(self.lr),
                                    "QAT")
        self.n_iter_ = self.history_.n_epochs
        self.pruning_reports_ = self._prune(
            module, data, seed, float(self.pruning_ratio), self.n_accum_bits,
            self.prune_importance, self.fine_tune_epochs,
        )
        self._set_module(module, X, rng)

    def _output_circuit(self, circuit: Circuit) -> Circuit:
        """Hook: the exported circuit with outputs in the user's units (regressors fold
        their target scaling here)."""
        return circuit

    def _set_module(self, module: QuantMLP, X: np.ndarray, rng: np.random.RandomState) -> None:
        from ..backends.integer import IntegerBackend
        from ..nn.export import export_mlp

        self.module_ = module
        self.hidden_layer_sizes_ = tuple(int(h) for h in module.config["hidden_sizes"])
        circuit = self._output_circuit(export_mlp(module))
        self.circuit_ = IntegerBackend(circuit).calibrate(X)
        self._backend = IntegerBackend(self.circuit_)
        idx = rng.permutation(len(X))[:N_CALIBRATION]
        self.calibration_set_ = np.array(X[np.sort(idx)], dtype=np.float64)
        self._forget_compilation()  # a (re)fit invalidates what compile() produced
        self._exact_runtime()  # built now: predict must not add to the estimator's state

    def prune(
        self,
        X: ArrayLike,
        y: ArrayLike,
        *,
        ratio: float = 0.0,
        n_accum_bits: int | None = None,
        importance: str | None = None,
        fine_tune_epochs: int | None = None,
    ) -> Self:
        """Prune a fitted estimator further; returns a new fitted estimator.

        The original is untouched (the copy goes through pickling, like ``clone`` for
        fitted state).  ``ratio`` removes that fraction of the remaining hidden neurons;
        ``n_accum_bits`` then bounds every accumulator (guaranteed by the IR's worst-case
        analysis); both fine-tune on ``(X, y)``.  The new estimator's ``pruning_ratio``
        and ``n_accum_bits`` describe the cumulative pruning, so refitting a clone
        reproduces a comparable model; its ``pruning_reports_`` lists every step.  With
        a teacher, fine-tuning distils from the fitted ``teacher_`` (not refitted; an
        array teacher must have one row per sample of this ``X``).
        """
        from .validation import check_pruning

        check_is_fitted(self, "circuit_")
        new: Self = pickle.loads(pickle.dumps(self))
        # the new estimator describes this network: the parameters that shaped it are the
        # ones it was fitted with (set_params after the fit changed self's, not the
        # network); how to fine-tune (distill_alpha, lr, ...) is read as set now
        fitted = getattr(self, "fitted_params_", {})
        new.set_params(**{k: v for k, v in fitted.items() if k in NETWORK_PARAMS})
        importance = new.prune_importance if importance is None else importance
        epochs = new.fine_tune_epochs if fine_tune_epochs is None else fine_tune_epochs
        check_pruning(ratio, n_accum_bits, importance, epochs)  # as fit's (a str was taken)
        X_user = X
        X, y_enc = self._encode_for_pruning(X, y)
        rng = check_random_state(new.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        soft = new._distill_targets(teacher_inputs(X_user, X), None)  # as fit's teacher
        data = new._split(X, y_enc, hasattr(self, "classes_"), seed, soft)
        # the model's own budget holds after a ratio too: structured pruning and its
        # fine-tuning move the weights, and a 9-bit budget ended at a 10-bit accumulator
        budgets = [b for b in (new.n_accum_bits, n_accum_bits) if b is not None]
        budget = min(budgets) if budgets else None
        new.pruning_reports_ = list(self.pruning_reports_) + new._prune(
            new.module_, data, seed, float(ratio), budget, importance, epochs)
        kept = (1.0 - float(new.pruning_ratio)) * (1.0 - float(ratio))
        new.pruning_ratio = 1.0 - kept
        new.n_accum_bits = budget
        new.fitted_params_ = new.get_params(deep=False)
        new._set_module(new.module_, X, rng)
        return new

"""Behaviour of QuantizedMLPClassifier / QuantizedMLPRegressor beyond sklearn's checks."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor
from latentopt.backends.integer import IntegerBackend

SMALL = dict(hidden_layer_sizes=(8,), max_epochs=20, lr=1e-2, verbose=0, random_state=0)


def test_classifier_accuracy_and_outputs(fitted_wine_clf, wine):
    _, Xte, _, yte = wine
    clf = fitted_wine_clf
    assert clf.score(Xte, yte) >= 0.9
    proba = clf.predict_proba(Xte)
    assert proba.shape == (len(Xte), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    dec = clf.decision_function(Xte)
    np.testing.assert_array_equal(clf.classes_[dec.argmax(1)], clf.predict(Xte))
    # predict is the integer backend's argmax on the fitted circuit
    logits = IntegerBackend(clf.circuit_).predict(Xte)
    np.testing.assert_array_equal(clf.predict(Xte, fhe="disable"), clf.classes_[logits.argmax(1)])


def test_classifier_fitted_attributes(fitted_wine_clf):
    clf = fitted_wine_clf
    assert clf.n_features_in_ == 13
    assert list(clf.classes_) == [0, 1, 2]
    assert clf.circuit_.calibration is not None
    assert clf.n_iter_ == clf.history_.n_epochs >= 1
    assert clf.calibration_set_.shape[1] == 13
    report = clf.bit_width_report()
    assert report.tlu_count == 16
    assert [r["out_features"] for r in report.layers] == [16, 3]
    # calibrated accumulator ranges never exceed worst-case ones
    for row in report.layers:
        assert row["accumulator_bits_calibrated"] <= row["accumulator_bits"]


def test_binary_decision_function_and_string_labels(breast_cancer):
    Xtr, Xte, ytr, yte = breast_cancer
    labels = np.array(["benign", "malignant"])
    clf = QuantizedMLPClassifier(hidden_layer_sizes=(16,), max_epochs=40, lr=5e-3,
                                 random_state=0, verbose=0).fit(Xtr, labels[ytr])
    assert set(clf.classes_) == {"benign", "malignant"}
    dec = clf.decision_function(Xte)
    assert dec.shape == (len(Xte),)
    np.testing.assert_array_equal(np.where(dec > 0, clf.classes_[1], clf.classes_[0]),
                                  np.where(dec > 0, clf.predict(Xte), clf.classes_[0]))
    assert clf.score(Xte, labels[yte]) >= 0.9


def test_regressor_quality_and_shapes(fitted_diabetes_reg, diabetes):
    Xtr, Xte, ytr, yte = diabetes
    reg = fitted_diabetes_reg
    pred = reg.predict(Xte)
    assert pred.shape == (len(Xte),)
    assert reg.score(Xte, yte) > 0.3
    Y = np.column_stack([ytr, -2.0 * ytr + 5.0])
    reg2 = QuantizedMLPRegressor(hidden_layer_sizes=(16,), max_epochs=40, lr=5e-3, n_w_bits=4,
                                 n_a_bits=4, random_state=0, verbose=0).fit(Xtr, Y)
    assert reg2.n_outputs_ == 2
    P = reg2.predict(Xte)
    assert P.shape == (len(Xte), 2)
    assert np.corrcoef(P[:, 0], P[:, 1])[0, 1] < -0.95


def test_pipeline_gridsearch_clone(wine):
    Xtr, Xte, ytr, yte = wine
    pipe = make_pipeline(StandardScaler(), QuantizedMLPClassifier(**SMALL))
    grid = GridSearchCV(pipe, {"quantizedmlpclassifier__n_w_bits": [2, 4]}, cv=2)
    grid.fit(Xtr, ytr)
    assert grid.best_params_["quantizedmlpclassifier__n_w_bits"] in (2, 4)
    assert grid.score(Xte, yte) > 0.5
    pipe.set_params(quantizedmlpclassifier__fhe_mode="disable")
    c = clone(pipe)
    assert c.get_params()["quantizedmlpclassifier__n_w_bits"] == 3
    assert not hasattr(c[-1], "circuit_")


def test_pickle_round_trip_predicts_the_same(fitted_wine_clf, fitted_diabetes_reg, wine,
                                             diabetes):
    for est, X in ((fitted_wine_clf, wine[1]), (fitted_diabetes_reg, diabetes[1])):
        clone_ = pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(clone_.predict(X), est.predict(X))
        assert clone_.circuit_.same_as(est.circuit_)
        # the torch module is rebuilt and computes what the original computes
        x = torch.as_tensor(X[:20], dtype=torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(clone_.module_(x), est.module_(x))


def test_same_random_state_same_model(wine):
    Xtr, _, ytr, _ = wine
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = QuantizedMLPClassifier(**SMALL).fit(Xtr, ytr)
    after = torch.rand(1)
    assert torch.equal(before, after), "fit must not consume the global torch RNG"
    b = QuantizedMLPClassifier(**SMALL).fit(Xtr, ytr)
    assert a.circuit_.same_as(b.circuit_)
    c = QuantizedMLPClassifier(**{**SMALL, "random_state": 1}).fit(Xtr, ytr)
    assert not a.circuit_.same_as(c.circuit_)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.nan, "NaN"),
        (np.inf, "infinity"),
    ],
)
def test_non_finite_inputs_rejected(fitted_wine_clf, wine, bad, match):
    X = wine[1][:5].copy()
    X[0, 0] = bad
    with pytest.raises(ValueError, match=match):
        fitted_wine_clf.predict(X)
    with pytest.raises(ValueError, match=match):
        QuantizedMLPClassifier(**SMALL).fit(X, [0, 1, 0, 1, 0])


def test_bad_inputs(fitted_wine_clf, wine):
    clf = fitted_wine_clf
    Xte = wine[1]
    with pytest.raises(ValueError, match="features"):
        clf.predict(Xte[:, :5])
    with pytest.raises(ValueError):
        clf.predict(np.array([["a"] * 13]))
    with pytest.raises(ValueError):
        clf.predict(np.empty((0, 13)))
    with pytest.raises(ValueError, match="fhe must be one of"):
        clf.predict(Xte, fhe="encrypted")
    with pytest.raises(RuntimeError, match="compile"):
        clf.predict(Xte, fhe="simulate")
    with pytest.raises(NotFittedError):
        QuantizedMLPClassifier().predict(Xte)
    with pytest.raises(ValueError, match="class"):
        QuantizedMLPClassifier(**SMALL).fit(Xte[:10], np.zeros(10))
    with pytest.raises(ValueError, match="Unknown label type"):
        QuantizedMLPClassifier(**SMALL).fit(Xte[:10], np.linspace(0, 1, 10))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes"),
        ({"n_w_bits": 0}, "n_w_bits"),
        ({"n_w_bits": [3, 3, 3]}, "n_w_bits"),
        ({"n_a_bits": 17}, "n_a_bits"),
        ({"activation": "swish9"}, "activation"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"lr": -1.0}, "lr"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"fhe_mode": "fast"}, "fhe"),
        # a string was read as one layer per character ("16": layers of 1 and 6), a
        # float cut to an int (8.9: 8)
        ({"hidden_layer_sizes": "16"}, "hidden_layer_sizes must be an int or a sequence"),
        ({"hidden_layer_sizes": (8.9,)}, "hidden_layer_sizes must be an int or a sequence"),
        ({"hidden_layer_sizes": (True,)}, "hidden_layer_sizes"),
        # binary weights: validation passed, then training diverged whatever the lr
        ({"n_w_bits": 1}, "binary weights are not supported"),
        ({"n_w_bits": [3, 1]}, "binary weights are not supported"),
        ({"n_w_bits": [3.0, 3]}, "sequence of ints"),
        ({"lr": True}, "lr must be a number > 0"),
        ({"lr": "0.01"}, "lr must be a number > 0"),
        ({"lr": float("nan")}, "lr must be a number > 0"),
        ({"weight_decay": "x"}, "weight_decay must be a number >= 0"),
        ({"validation_fraction": "0.1"}, "validation_fraction must be a number in"),
        # one-sample batches are skipped in training: batch_size=1 (or True) trained
        # nothing and reported a loss of 0; a float bit-width was iterated over
        ({"batch_size": 1}, "one-sample batches are not trained on"),
        ({"batch_size": True}, "batch_size must be an int >= 2"),
        ({"max_epochs": True}, "max_epochs must be an int"),
        ({"n_w_bits": 3.0}, "n_w_bits must be an int or a sequence of ints"),
        ({"n_input_bits": np.float64(6)}, "n_input_bits must be an int or a sequence"),
        # "no" was taken as True (a model bit for bit that of True), None as the first
        # activation's bits, a non-string importance failed after training, a bad
        # verbose after the teacher's fit
        ({"power_of_two_scales": "no"}, "power_of_two_scales must be True or False"),
        ({"early_stopping": "False"}, "early_stopping must be True or False"),
        ({"n_input_bits": None}, "n_input_bits must be an int >= 1, got None"),
        ({"prune_importance": 3, "pruning_ratio": 0.5}, "prune_importance must be one of"),
        ({"prune_importance": 3}, "prune_importance must be one of"),
        ({"verbose": "x"}, "verbose must be an int >= 0"),
    ],
)
def test_invalid_hyperparameters(wine, params, match):
    Xtr, _, ytr, _ = wine
    with pytest.raises(ValueError, match=match):
        QuantizedMLPClassifier(**{**SMALL, **params}).fit(Xtr, ytr)


def test_numpy_scalars_are_numbers(wine):
    """``lr=np.float32(0.01)`` was refused as "lr must be > 0, got 0.01"."""
    Xtr, Xte, ytr, _ = wine
    clf = QuantizedMLPClassifier(**{**SMALL, "lr": np.float32(0.01),
                                    "validation_fraction": np.float64(0.1),
                                    "hidden_layer_sizes": (np.int64(4),),
                                    "n_a_bits": np.int32(3)}).fit(Xtr, ytr)
    assert clf.predict(Xte).shape == (len(Xte),)


def test_tiny_data_edge_cases():
    X = np.array([[0.5, -1.0]])
    reg = QuantizedMLPRegressor(**SMALL).fit(X, [2.0])
    assert reg.predict(X).shape == (1,)
    X2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    clf = QuantizedMLPClassifier(**SMALL).fit(X2, ["a", "b"])
    assert clf.predict(X2).shape == (2,)


def test_per_layer_bits_and_activations(wine):
    Xtr, Xte, ytr, yte = wine
    clf = QuantizedMLPClassifier(hidden_layer_sizes=(12, 8), n_w_bits=[4, 3, 2],
                                 n_a_bits=[3, 2], activation="tanh", max_epochs=20,
                                 random_state=0, verbose=0).fit(Xtr, ytr)
    gemms = [n for n in clf.circuit_.nodes if n.op == "gemm"]
    assert [int(np.abs(g.weight).max()) <= 2 ** (b - 1) - 1 for g, b in
            zip(gemms, [4, 3, 2])] == [True] * 3
    tlus = [n for n in clf.circuit_.nodes if n.op == "table_lookup"]
    assert [t.fn.n_bits for t in tlus] == [3, 2]
    assert all(t.fn.activation == "tanh" and t.fn.signed for t in tlus)


def test_power_of_two_scales(wine):
    Xtr, _, ytr, _ = wine
    clf = QuantizedMLPClassifier(**{**SMALL, "power_of_two_scales": True}).fit(Xtr, ytr)
    scales = [clf.circuit_.input_quantizer.scale]
    scales += [t.fn.output_scale for t in clf.circuit_.nodes if t.op == "table_lookup"]
    scales += [t.fn.input_scale for t in clf.circuit_.nodes if t.op == "table_lookup"]
    for s in scales:
        log2 = np.log2(np.asarray(s, dtype=np.float64))
        np.testing.assert_allclose(log2, np.round(log2))


def test_verbose_controls_progress(wine, capsys):
    Xtr, _, ytr, _ = wine
    QuantizedMLPClassifier(**SMALL).fit(Xtr, ytr)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    QuantizedMLPClassifier(**{**SMALL, "verbose": 1}).fit(Xtr, ytr)
    assert "QAT" in capsys.readouterr().err


def test_targets_too_large_to_standardise_are_named():
    """Targets whose mean overflows float64 are named (the error said "scale must be
    finite" from deep inside the quantizer); targets of 1e160, whose squares overflow,
    are scaled like any others."""
    X = np.random.RandomState(0).randn(40, 3)
    with pytest.raises(ValueError, match=r"y is too large to standardise.*rescale"):
        QuantizedMLPRegressor(max_epochs=1, verbose=0).fit(X, np.full(40, 1.7e308))
    kw = dict(max_epochs=2, verbose=0, random_state=0)
    ref = QuantizedMLPRegressor(**kw).fit(X, X[:, 0]).predict(X)
    big = QuantizedMLPRegressor(**kw).fit(X, X[:, 0] * 1e160).predict(X)
    np.testing.assert_allclose(big, ref * 1e160, rtol=1e-9)


def test_inputs_the_quantizer_or_training_cannot_use_are_named():
    """Standardised data shifted by +1000 fell on one input level (the grid starts at 0;
    the check measured X's span instead) and predicted one class without a warning; data
    scaled to a 0.01 spread trained to chance silently; at 1e-6 brevitas raised
    "QuantTensor not valid"; n_input_bits=0 divided by zero."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=200, n_features=5, n_informative=4,
                               n_redundant=0, random_state=1)
    X = StandardScaler().fit_transform(X)
    kw = dict(hidden_layer_sizes=(8,), max_epochs=2, verbose=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        QuantizedMLPClassifier(**kw).fit(X, y)  # standardised: nothing to say
    with pytest.warns(UserWarning, match=r"grid spans 0 to 1e\+03.*one or two values"):
        QuantizedMLPClassifier(**kw).fit(X + 1000, y)
    with pytest.warns(UserWarning, match="median standard deviation is 0.01"):
        QuantizedMLPClassifier(**kw).fit(X * 0.01, y)
    X3, y3 = make_classification(n_samples=300, n_features=5, n_informative=4,
                                 n_redundant=0, random_state=1)  # (the helper's repro)
    X3 = StandardScaler().fit_transform(X3) * 1e-6
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="standardise X"):
        QuantizedMLPClassifier(**{**kw, "max_epochs": 5, "lr": 1e-2}).fit(X3, y3)
    with pytest.raises(ValueError, match="n_input_bits"):
        QuantizedMLPClassifier(**kw, n_input_bits=0).fit(X, y)


def test_validation_score_is_the_fitted_models_score():
    """history_.val_score, which early stopping selects on, is the score of the fitted
    model on its validation rows (tied logits were broken by float error in training)."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state

    X, y = make_classification(500, 8, n_informative=5, n_classes=3, random_state=6)
    clf = QuantizedMLPClassifier(hidden_layer_sizes=(12,), max_epochs=40, patience=10,
                                 early_stopping=True,
                                 verbose=0, random_state=3).fit(X, y)
    seed = int(check_random_state(3).randint(np.iinfo(np.int32).max))  # as fit's split
    _, Xv, _, yv = train_test_split(X, y, test_size=50, stratify=y, random_state=seed)
    h = clf.history_
    assert h.val_score[h.best_epoch] == pytest.approx(clf.score(Xv, yv))


def test_targets_of_any_magnitude_are_scaled_not_read_as_constant():
    """Squares of targets below ~1e-154 underflowed: the target was read as constant
    and predictions came out 1e163 times too large; a constant 1e-9 came out at 1e-7."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = X[:, 0] * 2 + 0.1 * rng.normal(size=300)
    kw = dict(hidden_layer_sizes=(8,), max_epochs=8, lr=1e-2, random_state=0, verbose=0)
    ref = QuantizedMLPRegressor(**kw).fit(X, y).predict(X[:20])
    tiny = QuantizedMLPRegressor(**kw).fit(X, y * 1e-170)
    np.testing.assert_allclose(tiny.predict(X[:20]), ref * 1e-170, rtol=1e-9)
    const = QuantizedMLPRegressor(**kw).fit(X, np.full(300, 1e-9)).predict(X)
    np.testing.assert_allclose(const, 1e-9, rtol=1e-3)

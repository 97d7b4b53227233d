"""Knowledge distillation: soft targets, losses, and distilled estimators."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.svm import LinearSVC

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor
from latentopt.nn.distill import (
    distillation_loss,
    fit_teacher,
    regression_distillation_loss,
    teacher_targets,
)
from latentopt.nn.mlp import QuantMLP
from latentopt.nn.train import seeded, train_module

FAST = dict(hidden_layer_sizes=(8,), max_epochs=15, lr=1e-2, random_state=0, verbose=0)
# Early stopping scores on the hard labels, so with distill_alpha=1 it would restore the
# epoch that follows the teacher least: tests of "the student follows the teacher" train
# without it.
NO_ES = dict(FAST, early_stopping=False)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        yield


class _PredictOnly(ClassifierMixin, BaseEstimator):
    """A classifier with only ``predict``; ``classes_`` deliberately unsorted."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)[::-1]
        return self

    def predict(self, X):
        return np.where(np.asarray(X)[:, 0] > 0, self.classes_[0], self.classes_[-1])


# ----------------------------------------------------------------- soft targets
def test_soft_targets_from_sklearn_teachers(wine):
    Xtr, _, ytr, _ = wine
    classes = np.unique(ytr)
    lr = LogisticRegression(max_iter=500).fit(Xtr, ytr)
    t = teacher_targets(lr, Xtr, classes=classes)
    assert t.shape == (len(Xtr), 3) and t.dtype == np.float32
    p = np.exp(t) / np.exp(t).sum(1, keepdims=True)  # the softmax recovers predict_proba
    np.testing.assert_allclose(p, lr.predict_proba(Xtr), atol=1e-4)
    # decision_function (multi-class): logits, per-row shifted
    rc = RidgeClassifier().fit(Xtr, ytr)
    d = rc.decision_function(Xtr)
    np.testing.assert_allclose(teacher_targets(rc, Xtr, classes=classes),
                               d - d.max(1, keepdims=True), atol=1e-5)
    # binary decision_function: one score = logit of classes_[1]
    yb = (ytr == 1).astype(int)
    svc = LinearSVC().fit(Xtr, yb)
    tb = teacher_targets(svc, Xtr, classes=np.array([0, 1]))
    np.testing.assert_allclose(tb[:, 1] - tb[:, 0], svc.decision_function(Xtr), atol=1e-5)


def test_soft_targets_predict_only_reorders_classes():
    X = np.array([[-1.0], [2.0], [3.0]])
    teacher = _PredictOnly().fit(X, np.array(["a", "b", "b"]))
    assert list(teacher.classes_) == ["b", "a"]
    t = teacher_targets(teacher, X, classes=np.array(["a", "b"]))
    # one-hot (floored) in the student's order: x > 0 -> "b" (column 1)
    assert list(t.argmax(1)) == [0, 1, 1]
    assert np.exp(t).max() == pytest.approx(1.0, abs=1e-5)


def test_soft_targets_from_torch_module_and_arrays():
    X = np.random.RandomState(0).randn(10, 4)
    with seeded(0):
        lin = torch.nn.Linear(4, 3)
    lin.train()
    t = teacher_targets(lin, X, classes=np.arange(3))
    with torch.no_grad():
        z = lin(torch.as_tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(t, z - z.max(1, keepdims=True), atol=1e-5)
    assert lin.training  # mode restored
    # one output column for two classes: the logit of class 1
    one = teacher_targets(torch.nn.Linear(4, 1), X, classes=np.array([0, 1]))
    assert one.shape == (10, 2)
    # arrays: probabilities are recognised, anything else is taken as logits
    proba = np.full((10, 3), 0.2) + np.eye(3)[np.arange(10) % 3] * 0.4
    e = np.exp(teacher_targets(proba, X, classes=np.arange(3)))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), proba, atol=1e-6)
    logits = np.random.RandomState(1).randn(10, 3)
    np.testing.assert_allclose(teacher_targets(logits, X, classes=np.arange(3)),
                               logits - logits.max(1, keepdims=True), atol=1e-6)
    # regression: values of sklearn regressors, modules and arrays
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    reg = LinearRegression().fit(X, y)
    np.testing.assert_allclose(teacher_targets(reg, X, n_outputs=1)[:, 0], y, atol=1e-8)
    assert teacher_targets(y, X, n_outputs=1).shape == (10, 1)
    assert teacher_targets(torch.nn.Linear(4, 2), X, n_outputs=2).shape == (10, 2)


def test_soft_target_errors(wine):
    Xtr, _, ytr, _ = wine
    with pytest.raises(NotFittedError):
        teacher_targets(LogisticRegression(), Xtr, classes=np.unique(ytr))
    lr = LogisticRegression(max_iter=500).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="differ from the student's classes"):
        teacher_targets(lr, Xtr, classes=np.array([0, 1]))
    with pytest.raises(ValueError, match="expected 5 rows.*under cross-validation"):
        teacher_targets(np.zeros((4, 3)), Xtr[:5], classes=np.arange(3))
    with pytest.raises(ValueError, match="2 columns, the student has 3"):
        teacher_targets(np.zeros((5, 2)), Xtr[:5], classes=np.arange(3))
    with pytest.raises(ValueError, match="must be 2-D"):
        teacher_targets(np.zeros(5), Xtr[:5], classes=np.arange(3))
    bad = np.zeros((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        teacher_targets(bad, Xtr[:5], classes=np.arange(3))
    with pytest.raises(ValueError, match="columns, the student has 1 targets"):
        teacher_targets(torch.nn.Linear(Xtr.shape[1], 2), Xtr, n_outputs=1)
    with pytest.raises(TypeError, match="teacher must be"):
        teacher_targets("lr", Xtr, classes=np.arange(3))
    with pytest.raises(ValueError, match="exactly one"):
        teacher_targets(lr, Xtr)


# ----------------------------------------------------------------------- losses
def test_distillation_loss_on_a_hand_example():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]], requires_grad=True)
    y = torch.tensor([0, 2])
    teacher = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    T = 3.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p = softmax(teacher.numpy() / T)
    q = softmax(logits.detach().numpy() / T)
    kl = float(np.sum(p * (np.log(p) - np.log(q))) / 2)  # batch mean
    ce = float(F.cross_entropy(logits, y))
    assert float(distillation_loss(logits, y, teacher, temperature=T, alpha=0.0)) == \
        pytest.approx(ce, rel=1e-6)
    assert float(distillation_loss(logits, y, teacher, temperature=T, alpha=1.0)) == \
        pytest.approx(kl * T * T, rel=1e-5)
    mixed = distillation_loss(logits, y, teacher, temperature=T, alpha=0.25)
    assert float(mixed) == pytest.approx(0.75 * ce + 0.25 * kl * T * T, rel=1e-5)
    # teacher logits and teacher log-probabilities are the same soft target
    shifted = teacher + 5.0
    assert float(distillation_loss(logits, y, shifted, temperature=T, alpha=1.0)) == \
        pytest.approx(kl * T * T, rel=1e-5)
    # the soft term is minimal (zero) when the student equals the teacher
    assert float(distillation_loss(teacher, y, teacher, temperature=T, alpha=1.0)) == \
        pytest.approx(0.0, abs=1e-7)


def test_regression_distillation_loss():
    out = torch.tensor([[1.0], [2.0]], requires_grad=True)
    y = torch.tensor([[0.0], [4.0]])
    t = torch.tensor([[2.0], [2.0]])
    assert float(regression_distillation_loss(out, y, t, alpha=0.0)) == \
        pytest.approx(float(F.mse_loss(out, y)))
    assert float(regression_distillation_loss(out, y, t, alpha=1.0)) == \
        pytest.approx(float(F.mse_loss(out, t)))
    # same gradient as the weighted sum of the two MSEs
    g1, = torch.autograd.grad(regression_distillation_loss(out, y, t, alpha=0.3), out)
    g2, = torch.autograd.grad(0.7 * F.mse_loss(out, y) + 0.3 * F.mse_loss(out, t), out)
    torch.testing.assert_close(g1, g2)


def test_train_module_soft_targets_checks():
    X = np.random.RandomState(0).randn(20, 3)
    y = (X[:, 0] > 0).astype(np.int64)
    m = QuantMLP(3, (4,), 2)
    with pytest.raises(ValueError, match="soft_loss_fn"):
        train_module(m, X, y, F.cross_entropy, soft_targets=np.zeros((20, 2)), max_epochs=1)
    with pytest.raises(ValueError, match="19 rows"):
        train_module(m, X, y, F.cross_entropy, soft_targets=np.zeros((19, 2)),
                     soft_loss_fn=distillation_loss, max_epochs=1)


# ------------------------------------------------------------------- estimators
def test_alpha_zero_equals_training_on_labels(wine):
    Xtr, Xte, ytr, _ = wine
    plain = QuantizedMLPClassifier(**FAST).fit(Xtr, ytr)
    dist = QuantizedMLPClassifier(**FAST, teacher=LogisticRegression(max_iter=500),
                                  distill_alpha=0.0).fit(Xtr, ytr)
    np.testing.assert_array_equal(plain.decision_function(Xte), dist.decision_function(Xte))
    assert plain.teacher_ is None and hasattr(dist.teacher_, "coef_")


def test_student_follows_a_constant_teacher(wine):
    Xtr, Xte, ytr, _ = wine
    teacher = DummyClassifier(strategy="constant", constant=2)
    plain = QuantizedMLPClassifier(**NO_ES).fit(Xtr, ytr)
    dist = QuantizedMLPClassifier(**NO_ES, teacher=teacher, distill_alpha=1.0).fit(Xtr, ytr)
    assert np.mean(plain.predict(Xte) == 2) < 0.5
    assert np.mean(dist.predict(Xte) == 2) > 0.95
    # half-way: the student moves toward the teacher but keeps learning the labels
    half = QuantizedMLPClassifier(**NO_ES, teacher=teacher, distill_alpha=0.5,
                                  distill_temperature=1.0).fit(Xtr, ytr)
    p2 = [est.predict_proba(Xte)[:, 2].mean() for est in (plain, half, dist)]
    assert p2[0] < p2[1] < p2[2]


def test_soft_targets_follow_their_rows(breast_cancer):
    # an array teacher whose "labels" are flipped: only row-aligned soft targets (through
    # the validation split and the mini-batches) teach the flipped mapping
    Xtr, Xte, ytr, yte = breast_cancer
    flipped = np.eye(2)[1 - ytr] * 0.9 + 0.05
    est = QuantizedMLPClassifier(**NO_ES, teacher=flipped, distill_alpha=1.0).fit(Xtr, ytr)
    assert np.mean(est.predict(Xte) == 1 - yte) > 0.9
    # the early-stopping split keeps soft targets with their rows
    est.set_params(early_stopping=True)
    X_tr, y_tr, X_val, y_val, soft_tr = est._split(Xtr, ytr, True, 0, Xtr[:, :2].copy())
    assert len(X_val) == int(0.1 * len(Xtr)) and len(soft_tr) == len(X_tr)
    np.testing.assert_array_equal(soft_tr, X_tr[:, :2])


def test_regressor_distils_from_teacher(diabetes):
    Xtr, Xte, ytr, _ = diabetes
    teacher = DummyRegressor(strategy="constant", constant=100.0)
    kw = dict(NO_ES, max_epochs=30)
    dist = QuantizedMLPRegressor(**kw, teacher=teacher, distill_alpha=1.0).fit(Xtr, ytr)
    plain = QuantizedMLPRegressor(**kw).fit(Xtr, ytr)
    half = QuantizedMLPRegressor(**kw, teacher=teacher, distill_alpha=0.5).fit(Xtr, ytr)
    err = [np.abs(e.predict(Xte) - 100.0).mean() for e in (plain, half, dist)]
    assert err[0] > 0.5 * ytr.std() and err[2] < 0.15 * ytr.std()
    assert err[2] < err[1] < err[0]
    # an array teacher (one row per sample of X) works too
    arr = QuantizedMLPRegressor(**kw, teacher=np.full(len(Xtr), 100.0),
                                distill_alpha=1.0).fit(Xtr, ytr)
    assert np.abs(arr.predict(Xte) - 100.0).mean() < 0.15 * ytr.std()


def test_fitted_teacher_used_as_is_and_clone_refits(wine):
    Xtr, Xte, ytr, _ = wine
    fitted = LogisticRegression(C=0.1, max_iter=500).fit(Xtr[:60], ytr[:60])
    coef = fitted.coef_.copy()
    est = QuantizedMLPClassifier(**FAST, teacher=fitted).fit(Xtr, ytr)
    assert est.teacher_ is fitted  # not refitted
    np.testing.assert_array_equal(fitted.coef_, coef)
    # clone() clones nested estimators: the clone's teacher is unfitted, refitted in fit
    c = clone(est)
    assert not hasattr(c.teacher, "coef_") and c.teacher.C == 0.1
    c.fit(Xtr, ytr)
    assert c.teacher_ is not c.teacher and c.teacher_.coef_.shape == coef.shape
    assert not np.allclose(c.teacher_.coef_, coef)  # fitted on all of Xtr, not 60 rows
    # pickling keeps the student and its teacher
    p = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(p.predict(Xte), est.predict(Xte))
    np.testing.assert_array_equal(p.teacher_.coef_, coef)


def test_grid_search_over_teacher_and_alpha(wine):
    Xtr, _, ytr, _ = wine
    student = QuantizedMLPClassifier(**dict(FAST, max_epochs=8),
                                     teacher=LogisticRegression(max_iter=500))
    gs = GridSearchCV(student, {"distill_alpha": [0.0, 0.8], "teacher__C": [0.05, 1.0]},
                      cv=2).fit(Xtr, ytr)
    assert len(gs.cv_results_["params"]) == 4
    best = gs.best_estimator_
    assert best.teacher_.C == gs.best_params_["teacher__C"]
    assert hasattr(best.teacher_, "coef_") and not hasattr(student.teacher, "coef_")


def test_prune_fine_tuning_distils(wine):
    Xtr, Xte, ytr, _ = wine
    est = QuantizedMLPClassifier(**dict(NO_ES, hidden_layer_sizes=(16,)),
                                 teacher=DummyClassifier(strategy="constant", constant=2),
                                 distill_alpha=0.0).fit(Xtr, ytr)
    assert np.mean(est.predict(Xte) == 2) < 0.5
    labels_only = est.prune(Xtr, ytr, ratio=0.25, fine_tune_epochs=30)
    est.set_params(distill_alpha=1.0)  # fine-tuning now follows the (constant) teacher
    distilled = est.prune(Xtr, ytr, ratio=0.25, fine_tune_epochs=30)
    assert distilled.module_.config["hidden_sizes"] == [12]
    assert np.mean(labels_only.predict(Xte) == 2) < 0.5
    assert np.mean(distilled.predict(Xte) == 2) > 0.9


def test_estimator_parameter_errors(wine):
    Xtr, _, ytr, _ = wine
    for bad in (dict(distill_alpha=1.5), dict(distill_alpha=-0.1),
                dict(distill_temperature=0.0), dict(distill_temperature=float("nan"))):
        with pytest.raises(ValueError, match="distill_"):
            QuantizedMLPClassifier(**FAST, **bad).fit(Xtr, ytr)
    with pytest.raises(TypeError, match="teacher must be"):
        QuantizedMLPClassifier(**FAST, teacher="logreg").fit(Xtr, ytr)
    other = LogisticRegression(max_iter=500).fit(Xtr, (ytr == 0).astype(int))
    with pytest.raises(ValueError, match="differ from the student's classes"):
        QuantizedMLPClassifier(**FAST, teacher=other).fit(Xtr, ytr)
    with pytest.raises(ValueError, match="expected 10 rows"):
        QuantizedMLPClassifier(**FAST, teacher=np.zeros((len(Xtr), 3))).fit(Xtr[:10], ytr[:10])


def test_fit_teacher_only_fits_unfitted_sklearn_estimators(wine):
    Xtr, _, ytr, _ = wine
    module = torch.nn.Linear(Xtr.shape[1], 3)
    assert fit_teacher(module, Xtr, ytr) is module
    template = LogisticRegression(max_iter=500)
    fitted = fit_teacher(template, Xtr, ytr)
    assert fitted is not template and not hasattr(template, "coef_")
    assert fit_teacher(fitted, Xtr, ytr) is fitted


def test_a_scikit_learn_teacher_sees_the_users_dataframe():
    """A teacher pipeline selecting columns by name got the student's validated array
    ("Specifying the columns using strings is only supported for dataframes"); a teacher
    fitted on the DataFrame warned about missing feature names."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import make_column_transformer
    from sklearn.datasets import make_classification
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(150, 4, n_informative=3, n_redundant=0, random_state=16)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    by_name = make_pipeline(make_column_transformer((StandardScaler(), ["a", "c"])),
                            LogisticRegression())
    kw = dict(hidden_layer_sizes=(8,), max_epochs=5, verbose=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no feature-name warning
        student = QuantizedMLPClassifier(teacher=by_name, **kw).fit(df, y)
        QuantizedMLPClassifier(teacher=LogisticRegression().fit(df, y), **kw).fit(df, y)
    assert list(student.teacher_.feature_names_in_) == ["a", "b", "c", "d"]
    # with a numpy X the teacher is fitted on the array, without feature names
    plain = QuantizedMLPClassifier(teacher=LogisticRegression(), **kw).fit(X, y)
    assert not hasattr(plain.teacher_, "feature_names_in_")

"""QuantizedTorchClassifier / QuantizedTorchRegressor: QAT of a user's float model."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn
from torch_qat_models import digits_images, float_accuracy, train_float, trained_cnn

from latentopt import QuantizedTorchClassifier, QuantizedTorchRegressor


def _clf(**kw):
    params = dict(n_bits={"inputs": 5, "weights": 4, "activations": 4}, max_epochs=4,
                  lr=3e-3, random_state=0, verbose=0)
    params.update(kw)
    return QuantizedTorchClassifier(trained_cnn(), **params)


@pytest.fixture(scope="module")
def fitted():
    X, y = digits_images()
    return _clf().fit(X[:1200], y[:1200])


def test_qat_keeps_the_float_accuracy_and_the_circuit_equals_brevitas(fitted):
    X, y = digits_images()
    Xte, yte = X[1200:], y[1200:]
    ref = float_accuracy(trained_cnn(), Xte, yte)
    assert fitted.score(Xte, yte) >= ref - 0.03
    with torch.no_grad():
        qat = fitted.qat_module_(torch.as_tensor(Xte)).numpy()
    out = fitted.predict_proba(Xte)
    np.testing.assert_array_equal(out.argmax(1), qat.argmax(1))
    assert fitted.history_.n_epochs >= 1 and fitted.n_iter_ == fitted.history_.n_epochs
    assert fitted.input_shape_ == (1, 8, 8) and fitted.n_features_in_ == 64
    # flat inputs are accepted too
    np.testing.assert_array_equal(fitted.predict(Xte.reshape(len(Xte), -1)), fitted.predict(Xte))
    assert fitted.qat_report_["weights"] == {"0": 4, "5": 4, "7": 4}
    assert fitted.circuit_.input_quantizer.n_bits == 5
    assert not fitted.input_signed_  # images in [0, 1]: unsigned input quantizer


def test_fit_does_not_touch_the_module_and_is_reproducible(fitted):
    X, y = digits_images()
    est = _clf()
    before = {k: v.clone() for k, v in est.module.state_dict().items()}
    est.fit(X[:1200], y[:1200])
    assert all(torch.equal(before[k], v) for k, v in est.module.state_dict().items())
    np.testing.assert_array_equal(est.predict(X[1200:]), fitted.predict(X[1200:]))


def test_clone_and_pickle(fitted):
    X, y = digits_images()
    c = clone(fitted)
    assert c.module is not fitted.module and "circuit_" not in c.__dict__
    assert c.get_params()["n_bits"] == fitted.get_params()["n_bits"]
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.predict(X[1200:]), fitted.predict(X[1200:]))
    with torch.no_grad():
        a = again.qat_module_(torch.as_tensor(X[:50])).numpy()
        b = fitted.qat_module_(torch.as_tensor(X[:50])).numpy()
    np.testing.assert_array_equal(a, b)


def test_pipeline_with_flat_features():
    X, y = digits_images()
    flat = X.reshape(len(X), -1)
    torch.manual_seed(0)
    mlp = train_float(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)),
                      flat[:1200] * 2 - 1, y[:1200])
    pipe = make_pipeline(FunctionTransformer(lambda a: (a * 2 - 1).astype(np.float32)),
                         QuantizedTorchClassifier(mlp, n_bits=5, max_epochs=2, random_state=0,
                                                  verbose=0))
    pipe.fit(flat[:1200], y[:1200])
    assert pipe.score(flat[1200:], y[1200:]) > 0.85
    assert pipe[-1].input_signed_
    assert clone(pipe).get_params()["quantizedtorchclassifier__n_bits"] == 5


def test_channel_pruning_removes_lookups():
    X, y = digits_images()
    est = _clf(pruning_ratio=0.5).fit(X[:1200], y[:1200])
    assert est.qat_report_["pruning"]["after"] == {"0": 4, "5": 8, "7": 10}
    full = _clf(max_epochs=0).fit(X[:200], y[:200])
    assert est.circuit_.report().tlu_count < 0.6 * full.circuit_.report().tlu_count
    assert est.score(X[1200:], y[1200:]) > 0.85


def test_fhe_simulation_matches_the_integer_circuit(fitted):
    X, _ = digits_images()
    est = pickle.loads(pickle.dumps(fitted))
    est.compile(rounding_bits=6, rounding_method="exact", p_error=2.0**-40, verbose=0)
    np.testing.assert_array_equal(est.predict(X[1200:1240], fhe="simulate"),
                                  est.predict(X[1200:1240]))
    assert est.fhe_report_["programmable_bootstrap_count"] > 0


def test_regressor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 1))
    train_float(net, X[:300], y[:300, None], epochs=300)
    reg = QuantizedTorchRegressor(net, n_bits=6, max_epochs=10, random_state=0, verbose=0)
    reg.fit(X[:300], y[:300])
    assert reg.predict(X[300:]).shape == (100,)
    assert reg.score(X[300:], y[300:]) > 0.6


def _small_unit_model(factor: float):
    """A trained float regressor of targets in ``factor`` units (trained standardised,
    its scale folded into the output layer, as a user's model of such targets is)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5)).astype(np.float32)
    y = (X @ np.array([1.0, -0.5, 0.3, 0.0, 0.8])).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    train_float(net, X[:200], ((y[:200] - y.mean()) / y.std())[:, None], epochs=300)
    with torch.no_grad():
        net[2].weight.mul_(y.std() * factor)
        net[2].bias.mul_(y.std() * factor).add_(y.mean() * factor)
    return net.eval(), X, (y * factor).astype(np.float64)


def test_a_trained_regressor_of_small_units_keeps_its_accuracy():
    """Fine-tuned in its own units, a model of targets in 1e-4 units scored R^2 -5.6
    (Adam's steps are about lr, its head's weights about 1e-4): its Linear head is now
    rescaled to standardised targets on a copy and the circuit folds the scale back."""
    net, X, y = _small_unit_model(1e-4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reg = QuantizedTorchRegressor(net, n_bits=6, max_epochs=10, random_state=0,
                                  verbose=0).fit(X[:200], y[:200])
    assert reg.target_head_ == "2" and reg.y_scale_[0] < 1e-3
    assert reg.score(X[200:], y[200:]) > 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X[200:]), reg.predict(X[200:]))
    # a model whose output is not a Linear keeps its units, and says what that risks
    tail = nn.Sequential(*net, nn.Identity())
    with pytest.warns(UserWarning, match="not an nn.Linear layer"):
        QuantizedTorchRegressor(nn.Sequential(tail, nn.Tanh()), n_bits=6, max_epochs=1,
                                random_state=0, verbose=0).fit(X[:200], y[:200])


def test_regressor_targets_far_from_zero_and_constant_targets():
    """Targets offset by 1e8 were rounded to float32 before standardising (every target
    the same value: a constant prediction); a constant target came back with the
    network's noise in its units (a constant 2**-10 between -0.0099 and 0.0215)."""
    from latentopt import QuantizedMLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    y = X[:, 0].astype(np.float64) - 0.5 * X[:, 1] + 1e8  # float64, as a user has it

    def factory(shape, n_out):  # noqa: ANN001, ANN202 - test helper
        return nn.Sequential(nn.Linear(shape[0], 8), nn.ReLU(), nn.Linear(8, n_out))

    reg = QuantizedTorchRegressor(factory, n_bits=6, max_epochs=40, lr=1e-2, random_state=0,
                                  verbose=0).fit(X[:200], y[:200])
    assert reg.score(X[200:], y[200:]) > 0.8
    const = QuantizedMLPRegressor(hidden_layer_sizes=(8,), max_epochs=10, random_state=0,
                                  verbose=0).fit(X[:200], np.full(200, 2.0 ** -10))
    np.testing.assert_allclose(const.predict(X[200:]), 2.0 ** -10, rtol=1e-3)


@pytest.mark.parametrize("params, match", [
    (dict(n_bits={"nope": 3}), "unknown key"),
    (dict(n_bits=1), r"\[2, 16\]"),
    (dict(pruning_ratio=1.0), "pruning_ratio"),
    (dict(prune_importance="taylor"), "prune_importance"),
    (dict(max_epochs=-1), "max_epochs"),
    # the output layer "7" was accepted and silently left unpruned
    (dict(pruning_ratio={"7": 0.5}), "output layers"),
    (dict(pruning_ratio={"9": 0.5}), r"unknown layers \['9'\]; prunable: \['0', '5'\]"),
    (dict(batch_size=1), "one-sample batches are not trained on"),
    (dict(distill_alpha=1.5), "distill_alpha"),
    (dict(distill_alpha=0.5, distill_temperature=0.0), "distill_temperature"),
    (dict(early_stopping="no"), "early_stopping must be True or False"),
    (dict(verbose=-1), "verbose must be an int >= 0"),
])
def test_bad_parameters_are_refused_before_training(params, match):
    X, y = digits_images()
    with pytest.raises(ValueError, match=match):
        _clf(**params).fit(X[:50], y[:50])


def test_wrong_number_of_outputs():
    X, y = digits_images()
    with pytest.raises(ValueError, match="outputs"):
        _clf().fit(X[:100], y[:100] % 3)


def test_distillation_learns_the_float_model_not_the_labels():
    """With ``distill_alpha=1`` the student learns the float model's outputs alone: on
    shuffled labels it still agrees with the float model, while label-only fine-tuning
    on the same shuffled labels forgets it."""
    X, y = digits_images()
    teacher = float_accuracy(trained_cnn(), X[1200:1500], y[1200:1500])
    y_shuffled = np.random.default_rng(0).permutation(y[:1200])
    kw = dict(max_epochs=8, lr=1e-2)
    distilled = _clf(distill_alpha=1.0, distill_temperature=2.0, **kw).fit(X[:1200], y_shuffled)
    labels = _clf(**kw).fit(X[:1200], y_shuffled)
    assert distilled.score(X[1200:1500], y[1200:1500]) > teacher - 0.05
    assert labels.score(X[1200:1500], y[1200:1500]) < teacher - 0.3
    assert distilled.get_params()["distill_alpha"] == 1.0
    assert clone(distilled).get_params()["distill_temperature"] == 2.0


def test_distillation_needs_a_trained_module():
    from latentopt.nn.factories import MLPFactory

    X, y = digits_images()
    est = QuantizedTorchClassifier(MLPFactory((8,)), distill_alpha=0.5, verbose=0)
    with pytest.raises(ValueError, match="trained float module"):
        est.fit(X[:50], y[:50])


def test_regressor_distillation_follows_the_teacher():
    """A regressor distilled with ``distill_alpha=1`` on noise targets still fits the
    float model's function (its outputs, in target units)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1]).astype(np.float32)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    train_float(net, X[:300], y[:300, None], epochs=300)
    noise = rng.normal(size=300).astype(np.float32)
    reg = QuantizedTorchRegressor(net, n_bits=6, max_epochs=10, distill_alpha=1.0,
                                  random_state=0, verbose=0).fit(X[:300], noise)
    assert reg.score(X[300:], y[300:]) > 0.6


def test_estimators_pickled_before_distillation_still_load(fitted):
    state = fitted.__getstate__()
    del state["distill_alpha"], state["distill_temperature"]  # as an older release wrote it
    old = QuantizedTorchClassifier.__new__(QuantizedTorchClassifier)
    old.__setstate__(state)
    assert old.get_params()["distill_alpha"] == 0.0
    X, _ = digits_images()
    np.testing.assert_array_equal(old.predict(X[1200:1300]), fitted.predict(X[1200:1300]))


class _FunctionalPoolCNN(nn.Module):
    """Written as users write it: F.avg_pool2d(x, 2) with positional arguments, and a
    flatten size hard-coded in view()."""

    def __init__(self, hard_coded: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(64, 10)
        self.hard_coded = hard_coded

    def forward(self, x):  # type: ignore[no-untyped-def]
        import torch.nn.functional as F

        x = F.avg_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(x.view(-1, 64) if self.hard_coded else torch.flatten(x, 1))


def test_functional_average_pooling_and_hard_coded_sizes_under_pruning():
    """F.avg_pool2d(x, 2) failed in QAT training inside brevitas ("avg_pool2d_handler()
    missing 5 required positional arguments"); pruning a model whose forward hard-codes
    a flatten size failed with torch's "mat1 and mat2 shapes cannot be multiplied"."""
    X, y = digits_images()
    torch.manual_seed(0)
    net = train_float(_FunctionalPoolCNN(), X[:600], y[:600], epochs=30)
    clf = QuantizedTorchClassifier(net, n_bits=5, max_epochs=2, lr=3e-3, random_state=0,
                                   verbose=0).fit(X[:600], y[:600])
    with torch.no_grad():
        qat = clf.qat_module_(torch.as_tensor(X[600:800])).numpy()
    np.testing.assert_array_equal(clf.predict_proba(X[600:800]).argmax(1), qat.argmax(1))
    assert clf.score(X[600:800], y[600:800]) > 0.6
    hard = _FunctionalPoolCNN(hard_coded=True)
    hard.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match=r"size written in forward such as x.view\(-1, 64\)"):
        QuantizedTorchClassifier(hard, n_bits=5, pruning_ratio=0.5, max_epochs=1,
                                 random_state=0, verbose=0).fit(X[:600], y[:600])


def test_a_regressor_with_a_bias_free_head_pickles():
    """Standardising the head gives the training copy a bias the user's module lacks:
    unpickling rebuilt from the user's module and failed ("Unexpected key(s) in
    state_dict: '2.bias'")."""
    import pickle

    from latentopt import QuantizedTorchRegressor

    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0])
    reg = QuantizedTorchRegressor(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1, bias=False)), n_bits=6,
        max_epochs=2, random_state=0, verbose=0).fit(X, y)
    assert reg.target_head_ == "2"
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X), reg.predict(X))


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.h1, self.h2 = nn.Linear(144, 10), nn.Linear(144, 10)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = torch.flatten(torch.relu(self.conv(x)), 1)
        return self.h1(x) + self.h2(x)


def test_a_classifier_whose_output_is_a_sum_trains():
    """A quantized sum is a brevitas QuantTensor, whose len() is its number of fields
    (6): the loss reshaped it to 6 rows ("shape '[6, -1]' is invalid")."""
    X, y = digits_images()
    torch.manual_seed(0)
    clf = QuantizedTorchClassifier(_TwoHeads(), n_bits=6, max_epochs=2, lr=3e-3,
                                   random_state=0, verbose=0).fit(X[:300], y[:300])
    assert clf.history_.n_epochs == 2 and clf.score(X[300:500], y[300:500]) > 0.3



class _TensorMethods(nn.Module):
    """Tensor methods that brevitas' quantized tensors lack (x.mean failed in training:
    "'IntQuantTensor' object has no attribute 'mean'")."""

    def __init__(self, form: int) -> None:
        super().__init__()
        self.form = form
        self.conv, self.fc, self.flat = nn.Conv1d(2, 4, 3), nn.Linear(4, 2), nn.Linear(24, 2)

    def forward(self, x):  # type: ignore[no-untyped-def]
        h = self.conv(x)
        if self.form == 0:
            return self.fc(h.relu().mean(dim=2))
        if self.form == 1:
            return self.fc(torch.relu(h).mul(0.5).swapaxes(1, 2).mean(1))
        return self.flat(torch.relu(h).flatten(1).unflatten(1, (4, 6)).flatten(1).div(2.0))


@pytest.mark.parametrize("form", [0, 1, 2])
def test_tensor_methods_train_and_the_circuit_equals_brevitas(form):
    rng = np.random.RandomState(0)
    X = rng.randn(200, 2, 8).astype(np.float32)
    y = (X[:, 0].mean(1) > 0).astype(int)
    torch.manual_seed(0)
    clf = QuantizedTorchClassifier(_TensorMethods(form), n_bits=6, max_epochs=20, lr=1e-2,
                                   random_state=0, verbose=0).fit(X, y)
    with torch.no_grad():
        qat = clf.qat_module_(torch.as_tensor(X)).numpy()
    np.testing.assert_array_equal(clf.predict_proba(X).argmax(1), qat.argmax(1))
    assert clf.score(X, y) > 0.65  # chance: 0.5


def test_targets_beyond_the_heads_float32_range_are_refused():
    """A trained module's head is standardised by y's scale: at 1e-170 it overflowed
    float32 and the fit failed in the trace check on NaN outputs."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    est = QuantizedTorchRegressor(model, n_bits=4, max_epochs=1, verbose=0, random_state=0)
    with pytest.raises(ValueError, match=r"targets' scale \(.*e-17[01]\) is beyond"):
        est.fit(X, X[:, 0] * 1e-170)

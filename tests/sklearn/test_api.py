"""One estimator API: the same methods everywhere, outputs in user units, documented state."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.metrics import accuracy_score, r2_score

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor, QuantizedTorchModel
from latentopt.backends.integer import IntegerBackend
from latentopt.sklearn.base import COMPILED_ATTRIBUTES, FHE_COMPILER_OPTIONS
from latentopt.sklearn.deprecated import upgrade_state

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=2, n_a_bits=2, n_input_bits=3, max_epochs=40,
            lr=1e-2, random_state=0, verbose=0)
TINY_P = 2.0**-40


def _api_table():
    path = Path(__file__).resolve().parents[2] / "docs" / "_ext" / "api_table.py"
    spec = importlib.util.spec_from_file_location("api_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _key_cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "api-key-cache"
    path.mkdir(exist_ok=True)
    for cls in (QuantizedMLPClassifier, QuantizedMLPRegressor, QuantizedTorchModel):
        monkeypatch.setattr(cls, "_insecure_key_cache", str(path), raising=False)


@pytest.fixture(scope="module")
def tiny_reg():
    rng = np.random.RandomState(1)
    X = rng.randn(150, 4)
    y = 50.0 + 20.0 * (X[:, 0] - 0.5 * X[:, 1])  # far from standardised units
    return QuantizedMLPRegressor(**TINY).fit(X, y), X, y


# ------------------------------------------------------------------ the API table
def test_api_table_page_is_generated_from_the_code():
    table = _api_table()
    assert table.PAGE.read_text() == table.render(), (
        "docs/api-table.md is out of date: run `python docs/_ext/api_table.py`")


def test_shared_methods_have_one_signature_on_every_estimator():
    table = _api_table()
    methods = [table.public_methods(cls) for cls in table.estimator_classes()]
    for name in table.CORE_METHODS:
        assert all(name in m for m in methods), name
    for name in set().union(*methods):
        signatures = {m[name] for m in methods if name in m}
        assert len(signatures) == 1, (name, signatures)
    assert "fhe: str | None = None" in methods[0]["score"]
    assert "seed: int | None = None" in methods[0]["keygen"]
    assert "**options" in methods[0]["to_onnx"]


def test_builders_take_the_compile_options_with_its_defaults():
    options = _api_table().builder_options()
    for name in (*FHE_COMPILER_OPTIONS, "rounding_bits", "rounding_method"):
        defaults = {repr(opts[name]) for opts in options.values()}
        assert len(defaults) == 1, (name, options)


def test_base_score_wins_over_the_sklearn_mixins():
    for cls in (QuantizedMLPClassifier, QuantizedMLPRegressor, QuantizedTorchModel):
        assert "fhe" in inspect.signature(cls.score).parameters, cls


# ------------------------------------------------------------- documented state
@pytest.mark.parametrize("which", ["clf", "reg"])
def test_documented_attributes_exist_after_fit_and_compile(which, fitted_wine_clf,
                                                          fitted_diabetes_reg, wine, diabetes):
    est, data = (fitted_wine_clf, wine) if which == "clf" else (fitted_diabetes_reg, diabetes)
    est = pickle.loads(pickle.dumps(est))
    documented = _api_table().fitted_attributes(type(est))
    assert set(COMPILED_ATTRIBUTES) | {"circuit_", "calibration_set_"} <= set(documented)
    est.compile(data[0][:40], rounding_bits=4, p_error=0.01)
    missing = [a for a in documented if a != "inner_search_" and not hasattr(est, a)]
    assert not missing
    assert not [k for k in vars(est) if k.startswith("_") and not k.startswith("__")
                and k not in ("_backend",)], "fitted state in private names"


def test_compiled_state_is_options_not_data(tiny_reg):
    reg, X, y = tiny_reg
    reg = pickle.loads(pickle.dumps(reg))
    reg.compile(rounding_bits=3, p_error=TINY_P)
    assert reg.compile_inputset_ is None  # the default calibration set was used
    assert not any(isinstance(v, np.ndarray) for v in reg.compile_options_.values())
    assert set(FHE_COMPILER_OPTIONS) <= set(reg.compile_options_)
    reg.compile(X[:60], rounding_bits=3, rounding_method="exact", p_error=TINY_P)
    assert reg.compile_inputset_.dtype.kind == "i" and len(reg.compile_inputset_) == 60
    assert "X" not in reg.compile_options_
    # unpickled: the TFHE program is rebuilt from rounded_circuit_ + options + inputset
    copy = pickle.loads(pickle.dumps(reg))
    assert copy.fhe_circuit_ is None
    np.testing.assert_array_equal(copy.predict(X, fhe="simulate"), reg.predict(X))
    assert copy.fhe_report_ == reg.fhe_report_
    assert (copy.fhe_circuit_.report["max_tlu_input_bits"]
            == reg.fhe_report_["max_tlu_input_bits"])


def test_unfitted_pickle_stays_unfitted():
    from sklearn.exceptions import NotFittedError

    est = pickle.loads(pickle.dumps(QuantizedMLPClassifier()))
    assert vars(est) == vars(QuantizedMLPClassifier())
    with pytest.raises(NotFittedError):
        est.predict(np.zeros((1, 2)))


# --------------------------------------------------------------- user units
def test_regressor_outputs_are_in_target_units_on_every_path(tiny_reg, tmp_path):
    from latentopt.backends.onnx_export import OnnxRunner

    reg, X, y = tiny_reg
    reg = pickle.loads(pickle.dumps(reg))
    pred = reg.predict(X)
    assert abs(pred.mean() - y.mean()) < 0.2 * y.std()  # target units, not standardised
    out = reg.circuit_.output
    np.testing.assert_allclose(out.offset, reg.y_mean_)
    # the integer backend on the bare circuit: no post-processing left in predict
    np.testing.assert_allclose(IntegerBackend(reg.circuit_).predict(X).ravel(), pred)
    onnx_out = OnnxRunner(reg.to_onnx(tmp_path / "reg.onnx")).predict(X)
    np.testing.assert_allclose(np.asarray(onnx_out).ravel(), pred, rtol=1e-9, atol=1e-9)
    reg.compile(rounding_bits=3, rounding_method="exact", p_error=TINY_P)
    np.testing.assert_array_equal(reg.predict(X, fhe="simulate"), reg.predict(X))
    np.testing.assert_allclose(
        np.asarray(OnnxRunner(reg.to_onnx(tmp_path / "rounded.onnx")).predict(X)).ravel(),
        reg.predict(X), rtol=1e-9, atol=1e-9)
    assert r2_score(y, reg.predict(X)) == pytest.approx(reg.score(X, y, fhe="simulate"))


def test_two_target_regressor_folds_each_target(rng):
    X = rng.randn(120, 3)
    Y = np.c_[X[:, 0] * 5 + 100, -X[:, 1] * 0.01]
    reg = QuantizedMLPRegressor(**TINY).fit(X, Y)
    assert reg.predict(X).shape == (120, 2)
    np.testing.assert_allclose(reg.circuit_.output.offset, Y.mean(0))
    np.testing.assert_allclose(reg.predict(X), IntegerBackend(reg.circuit_).predict(X))


def test_score_takes_fhe_and_sample_weight(fitted_wine_clf, wine):
    _, Xte, _, yte = wine
    clf = pickle.loads(pickle.dumps(fitted_wine_clf))
    # a negligible p_error: simulation is deterministic, two runs agree
    clf.compile(rounding_bits=4, rounding_method="exact", p_error=TINY_P)
    w = np.linspace(0.1, 1.0, len(yte))
    sim = clf.predict(Xte, fhe="simulate")
    assert clf.score(Xte, yte, fhe="simulate") == pytest.approx(accuracy_score(yte, sim))
    assert clf.score(Xte, yte, sample_weight=w) == pytest.approx(
        accuracy_score(yte, clf.predict(Xte), sample_weight=w))
    with pytest.raises(ValueError, match="fhe"):
        clf.score(Xte, yte, fhe="encrypted")


def test_torch_model_task_sets_its_estimator_type():
    import torch

    X = np.random.RandomState(0).randn(60, 4).astype(np.float32)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    from latentopt import compile_torch_model

    clf = compile_torch_model(net, X, n_bits=6, task="classification", fhe=True,
                              rounding_bits=4, range_margin=0.0, batch_size=1, verbose=0)
    assert is_classifier(clf) and not is_regressor(clf)
    assert clf.compile_options_["range_margin"] == 0.0 and clf.fhe_circuit_.batch_size == 1
    y = clf.predict(X)
    assert clf.score(X, y, fhe="simulate") > 0.9
    reg = compile_torch_model(net, X, n_bits=6, task="regression", fhe=False, verbose=0)
    assert is_regressor(reg) and reg.fhe_circuit_ is None
    assert reg.score(X, reg.predict(X)) == pytest.approx(1.0)


# ----------------------------------------------------------- renames and old pickles
def test_deprecated_names_warn_and_forward(fitted_wine_clf, wine):
    clf = pickle.loads(pickle.dumps(fitted_wine_clf))
    clf.compile(rounding_bits=4, p_error=0.01)
    with pytest.warns(FutureWarning, match="fhe_report_"):
        assert clf.compiled_report_ is clf.fhe_report_
    with pytest.warns(FutureWarning, match="rounded_circuit_"):
        assert clf.compiled_circuit_ is clf.rounded_circuit_
    with pytest.warns(FutureWarning, match="bit_width_report"):
        assert clf.report().layers == clf.circuit_.report().layers
    with pytest.warns(FutureWarning):
        clf.compiled_circuit_ = None  # what older callers do to score the unrounded circuit
    assert clf.rounded_circuit_ is None and clf.active_circuit_ is clf.circuit_
    assert clone(clf).get_params() == clf.get_params()


def test_old_regressor_pickle_is_upgraded(tiny_reg):
    reg, X, _ = tiny_reg
    state = reg.__getstate__()
    # the state as pickled before the renames: private names, targets not folded
    out = state["circuit_"].output
    unfolded = dataclasses.replace(out, scale=out.scale / reg.y_scale_, offset=0.0)
    state["circuit_"] = state["circuit_"].replace(nodes=[*list(state["circuit_"])[:-1],
                                                          unfolded])
    state["_y_1d"] = state.pop("y_ndim_") == 1
    state["_hidden"] = state.pop("hidden_layer_sizes_")
    state["compiled_circuit_"] = state.pop("rounded_circuit_")
    state["compiled_report_"] = state.pop("fhe_report_")
    for key in ("compile_options_", "compile_inputset_"):
        state.pop(key)
    state["_compile_kwargs"] = None
    old = QuantizedMLPRegressor.__new__(QuantizedMLPRegressor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old.__setstate__(state)
    np.testing.assert_allclose(old.predict(X), reg.predict(X))
    assert old.hidden_layer_sizes_ == reg.hidden_layer_sizes_ and old.y_ndim_ == 1
    assert not [k for k in vars(old) if k.startswith("_") and k not in ("_backend", "_runtime")]


def test_upgrade_state_drops_the_calibration_array():
    from latentopt.ir import Circuit, Dequantize, Gemm, QuantizeInput

    c = Circuit([QuantizeInput("q", ("input",), 0.5, 0, 4), Gemm("g", ("q",), [[2, -1]]),
                 Dequantize("out", ("g",), 0.5, 0)], n_features=2)
    X = np.array([[1.0, 0.5], [-1.0, 2.0]])
    new = upgrade_state({"compiled_circuit_": c, "_compile_kwargs": dict(
        X=X, rounding_bits=3, p_error=0.01, verbose=1)})
    assert new["rounded_circuit_"] is c and "_compile_kwargs" not in new
    assert new["compile_options_"] == {"rounding_bits": 3, "p_error": 0.01}
    np.testing.assert_array_equal(new["compile_inputset_"], [[2, 1], [-2, 4]])


@pytest.mark.fhe
def test_regressor_deployment_client_returns_target_units(tiny_reg, tmp_path):
    from latentopt.backends.fhe_deploy import FHEClient, FHEServer

    reg, X, _ = tiny_reg
    reg = pickle.loads(pickle.dumps(reg))
    reg.compile(rounding_bits=3, rounding_method="exact", p_error=TINY_P)
    paths = reg.save_deployment(tmp_path)
    client = FHEClient.load(paths["client"], insecure_key_cache=type(reg)._insecure_key_cache)
    client.keygen()
    server = FHEServer.load(paths["server"])
    keys = server.load_evaluation_keys(client.evaluation_keys())
    out = client.decrypt(server.run(client.encrypt(X[:3]), keys))
    np.testing.assert_allclose(out.ravel(), reg.predict(X[:3]), rtol=1e-12)

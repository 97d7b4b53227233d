"""compile() / predict(fhe=...) / keygen() on the estimators (tiny circuits)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor
from latentopt.backends.fhe import FHEBitWidthError
from latentopt.backends.integer import IntegerBackend

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=2, n_a_bits=2, n_input_bits=3, max_epochs=40,
            lr=1e-2, random_state=0, verbose=0)


@pytest.fixture(autouse=True)
def _key_cache(tmp_path_factory, monkeypatch):
    """concrete's insecure key cache, for the test suite only."""
    path = tmp_path_factory.getbasetemp() / "fhe-key-cache"
    path.mkdir(exist_ok=True)
    for cls in (QuantizedMLPClassifier, QuantizedMLPRegressor):
        monkeypatch.setattr(cls, "_insecure_key_cache", str(path), raising=False)


@pytest.fixture(scope="module")
def tiny_clf(request):
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    X, y = load_wine(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    sc = StandardScaler().fit(Xtr)
    clf = QuantizedMLPClassifier(**TINY).fit(sc.transform(Xtr), ytr)
    return clf, sc.transform(Xtr), sc.transform(Xte), yte


def test_predict_fhe_before_compile_is_refused(tiny_clf):
    clf, _, Xte, _ = tiny_clf
    fresh = pickle.loads(pickle.dumps(clf))
    fresh.fhe_circuit_ = None
    fresh.compile_options_ = None
    for mode in ("simulate", "execute"):
        with pytest.raises(RuntimeError, match="compile"):
            fresh.predict(Xte, fhe=mode)
    with pytest.raises(RuntimeError, match="compile"):
        fresh.keygen()


def test_simulation_matches_integer_backend_exactly(tiny_clf):
    clf, Xtr, Xte, yte = tiny_clf
    clf.compile(rounding_bits=3, rounding_method="exact", p_error=2**-40)
    rep = clf.fhe_report_
    assert rep["max_tlu_input_bits"] <= 3
    assert rep["programmable_bootstrap_count"] >= 6
    assert {"complexity", "size_of_evaluation_keys", "p_error"} <= set(rep)
    # the integer backend reproduces the rounded circuit: fhe="disable" == FHE simulation
    backend = IntegerBackend(clf.rounded_circuit_)
    q = backend.quantize(Xte)
    np.testing.assert_array_equal(clf.fhe_circuit_.simulate(q), backend.run_integers(q))
    np.testing.assert_array_equal(clf.predict(Xte, fhe="simulate"),
                                  clf.predict(Xte, fhe="disable"))
    assert clf.score(Xte, yte) > 0.8


def test_rounding_lowers_tlu_bits_and_keeps_accuracy(tiny_clf):
    clf, Xtr, Xte, yte = tiny_clf
    clf.compile(p_error=2**-40)
    wide = clf.fhe_report_["max_tlu_input_bits"]
    clf.compile(rounding_bits=2, p_error=2**-40)
    assert clf.fhe_report_["max_tlu_input_bits"] <= 2 < wide
    assert clf.rounded_circuit_.report().layers[0]["rounding_lsbs"] >= 1
    # fhe="disable" now runs the rounded circuit, i.e. what FHE computes
    assert clf.active_circuit_ is clf.rounded_circuit_


@pytest.mark.fhe
def test_execute_equals_simulate(tiny_clf):
    clf, _, Xte, _ = tiny_clf
    clf.compile(rounding_bits=3, rounding_method="exact", p_error=2**-40)
    assert clf.keygen() >= 0.0
    # fhe_report_ was a copy taken at compile: keygen's seconds never reached it
    assert clf.fhe_report_["keygen_seconds"] >= 0.0 and "warmup_seconds" in clf.fhe_report_
    X = Xte[:5]
    np.testing.assert_array_equal(clf.predict(X, fhe="execute"), clf.predict(X, fhe="simulate"))
    proba = clf.predict_proba(X, fhe="execute")
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_fhe_mode_through_pipeline_and_pickle(tiny_clf):
    clf, Xtr, Xte, yte = tiny_clf
    pipe = make_pipeline(StandardScaler().fit(Xtr), clf)
    clf.compile(rounding_bits=3, p_error=0.01)
    pipe.set_params(quantizedmlpclassifier__fhe_mode="simulate")
    assert pipe.predict(Xte).shape == (len(Xte),)
    pipe.set_params(quantizedmlpclassifier__fhe_mode="disable")
    # compiled circuits do not pickle: the copy recompiles on first FHE use
    copy = pickle.loads(pickle.dumps(clf))
    assert getattr(copy, "fhe_circuit_", None) is None
    copy.compile(rounding_bits=3, rounding_method="exact", p_error=2**-40)
    np.testing.assert_array_equal(copy.predict(Xte, fhe="simulate"), copy.predict(Xte))
    lazy = pickle.loads(pickle.dumps(copy))
    np.testing.assert_array_equal(lazy.predict(Xte, fhe="simulate"), copy.predict(Xte))


def test_p_error_options_are_validated(tiny_clf):
    clf, *_ = tiny_clf
    with pytest.raises(ValueError, match="p_error"):
        clf.compile(p_error=0.01, global_p_error=0.01)
    with pytest.raises(ValueError, match="rounding_method"):
        clf.compile(rounding_method="floor")
    with pytest.raises(ValueError, match="range_mode"):
        clf.compile(range_mode="optimistic")
    with pytest.raises(ValueError, match="parameter_strategy"):
        clf.compile(parameter_strategy="fastest")
    with pytest.raises(ValueError, match="equalize must be a bool"):  # "no" was True
        clf.compile(equalize="no")
    import copy

    _, Xtr, Xte, yte = tiny_clf  # labels without "auto" were ignored without a word
    with pytest.warns(UserWarning, match="y is used only with rounding_bits='auto'"):
        copy.deepcopy(clf).compile(Xte, yte, rounding_bits=3)


def test_parameter_strategy_reaches_the_compiler(tiny_clf):
    import copy

    clf = copy.deepcopy(tiny_clf[0])  # one lookup layer: "auto" is concrete's default
    assert clf.compile(rounding_bits=4).fhe_report_["parameter_strategy"] == "precision"
    clf.compile(rounding_bits=4, parameter_strategy="precision_and_norm2")
    assert clf.fhe_report_["parameter_strategy"] == "precision_and_norm2"
    assert clf.compile_options_["parameter_strategy"] == "precision_and_norm2"


def test_wide_accumulator_without_rounding_is_explained():
    rng = np.random.RandomState(0)
    X = rng.randn(200, 64)
    y = (X[:, 0] > 0).astype(int)
    clf = QuantizedMLPClassifier(hidden_layer_sizes=(4,), n_w_bits=8, n_a_bits=8, n_input_bits=8,
                                 max_epochs=2, random_state=0, verbose=0).fit(X, y)
    with pytest.raises(FHEBitWidthError, match="fc0") as info:
        clf.compile(range_mode="worst_case")
    assert "round" in str(info.value)
    clf.compile(rounding_bits=6, range_mode="worst_case", p_error=0.01)  # rounding fixes it
    assert clf.fhe_report_["max_tlu_input_bits"] <= 6


def test_regressor_compiles_and_simulates():
    rng = np.random.RandomState(1)
    X = rng.randn(150, 4)
    y = X[:, 0] - 0.5 * X[:, 1]
    reg = QuantizedMLPRegressor(**TINY).fit(X, y)
    reg.compile(rounding_bits=3, rounding_method="exact", p_error=2**-40)
    np.testing.assert_allclose(reg.predict(X, fhe="simulate"), reg.predict(X))


@pytest.mark.fhe
def test_save_deployment_round_trip(tiny_clf, tmp_path):
    from latentopt.backends.fhe_deploy import FHEClient, FHEServer

    clf, _, Xte, _ = tiny_clf
    clf.compile(rounding_bits=3, rounding_method="exact", p_error=2**-40)
    paths = clf.save_deployment(tmp_path)
    client = FHEClient.load(paths["client"],
                            insecure_key_cache=type(clf)._insecure_key_cache)
    client.keygen()
    server = FHEServer.load(paths["server"])
    keys = server.load_evaluation_keys(client.evaluation_keys())
    out = client.decrypt(server.run(client.encrypt(Xte[:3]), keys))
    np.testing.assert_array_equal(clf.classes_[out.argmax(1)], clf.predict(Xte[:3]))


def test_range_margin_prevents_overflow_beyond_calibration(tiny_clf):
    clf, Xtr, Xte, _ = tiny_clf
    # calibrate on a narrow slice of the data: the rest lies beyond its ranges
    narrow = Xtr[:15]
    q = clf._integer_backend().quantize(Xte)
    clf.compile(narrow, p_error=2**-40, range_mode="calibrated", range_margin=0.0)
    tight = int(clf.fhe_circuit_.overflows(clf._integer_backend().quantize(Xte)).sum())
    clf.compile(narrow, p_error=2**-40, range_mode="calibrated", range_margin=1.0)
    wide = int(clf.fhe_circuit_.overflows(q).sum())
    assert wide < tight
    with pytest.raises(ValueError, match="range_margin"):
        clf.compile(range_margin=-1.0)


@pytest.mark.fhe
def test_fhe_profile_breaks_one_prediction_down(tiny_clf):
    from latentopt.search.cost import PRIOR, CostModel

    clf, _, Xte, _ = tiny_clf
    clf.compile(rounding_bits=3, p_error=0.01)
    with pytest.raises(ValueError, match="features"):
        clf.fhe_profile(Xte[:1, :3])
    p = clf.fhe_profile(Xte[2:9], repeats=2, cost_model=CostModel(PRIOR, 2.0, {}))
    assert list(p.stages) == ["quantize", "range check", "encrypt", "run", "decrypt",
                              "dequantize", "python"]
    assert all(v >= 0 for v in p.stages.values()) and p.stages["run"] > 0
    assert p.total >= sum(p.stages.values()) - 1e-9
    assert p.first_run is not None  # the keys were generated by this call
    assert p.floor is not None and 0 < p.floor
    assert p.info["pbs_count"] == clf.fhe_report_["programmable_bootstrap_count"]
    assert clf.fhe_circuit_.warm

"""No silent overflow: ``range_mode="worst_case"`` is exact on every input, and the default
``"calibrated"`` tells the user (in process, and on the deployed client side)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier
from latentopt.backends.fhe import FHEOverflowError
from latentopt.ir.inputs import InputRangeWarning

TINY = dict(hidden_layer_sizes=(6,), n_w_bits=2, n_a_bits=2, n_input_bits=3, max_epochs=30,
            lr=1e-2, random_state=0, verbose=0)
EXACT = dict(rounding_bits=3, rounding_method="exact", p_error=2**-40)  # deterministic TLUs


@pytest.fixture(autouse=True)
def _key_cache(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "fhe-key-cache"
    path.mkdir(exist_ok=True)
    monkeypatch.setattr(QuantizedMLPClassifier, "_insecure_key_cache", str(path), raising=False)


@pytest.fixture(scope="module")
def fitted():
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = QuantizedMLPClassifier(**TINY).fit(X[::2], y[::2])
    return clf, X[::2], X[1::2]


def _ood(X):
    return {"scaled x50": X * 50, "shifted +8": X + 8, "shifted -8": X - 8}


def test_worst_case_is_exact_out_of_distribution(fitted):
    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_mode="worst_case", **EXACT)  # narrow calibration: no matter
    report = clf.fhe_report_
    assert report["range_mode"] == "worst_case"
    qlo, qhi = clf.rounded_circuit_.input_quantizer.qrange
    assert tuple(report["input_range"]) == (qlo, qhi)
    assert report["input_box"] == [[qlo] * Xte.shape[1], [qhi] * Xte.shape[1]]
    for name, X in _ood(Xte).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow to warn about (the inputs are
            # clipped to the quantizer's range, which the disable mode does alike)
            warnings.simplefilter("ignore", InputRangeWarning)
            sim = clf.predict(X, fhe="simulate")
        np.testing.assert_array_equal(sim, clf.predict(X, fhe="disable"), err_msg=name)
        q = clf._integer_backend().quantize(X)
        assert not clf.fhe_circuit_.overflows(q).any()


def test_calibrated_default_warns_or_raises_on_overflow(fitted):
    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_margin=0.0, **EXACT)
    assert clf.fhe_report_["range_mode"] == "calibrated"  # the default
    X = Xte + 8
    q = clf._integer_backend().quantize(X)
    affected = int(clf.fhe_circuit_.overflows(q).sum())
    assert affected > 0
    assert affected > 0
    with pytest.warns(UserWarning, match=f"{affected} of {len(X)} samples"):
        clf.predict(X, fhe="simulate")
    with warnings.catch_warnings():  # in-distribution samples: silent
        warnings.simplefilter("error")
        clf.predict(Xtr[:10], fhe="simulate")
    clf.compile(Xtr[:10], range_mode="calibrated", range_margin=0.0, on_overflow="raise",
                **EXACT)
    with pytest.raises(FHEOverflowError, match="worst_case"):
        clf.predict(X, fhe="simulate")
    with pytest.raises(ValueError, match="on_overflow"):
        clf.compile(range_mode="calibrated", on_overflow="ignore", **EXACT)


def test_calibrated_never_silently_wrong(fitted):
    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_margin=0.0, **EXACT)  # narrow calibration set
    wrong_somewhere = False
    for name, X in _ood(Xte).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sim = clf.predict(X, fhe="simulate")
        wrong = sim != clf.predict(X, fhe="disable")
        told = [w for w in caught if "range_mode='calibrated'" in str(w.message)]
        assert not wrong.any() or told, name  # every difference is announced
        wrong_somewhere |= bool(wrong.any())
    assert wrong_somewhere  # the check is not vacuous on these inputs


def test_calibrated_input_box_is_what_is_enforced(fitted):
    clf, Xtr, _ = fitted
    narrow = Xtr[:10]
    clf.compile(narrow, range_mode="calibrated", range_margin=0.25, **EXACT)
    q = clf._integer_backend().quantize(narrow)
    lo, hi = (np.asarray(b) for b in clf.fhe_report_["input_box"])
    qlo, qhi = clf.rounded_circuit_.input_quantizer.qrange
    span = q.max(0) - q.min(0)
    np.testing.assert_array_equal(lo, np.maximum(q.min(0) - np.ceil(0.25 * span), qlo))
    assert (hi >= q.max(0)).all() and (hi <= qhi).all()
    assert tuple(clf.fhe_report_["input_range"]) == (lo.min(), hi.max())
    assert ((lo > qlo) | (hi < qhi)).any()  # not the whole quantizer range


def test_integer_backend_reports_overflowing_samples(fitted):
    clf, Xtr, Xte = fitted
    from latentopt.backends.integer import IntegerBackend

    backend = IntegerBackend(clf.circuit_)
    q = backend.quantize(Xte)
    _, values = backend.run_integers(q, return_all=True)
    name = clf.circuit_.nodes[1].name  # the first accumulator
    v = values[name].reshape(len(q), -1)
    cut = int(np.median(v.max(axis=1)))  # widths that half the samples exceed
    lo = int(v.min())
    widths = {name: (lo, int(np.floor(np.log2(cut - lo + 1))))}
    bits = widths[name][1]
    expected = ((v - lo) >= (1 << bits)).any(axis=1)
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(backend.overflows(q, widths), expected)


def test_deployed_client_checks_the_calibrated_box(fitted, tmp_path):
    from latentopt.backends.fhe_deploy import FHEClient

    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_mode="calibrated", range_margin=0.0, **EXACT)
    # the box is the client's only check: the export says what it cannot catch
    with pytest.warns(UserWarning, match="a sample inside it can still overflow"):
        client = FHEClient.load(clf.save_deployment(tmp_path / "cal")["client"])
    q = client.quantize(Xte + 8)
    lo, hi = (np.asarray(b) for b in clf.fhe_report_["input_box"])
    n_out = int(((q < lo) | (q > hi)).any(axis=1).sum())
    assert n_out > 0
    with pytest.warns(UserWarning, match=f"{n_out} of {len(q)} samples"):
        clipped = client.clip_to_box(q)
    np.testing.assert_array_equal(clipped, np.clip(q, lo, hi))
    clf.compile(Xtr[:10], range_mode="calibrated", on_overflow="raise", **EXACT)
    with pytest.warns(UserWarning, match="range_mode='worst_case' for a deployment"):
        client = FHEClient.load(clf.save_deployment(tmp_path / "raise")["client"])
    with pytest.raises(FHEOverflowError):
        client.clip_to_box(client.quantize(Xte + 8))
    clf.compile(Xtr[:10], range_mode="worst_case", **EXACT)  # no box to clip to, no word
    with warnings.catch_warnings():  # (but +8 standard deviations is far outside the
        warnings.simplefilter("error")  # quantizer's range: that is said, below)
        client = FHEClient.load(clf.save_deployment(tmp_path / "wc")["client"])
        warnings.simplefilter("ignore", InputRangeWarning)
        np.testing.assert_array_equal(client.clip_to_box(client.quantize(Xte + 8)),
                                      client.quantize(Xte + 8))


def test_samples_outside_the_box_are_clipped_to_it_as_the_deployed_client_does(fitted):
    """``predict(fhe=...)`` clipped only to the quantizer's range and let intermediate
    values overflow, while a deployment's client clips to the calibrated input box: the
    same sample got other logits from ``fhe="execute"`` and from the client."""
    from latentopt.backends.integer import IntegerBackend

    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_margin=0.0, **EXACT)
    X = Xte * 10
    lo, hi = (np.asarray(b) for b in clf.fhe_report_["input_box"])
    backend = IntegerBackend(clf.rounded_circuit_)
    q = backend.quantize(X)
    assert ((q < lo) | (q > hi)).any(axis=1).all()
    with pytest.warns(UserWarning, match=r"outside its calibrated input box \(clipped to it\)"):
        sim = clf.fhe_circuit_.simulate(np.clip(q, lo, hi))
        got = clf._run_fhe(q, "simulate")
    np.testing.assert_array_equal(got, sim)
    # the integer backend on the clipped integers (exact rounding, negligible p_error),
    # where no intermediate value of a clipped sample leaves its compiled width
    ok = ~clf.fhe_circuit_.overflows(np.clip(q, lo, hi))
    assert ok.sum() >= 10  # (a 10-row calibration at margin 0: most still overflow)
    np.testing.assert_array_equal(got[ok], backend.run_integers(np.clip(q, lo, hi))[ok])


def test_samples_inside_the_box_that_overflow_are_named_as_such(fitted):
    """Rows inside the calibrated box can still overflow an accumulator; the warning
    said they "were clipped" to the box."""
    from latentopt.backends.integer import IntegerBackend

    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_margin=0.0, **EXACT)
    lo, hi = (np.asarray(b) for b in clf.fhe_report_["input_box"])
    q = IntegerBackend(clf.rounded_circuit_).quantize(np.vstack([Xtr, Xte]))
    inside = q[~((q < lo) | (q > hi)).any(axis=1)]
    # and combinations of in-box values no sample has (each feature in range)
    corners = np.random.default_rng(0).integers(lo, hi + 1, size=(2000, len(lo)))
    inside = np.vstack([inside, corners])
    over = inside[clf.fhe_circuit_.overflows(inside)]
    assert len(over) > 0  # a 10-row calibration at margin 0
    with pytest.warns(UserWarning, match=f"{len(over)} inside it overflow an accumulator"):
        clf._run_fhe(over, "simulate")


def test_inputs_far_outside_the_quantizer_range_warn_in_every_mode(fitted):
    """Features clipped by more than the quantizer's range is wide reached the network as
    other inputs without a word in ``fhe="disable"`` (the FHE modes warned only about the
    compiled box, and not at all under ``range_mode="worst_case"``)."""
    clf, _, Xte = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # test rows a little past the training extremes
        clf.predict(np.vstack([Xte, Xte * 1.5]), fhe="disable")
    X = Xte.copy()
    X[:7, 3] *= 50  # 7 rows: one feature fifty times its spread
    with pytest.warns(UserWarning, match=r"7 of \d+ samples have features further outside "
                                         r"the range .* feature 3: range"):
        clf.predict(X, fhe="disable")
    with pytest.warns(UserWarning, match="further outside the range"):
        clf.predict_proba(Xte * 50)
    clf.compile(Xte[:10], range_mode="worst_case", **EXACT)  # FHE: no box warning here
    with pytest.warns(UserWarning, match="7 of .* further outside the range"):
        clf.predict(X, fhe="simulate")


def test_the_deployed_client_warns_about_inputs_far_outside_too(fitted, tmp_path):
    from latentopt.backends.fhe_deploy import FHEClient

    clf, Xtr, Xte = fitted
    clf.compile(Xtr[:10], range_mode="worst_case", **EXACT)
    client = FHEClient.load(clf.save_deployment(tmp_path / "wc")["client"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.quantize(Xte)
    with pytest.warns(UserWarning, match=f"{len(Xte)} of {len(Xte)} samples have features "
                                         "further outside"):
        client.encrypt(Xte * 50)


def test_a_torch_model_calibrated_on_other_units_warns():
    """The helper's case: calibrated on ``X * 0.1`` and asked about ``X``, the outputs
    were off by two thirds of their span, silently."""
    import torch
    from torch import nn

    from latentopt import compile_torch_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    X = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    q = compile_torch_model(model, X * 0.1, n_bits=6, fhe=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.forward(X * 0.1)
    with pytest.warns(UserWarning, match=r"\d+ of 100 samples have features further"):
        q.forward(X)

"""PTQ calibration (min/max, percentile, MSE), bias correction and the max-pool rewrite."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentopt import QuantizedTorchModel, compile_torch_model
from latentopt.nn.ptq_ranges import mse_weight_scales, observed_range

TINY_P = 2.0**-40


@pytest.fixture(autouse=True)
def _key_cache(monkeypatch, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "ptq_keys"
    path.mkdir(exist_ok=True)
    monkeypatch.setattr(QuantizedTorchModel, "_insecure_key_cache", str(path), raising=False)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _outlier_data(n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    X[0] = 40.0  # one outlier row
    return X


def _relu_scale(q: QuantizedTorchModel) -> float:
    tlu = next(n for n in q.circuit_.nodes if n.op == "table_lookup")
    return float(np.asarray(tlu.fn.output_scale).max())


# ----------------------------------------------------------------------------- ranges
def test_observed_range_orders_minmax_percentile_mse():
    rng = np.random.default_rng(0)
    v = np.r_[rng.uniform(0, 1, 10_000), 50.0]
    lo_m, hi_m = observed_range([v], "minmax", 4)
    _, hi_p = observed_range([v], "percentile", 4, percentile=99.9)
    lo_e, hi_e = observed_range([v], "mse", 4)
    assert (lo_m, hi_m) == (float(v.min()), 50.0)
    assert hi_p < 1.0 + 1e-9 and lo_e == lo_m
    assert hi_e < 0.25 * hi_m  # the outlier is clipped
    # without outliers the MSE range stays close to min/max
    u = rng.uniform(-1, 1, 10_000)
    lo, hi = observed_range([u], "mse", 6)
    assert -1.0 <= lo < -0.85 and 0.85 < hi <= 1.0
    # an asymmetric (zero-point) quantizer: both ends shrink together
    lo_a, hi_a = observed_range([np.r_[u, -30.0]], "mse", 4, asymmetric=True)
    assert -30.0 < lo_a < -1.0 and 0 < hi_a < 1.0
    with pytest.raises(ValueError, match="calibration"):
        observed_range([v], "nope", 4)


def test_mse_weight_scales_clip_outlier_channels_only():
    rng = np.random.default_rng(0)
    w = np.stack([rng.laplace(size=4096), rng.uniform(-1, 1, 4096)])  # heavy tail, none
    s = mse_weight_scales(w, 4)
    minmax = np.abs(w).max(axis=1) / 7
    assert s[0] < 0.7 * minmax[0]
    assert 0.85 * minmax[1] < s[1] <= minmax[1]
    assert mse_weight_scales(np.zeros((2, 3)), 4).tolist() == [1.0, 1.0]


def test_mse_and_percentile_calibration_narrow_ranges_and_keep_simulation_exact():
    model = _mlp()
    X = _outlier_data()
    mm = compile_torch_model(model, X, n_bits=4, fhe=False, verbose=0)
    pc = compile_torch_model(model, X, n_bits=4, calibration="percentile", percentile=99.0,
                             fhe=False, verbose=0)
    ms = compile_torch_model(model, X, n_bits=4, calibration="mse", rounding_bits=6,
                             rounding_method="exact", p_error=TINY_P, verbose=0)
    assert ms.import_report_["calibration"] == "mse"
    for q in (pc, ms):  # finer input and activation steps than min/max
        assert q.circuit_.input_quantizer.scale < mm.circuit_.input_quantizer.scale
        assert _relu_scale(q) < _relu_scale(mm)
    # on the bulk of the data (not the outlier) MSE clipping quantizes more precisely
    ref = model(torch.as_tensor(X[1:])).detach().numpy()
    err_mm = np.abs(mm.forward(X[1:]) - ref).mean()
    ms0 = compile_torch_model(model, X, n_bits=4, calibration="mse", fhe=False, verbose=0)
    err_ms = np.abs(ms0.forward(X[1:]) - ref).mean()
    assert err_ms < err_mm
    # FHE simulation still equals the integer backend bit for bit
    np.testing.assert_array_equal(ms.forward(X, fhe="simulate"), ms.forward(X))


# ----------------------------------------------------------------------------- bias correction
def _conv_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).eval()


def test_bias_correction_removes_the_mean_output_shift():
    model = _conv_model()
    X = np.random.default_rng(0).uniform(0, 1, (200, 2, 6, 6)).astype(np.float32)
    ref = model(torch.as_tensor(X)).detach().numpy()
    plain = compile_torch_model(model, X, n_bits=3, fhe=False, verbose=0)
    corr = compile_torch_model(model, X, n_bits=3, bias_correction=True, fhe=False, verbose=0)
    assert corr.import_report_["bias_correction"] is True
    shift_plain = np.abs((plain.forward(X) - ref).mean(axis=0))
    shift_corr = np.abs((corr.forward(X) - ref).mean(axis=0))
    # the output layer is a dequantized accumulator: its mean matches the float model's
    # up to the rounding of the integer bias
    assert shift_plain.max() > 1e-3
    assert shift_corr.max() < 0.2 * shift_plain.max()
    # the convolution's integer bias changed, the weights did not
    conv_p = next(n for n in plain.circuit_.nodes if n.op == "conv")
    conv_c = next(n for n in corr.circuit_.nodes if n.op == "conv")
    np.testing.assert_array_equal(conv_p.weight, conv_c.weight)
    assert not np.array_equal(conv_p.bias, conv_c.bias)


def test_bias_correction_adds_a_bias_to_layers_without_one_and_simulates_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3)).eval()
    X = _outlier_data(120)
    q = compile_torch_model(model, X, n_bits=3, bias_correction=True, rounding_bits=6,
                            rounding_method="exact", p_error=TINY_P, verbose=0)
    first = next(n for n in q.circuit_.nodes if n.op == "gemm")
    assert first.bias is not None
    np.testing.assert_array_equal(q.forward(X, fhe="simulate"), q.forward(X))


# ----------------------------------------------------------------------------- max pooling
class _FnPool(nn.Module):
    def __init__(self, avg: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 2)
        self.avg = avg

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = torch.relu(self.conv(x))
        x = (F.avg_pool2d(x, 2, padding=1, count_include_pad=False) if self.avg
             else F.max_pool2d(x, 2, padding=1))
        return self.fc(torch.flatten(x, 1))


def _ops(q: QuantizedTorchModel) -> list[str]:
    return [n.op for n in q.circuit_.nodes]


@pytest.mark.parametrize("form", ["module", "function"])
def test_maxpool_rewrite_is_the_average_pooling_model(form):
    X = np.random.default_rng(0).uniform(0, 1, (80, 1, 6, 6)).astype(np.float32)
    if form == "module":
        torch.manual_seed(0)
        mx = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(12, 2)).eval()
        avg = nn.Sequential(*[nn.AvgPool2d(2) if isinstance(m, nn.MaxPool2d) else m
                              for m in mx]).eval()
    else:
        mx, avg = _FnPool(avg=False).eval(), _FnPool(avg=True).eval()
    exact = compile_torch_model(mx, X, n_bits=5, fhe=False, verbose=0)
    rewritten = compile_torch_model(mx, X, n_bits=5, maxpool="avg", fhe=False, verbose=0)
    reference = compile_torch_model(avg, X, n_bits=5, fhe=False, verbose=0)
    assert "max_pool" in _ops(exact) and "max_pool" not in _ops(rewritten)
    assert rewritten.import_report_["maxpool"] == "avg"
    np.testing.assert_array_equal(rewritten.forward(X), reference.forward(X))
    # the rewrite removes the comparisons: fewer table lookups per sample
    assert rewritten.bit_width_report().tlu_count < exact.bit_width_report().tlu_count
    mx_float = mx(torch.as_tensor(X)).detach().numpy()
    assert not np.allclose(rewritten.forward(X), mx_float, atol=1e-2)  # a different model
    with pytest.raises(ValueError, match="maxpool"):
        compile_torch_model(mx, X, maxpool="min", fhe=False, verbose=0)


def test_maxpool_rewrite_refuses_dilated_windows():
    from latentopt.nn.fx_import import UnsupportedOpError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2, dilation=2),
                          nn.Flatten(), nn.Linear(2 * 2 * 2, 2)).eval()
    X = np.random.default_rng(0).uniform(0, 1, (20, 1, 8, 8)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match="dilated max pooling"):
        compile_torch_model(model, X, maxpool="avg", fhe=False, verbose=0)
    exact = compile_torch_model(model, X, fhe=False, verbose=0)  # exact max pooling is fine
    assert "max_pool" in _ops(exact)


def test_inputs_far_from_zero_are_named_in_a_warning():
    """Non-negative inputs are quantized on [0, max]: inputs in [100, 101] used 4 of 256
    levels, silently; inputs that use the grid do not warn."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2).eval()
    Z = np.random.RandomState(0).rand(200, 4).astype(np.float32)
    with pytest.warns(UserWarning, match=r"lie in \[100, 101\].*about 3 of its 256 levels"):
        compile_torch_model(model, Z + 100.0, n_bits=8, fhe=False, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_torch_model(model, Z, n_bits=8, fhe=False, verbose=0)
        compile_torch_model(model, Z + 0.3, n_bits=8, fhe=False, verbose=0)


def test_an_explicit_table_after_a_convolution_keeps_one_row_per_channel(tmp_path):
    """An ELU after a convolution has one scale per channel, repeated over positions.

    Its table kept a row per element (256 for 8 channels x 32 positions) and was refused
    at 8 bits; it keeps one row per channel, exact on every backend and through save.
    """
    from latentopt.backends.integer import IntegerBackend
    from latentopt.ir import ExplicitTable, load, save

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding="same"), nn.ELU(), nn.Flatten(),
                          nn.Linear(256, 4)).eval()
    X = np.random.default_rng(0).standard_normal((200, 3, 32)).astype(np.float32)
    q = compile_torch_model(model, X, n_bits=8, fhe=False, verbose=0)
    (tlu,) = [n for n in q.circuit_.nodes if isinstance(getattr(n, "fn", None), ExplicitTable)]
    assert tlu.fn.table.shape[0] == 8 and tlu.fn.n_channels == 256
    per_channel = tlu.fn.rows.reshape(8, 32)  # channel-major, one row per channel
    assert (per_channel == per_channel[:, :1]).all()
    assert sorted(per_channel[:, 0].tolist()) == list(range(8))
    with torch.no_grad():
        ref = model(torch.as_tensor(X)).numpy()
    assert np.abs(q.forward(X) - ref).max() < 0.05 * np.abs(ref).max()
    # each element's value is its channel's row of the table
    xq = q.circuit_.input_quantizer.apply(X.reshape(len(X), -1))
    _, values = IntegerBackend(q.circuit_).run_integers(xq, return_all=True)
    src = values[tlu.inputs[0]]
    expect = np.stack([tlu.fn.table[tlu.fn.rows[e], np.clip(src[:, e] - tlu.fn.offset, 0,
                                                       tlu.fn.table.shape[1] - 1)]
                       for e in range(256)], axis=1)
    np.testing.assert_array_equal(values[tlu.name], expect)
    save(q.circuit_, tmp_path / "c.zip")
    assert load(tmp_path / "c.zip").same_as(q.circuit_)
    pytest.importorskip("onnxruntime")
    from latentopt.backends.onnx_export import OnnxRunner

    path = q.to_onnx(tmp_path / "elu.onnx")
    np.testing.assert_array_equal(OnnxRunner(path).predict(X.reshape(len(X), -1)),
                                  q.forward(X).reshape(len(X), -1))


def test_a_table_too_large_says_what_it_is_made_of():
    """The refusal names the tables (one per distinct scale) and the input's span."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 8, 3, padding="same"), nn.ELU(), nn.Flatten(),
                          nn.Linear(256, 4)).eval()
    X = np.random.default_rng(0).standard_normal((200, 3, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"8 tables, one per distinct scale .* lower n_bits"):
        compile_torch_model(model, X, n_bits=12, fhe=False, verbose=0)

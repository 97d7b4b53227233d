"""The numpy convolution and pooling kernels (latentopt.backends.conv_kernels): bit-exact
against torch on integer-valued float64 and against the loop-by-loop reference, in every
carrier dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from circuit_reference import reference_window
from conv_circuits import random_window_node

from latentopt.backends import conv_kernels
from latentopt.backends.conv_kernels import (
    conv_kernel,
    exact_dtype,
    max_pool_kernel,
    sum_pool_kernel,
    window_kernel,
)
from latentopt.ir import Conv, MaxPool, SumPool

CARRIERS = [np.float32, np.float64, np.int64]


def _torch_pad(x: torch.Tensor, pads: tuple[int, ...], value: float) -> torch.Tensor:
    """ONNX pads (begins..., ends...) -> F.pad order (last axis first)."""
    nd = len(pads) // 2
    order: list[int] = []
    for axis in reversed(range(nd)):
        order += [pads[axis], pads[axis + nd]]
    return F.pad(x, order, value=value)


def torch_window(node, x: np.ndarray) -> np.ndarray:
    """The node in torch float64 (exact on these small integers)."""
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1, *node.input_shape)
    nd = node.nd
    if isinstance(node, MaxPool):
        pool = F.max_pool1d if nd == 1 else F.max_pool2d
        y = pool(_torch_pad(t, node.padding, -np.inf), node.kernel_size, node.stride,
                 dilation=node.dilation)
    else:
        t = _torch_pad(t - node.input_zero_point, node.padding, 0.0)
        conv = F.conv1d if nd == 1 else F.conv2d
        if isinstance(node, Conv):
            w = torch.tensor(node.weight, dtype=torch.float64)
            b = None if node.bias is None else torch.tensor(node.bias, dtype=torch.float64)
            y = conv(t, w, b, node.stride, 0, node.dilation, node.groups)
        else:  # a sum pool is a depthwise convolution with ones
            c = node.input_shape[0]
            w = torch.ones((c, 1, *node.kernel_size), dtype=torch.float64)
            y = conv(t, w, None, node.stride, 0, node.dilation, c)
    return y.reshape(len(x), -1).numpy()


@pytest.mark.parametrize("dtype", CARRIERS)
@pytest.mark.parametrize("kind", ["conv", "sum_pool", "max_pool"])
@pytest.mark.parametrize("seed", range(10))
def test_kernels_match_torch_and_reference(kind, seed, dtype):
    rng = np.random.default_rng(seed)
    node = random_window_node(rng, kind)
    x = rng.integers(-30, 31, (5, node.in_features))
    y = window_kernel(node, dtype)(x.astype(dtype))
    assert y.dtype == dtype and y.shape == (5, node.out_features)
    expect = torch_window(node, x)
    np.testing.assert_array_equal(y.astype(np.float64), expect)
    np.testing.assert_array_equal(y.astype(np.int64), reference_window(node, x).astype(np.int64))
    np.testing.assert_array_equal(y.astype(np.int64), node.apply(x))


@pytest.mark.parametrize("nd", [1, 2])
def test_symmetric_padding_is_torch_padding(nd):
    """With symmetric pads the nodes are exactly torch's padded conv / max pool."""
    rng = np.random.default_rng(nd)
    shape = (4, 6, 7) if nd == 2 else (4, 11)
    x = rng.integers(-8, 9, (3, int(np.prod(shape))))
    t = torch.as_tensor(x, dtype=torch.float64).reshape(3, *shape)
    w = rng.integers(-2, 3, (6, 2, *(3,) * nd))
    conv = Conv("c", ("x",), w, input_shape=shape, padding=1, stride=2, dilation=2, groups=2)
    tconv = F.conv2d if nd == 2 else F.conv1d
    expect = tconv(t, torch.as_tensor(w, dtype=torch.float64), None, 2, 1, 2, 2)
    np.testing.assert_array_equal(conv_kernel(conv, np.float32)(x.astype(np.float32)),
                                  expect.reshape(3, -1).numpy())
    mp = MaxPool("m", ("x",), input_shape=shape, kernel_size=3, stride=2, padding=1)
    tpool = F.max_pool2d if nd == 2 else F.max_pool1d
    np.testing.assert_array_equal(max_pool_kernel(mp, np.float64)(x.astype(np.float64)),
                                  tpool(t, 3, 2, 1).reshape(3, -1).numpy())


def test_sum_pool_is_average_pool_times_window():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 16, (4, 3 * 8 * 8))
    node = SumPool("s", ("x",), input_shape=(3, 8, 8), kernel_size=2, input_zero_point=3)
    t = torch.as_tensor(x - 3, dtype=torch.float64).reshape(4, 3, 8, 8)
    expect = F.avg_pool2d(t, 2).reshape(4, -1).numpy() * 4
    np.testing.assert_array_equal(sum_pool_kernel(node, np.float32)(x.astype(np.float32)),
                                  expect)


def test_large_batches_are_chunked(monkeypatch):
    monkeypatch.setattr(conv_kernels, "IM2COL_ENTRIES", 500)
    rng = np.random.default_rng(1)
    node = Conv("c", ("x",), rng.integers(-3, 4, (4, 2, 3, 3)), input_shape=(2, 6, 6),
                bias=rng.integers(-9, 10, 4), input_zero_point=2, padding=1)
    x = rng.integers(-5, 6, (37, node.in_features))
    np.testing.assert_array_equal(conv_kernel(node, np.float64)(x.astype(np.float64)),
                                  node.apply(x))


def test_exact_float32_near_the_bound():
    """Partial sums just under 2**24 stay exact in the float32 carrier."""
    node = Conv("c", ("x",), np.full((1, 1, 4), 2**10), input_shape=(1, 4))
    bound = node.partial_sum_bound(np.array(-(2**12)), np.array(2**12 - 1))
    assert bound == 4 * 2**10 * 2**12 == 2**24 and exact_dtype(bound) is np.float64
    x = np.array([[2**12 - 1, 2**12 - 1, 2**12 - 1, 2**12 - 2]])
    y = conv_kernel(node, np.float32)(x.astype(np.float32))
    assert int(y[0, 0]) == node.apply(x)[0, 0] == 2**10 * (4 * 2**12 - 5)


def test_int64_carrier_beyond_float64():
    node = Conv("c", ("x",), np.array([[[2**30, -(2**30) + 1]]]), input_shape=(1, 3),
                bias=[7])
    x = np.array([[2**25 + 3, -(2**25) - 1, 2**25 - 5]])
    assert exact_dtype(node.partial_sum_bound(x.min(), x.max())) is np.int64
    y = conv_kernel(node, np.int64)(x)
    np.testing.assert_array_equal(y, reference_window(node, x).astype(np.int64))


def test_window_kernel_rejects_other_nodes():
    from latentopt.ir import Gemm

    with pytest.raises(TypeError, match="no kernel"):
        window_kernel(Gemm("g", ("x",), [[1]]), np.float32)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", CARRIERS)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_path(dtype, multiplier):
    """One input channel per group (the per-tap path), with a channel multiplier."""
    rng = np.random.default_rng(multiplier)
    node = Conv("d", ("x",), rng.integers(-3, 4, (3 * multiplier, 1, 3, 2)),
                input_shape=(3, 5, 6), bias=rng.integers(-4, 5, 3 * multiplier),
                input_zero_point=-1, stride=(1, 2), padding=(1, 0, 1, 1), groups=3)
    x = rng.integers(-9, 10, (4, node.in_features))
    y = conv_kernel(node, dtype)(x.astype(dtype))
    np.testing.assert_array_equal(y.astype(np.float64), torch_window(node, x))

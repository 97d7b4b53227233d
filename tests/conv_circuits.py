"""Small convolutional circuits and random convolution / pooling nodes for the tests of
tests/ir and tests/backends (``pythonpath = ["tests"]`` in pyproject.toml)."""

from __future__ import annotations

import numpy as np

from latentopt.ir import (
    Circuit,
    Conv,
    Dequantize,
    Gemm,
    MaxPool,
    QuantActivation,
    QuantizeInput,
    Round,
    SumPool,
    TableLookup,
)


def conv_circuit(seed: int = 0, nd: int = 2, rounding: bool = True) -> Circuit:
    """q (unsigned 3-bit, zero point 4) -> grouped padded conv [-> round] -> ReLU lookup
    -> max pool -> strided, dilated conv with asymmetric padding -> sum pool -> gemm -> out.

    Input ``(2, 5, 5)`` (2-D) or ``(2, 9)`` (1-D): tiny enough for FHE keys.
    """
    rng = np.random.default_rng(seed)
    spatial = (5, 5) if nd == 2 else (9,)
    k = (3,) * nd
    c1 = Conv("c1", ("q",), rng.integers(-2, 3, (4, 1, *k)), input_shape=(2, *spatial),
              bias=rng.integers(-3, 4, 4), input_zero_point=4, padding=1, groups=2)
    nodes: list = [
        QuantizeInput("q", ("input",), scale=0.25, zero_point=4, n_bits=3, signed=False),
        c1,
    ]
    src = "c1"
    if rounding:
        nodes.append(Round("a1.round", ("c1",), lsbs=2))
        src = "a1.round"
    nodes.append(TableLookup("a1", (src,), QuantActivation(
        "relu", input_scale=rng.uniform(0.05, 0.1, c1.out_features), output_scale=0.25,
        n_bits=2, signed=False)))
    mp = MaxPool("mp", ("a1",), input_shape=c1.output_shape, kernel_size=2, stride=1)
    pads = (1, 0, 0, 1) if nd == 2 else (1, 0)
    c2 = Conv("c2", ("mp",), rng.integers(-2, 3, (3, 4, *(2,) * nd)),
              input_shape=mp.output_shape, input_zero_point=1, stride=2, padding=pads,
              dilation=(1, 2) if nd == 2 else 2)
    sp = SumPool("sp", ("c2",), input_shape=c2.output_shape, kernel_size=2, stride=1,
                 padding=(0, 1, 0, 0) if nd == 2 else (0, 1))
    nodes += [mp, c2, sp,
              Gemm("fc", ("sp",), rng.integers(-1, 2, (2, sp.out_features))),
              Dequantize("out", ("fc",), scale=0.1, zero_point=0)]
    return Circuit(nodes, n_features=c1.in_features)


def random_window_node(rng: np.random.Generator, kind: str, nd: int | None = None):
    """A random Conv / SumPool / MaxPool with every geometry option exercised."""
    nd = int(rng.integers(1, 3)) if nd is None else nd
    while True:
        groups = int(rng.choice([1, 2])) if kind == "conv" else 1
        c = groups * int(rng.integers(1, 3))
        spatial = tuple(int(v) for v in rng.integers(3, 7, nd))
        kernel = tuple(int(v) for v in rng.integers(1, 4, nd))
        stride = tuple(int(v) for v in rng.integers(1, 4, nd))
        dilation = tuple(int(v) for v in rng.integers(1, 3, nd))
        pads = tuple(int(v) for v in rng.integers(0, 3, 2 * nd))
        try:
            if kind == "conv":
                o = groups * int(rng.integers(1, 3))
                w = rng.integers(-3, 4, (o, c // groups, *kernel))
                bias = rng.integers(-5, 6, o) if rng.random() < 0.7 else None
                return Conv("n", ("x",), w, input_shape=(c, *spatial), bias=bias,
                            input_zero_point=int(rng.integers(-2, 3)), stride=stride,
                            padding=pads, dilation=dilation, groups=groups)
            if kind == "sum_pool":
                return SumPool("n", ("x",), input_shape=(c, *spatial), kernel_size=kernel,
                               input_zero_point=int(rng.integers(-2, 3)), stride=stride,
                               padding=pads, dilation=dilation)
            return MaxPool("n", ("x",), input_shape=(c, *spatial), kernel_size=kernel,
                           stride=stride, padding=pads, dilation=dilation)
        except ValueError:  # kernel larger than the input, or a window all in padding
            continue

"""Shared fixtures for the IR tests: small hand-checked circuits, a random circuit
generator and an independent reference evaluator (Python integers, node semantics)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import circuit_reference
import numpy as np
import pytest

from latentopt.ir import (
    ACTIVATIONS,
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    QuantActivation,
    QuantizeInput,
    Round,
    TableLookup,
)


def _make_mlp() -> Circuit:
    """The 2-2-1 circuit of the ``latentopt.ir.circuit`` docstring (ranges checked by hand).

    q: 3-bit signed, [-4, 3].  fc1 = [[1, -2], [3, 0]] + [1, 0]:
    channel 0 in [-4 - 6 + 1, 3 + 8 + 1] = [-9, 12], channel 1 in [-12, 9] -> 5 bits.
    act1 = clip(rint(v / 2), 0, 3) -> [0, 3];  fc2 = [[1, 1]] -> [0, 6] -> 3 bits.
    """
    return Circuit(
        [
            QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3),
            Gemm("fc1", ("q",), weight=[[1, -2], [3, 0]], bias=[1, 0]),
            TableLookup("act1", ("fc1",), fn=QuantActivation("relu", 0.25, 0.5, n_bits=2)),
            Gemm("fc2", ("act1",), weight=[[1, 1]]),
            Dequantize("out", ("fc2",), scale=0.5, zero_point=0),
        ],
        n_features=2,
    )


def _make_three_layer() -> Circuit:
    """Three gemms, two TLUs (one per-channel QuantActivation, one shared ExplicitTable)."""
    return Circuit(
        [
            QuantizeInput("q", ("input",), scale=[0.1, 0.2, 0.3], zero_point=[8, 8, 8],
                          n_bits=4, signed=False),
            Gemm("fc1", ("q",), weight=[[1, -2, 3], [0, 2, -1], [4, 1, 1], [-3, -3, 2]],
                 bias=[5, -5, 0, 2], input_zero_point=8),
            TableLookup("act1", ("fc1",), fn=QuantActivation(
                "gelu", input_scale=[0.05, 0.1, 0.02, 0.07], output_scale=0.2, n_bits=3,
                signed=True)),
            Gemm("fc2", ("act1",), weight=[[1, 2, -1, 0], [-2, 1, 1, 3]], bias=[0, 1]),
            TableLookup("act2", ("fc2",), fn=ExplicitTable(np.arange(-5, 6) ** 2 % 7,
                                                           offset=-5)),
            Gemm("fc3", ("act2",), weight=[[2, -3]], bias=[1]),
            Dequantize("out", ("fc3",), scale=0.25, zero_point=1),
        ],
        n_features=3,
        metadata={"source": "conftest"},
    )


def _random_fn(rng: np.random.Generator, width: int):
    if rng.random() < 0.7:
        act = str(rng.choice(sorted(ACTIVATIONS)))
        per_channel = rng.random() < 0.5
        ins = rng.uniform(0.01, 0.3, width) if per_channel else float(rng.uniform(0.01, 0.3))
        outs = float(rng.uniform(0.05, 0.5))
        signed = bool(rng.random() < 0.5)
        n_bits = int(rng.integers(2, 5))
        zp = 0 if signed else int(rng.integers(0, 3))
        return QuantActivation(act, ins, outs, output_zero_point=zp, n_bits=n_bits,
                               signed=signed, narrow=bool(rng.random() < 0.3))
    size = int(rng.integers(1, 12))
    shape = (width, size) if rng.random() < 0.5 else (size,)
    return ExplicitTable(rng.integers(-8, 9, shape), offset=int(rng.integers(-10, 5)))


def _random_circuit(
    rng: np.random.Generator,
    n_layers: int | None = None,
    wmax: int = 3,
    round_prob: float = 0.5,
) -> Circuit:
    """A random MLP-like circuit: Gemm [-> Round] -> TLU per hidden layer, final Gemm."""
    n_layers = int(rng.integers(2, 4)) if n_layers is None else n_layers
    n_features = int(rng.integers(1, 5))
    signed = bool(rng.random() < 0.5)
    n_bits = int(rng.integers(2, 5))
    scale = rng.uniform(0.05, 1.0, n_features) if rng.random() < 0.5 else 0.3
    zp = 0 if signed else rng.integers(0, 2**n_bits, n_features)
    nodes: list = [QuantizeInput("q", ("input",), scale, zp, n_bits, signed=signed,
                                 narrow=bool(rng.random() < 0.3))]
    prev, width = "q", n_features
    for i in range(n_layers):
        out = int(rng.integers(1, 5))
        w = rng.integers(-wmax, wmax + 1, (out, width))
        bias = rng.integers(-20, 21, out) if rng.random() < 0.7 else None
        nodes.append(Gemm(f"fc{i}", (prev,), w, bias, int(rng.integers(-2, 3))))
        prev, width = f"fc{i}", out
        if i == n_layers - 1:
            break
        if rng.random() < round_prob:
            nodes.append(Round(f"fc{i}.r", (prev,), lsbs=int(rng.integers(1, 4))))
            prev = f"fc{i}.r"
        nodes.append(TableLookup(f"act{i}", (prev,), fn=_random_fn(rng, width)))
        prev = f"act{i}"
    nodes.append(Dequantize("out", (prev,), scale=float(rng.uniform(0.1, 1.0)), zero_point=0))
    return Circuit(nodes, n_features)


def _quantized_inputs(circuit: Circuit, rng: np.random.Generator, n: int = 64) -> np.ndarray:
    """Random quantized inputs plus every corner of the input box (small n_features)."""
    lo, hi = circuit.input_quantizer.qrange
    rand = rng.integers(lo, hi + 1, (n, circuit.n_features))
    corners = np.array(list(itertools.product([lo, hi], repeat=circuit.n_features)))
    return np.concatenate([rand, corners]).astype(np.int64)


# Helpers are exposed as fixtures (not imported: test directories without __init__.py
# share the module name "conftest", so `from conftest import ...` is ambiguous).
@pytest.fixture
def mlp() -> Circuit:
    return _make_mlp()


@pytest.fixture
def three_layer() -> Circuit:
    return _make_three_layer()


@pytest.fixture
def make_mlp() -> Callable[[], Circuit]:
    return _make_mlp


@pytest.fixture
def make_three_layer() -> Callable[[], Circuit]:
    return _make_three_layer


@pytest.fixture
def random_circuit() -> Callable[..., Circuit]:
    return _random_circuit


@pytest.fixture
def reference_run() -> Callable[[Circuit, np.ndarray], dict[str, np.ndarray]]:
    return circuit_reference.reference_run


@pytest.fixture
def quantized_inputs() -> Callable[..., np.ndarray]:
    return _quantized_inputs

"""Fixtures for the FHE backend tests: tiny hand-built circuits and a key cache.

The ``fhe`` marker (tests that generate real keys) is registered in pyproject.toml;
it is registered here too so this directory also runs on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from latentopt.ir import (
    Circuit,
    Dequantize,
    ExplicitTable,
    Gemm,
    QuantActivation,
    QuantizeInput,
    TableLookup,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fhe: generates real FHE keys (tiny circuits only)")


@pytest.fixture(scope="session")
def key_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Concrete's *insecure* key cache, kept between runs in pytest's cache directory
    (a temporary directory when the cache plugin is disabled).

    Only tests use it: keys are reused instead of regenerated (never do this for real).
    """
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("latentopt_fhe_keys")
    # one directory per xdist worker: concurrent writers of one key file would race
    path = Path(cache.mkdir("latentopt_fhe_keys")) / os.environ.get("PYTEST_XDIST_WORKER", "main")
    path.mkdir(exist_ok=True)
    return path


def mlp_circuit(seed: int = 0, n_features: int = 4, hidden: int = 5) -> Circuit:
    """3-bit signed inputs -> gemm -> per-channel ReLU lookup -> gemm (zero point) -> out.

    Accumulators of about 5-6 bits, 2-bit activations: small enough for fast keygen.
    """
    rng = np.random.default_rng(seed)
    return Circuit(
        [
            QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3, signed=True),
            Gemm("fc1", ("q",), rng.integers(-1, 3, (hidden, n_features)),
                 bias=rng.integers(-3, 4, hidden)),
            TableLookup("act1", ("fc1",), QuantActivation(
                "relu", input_scale=rng.uniform(0.2, 0.4, hidden), output_scale=0.5,
                n_bits=2, signed=False)),
            Gemm("fc2", ("act1",), rng.integers(-2, 3, (2, hidden)), input_zero_point=1),
            Dequantize("out", ("fc2",), scale=0.25, zero_point=0),
        ],
        n_features=n_features,
    )


def two_lookup_layers_circuit() -> Circuit:
    """Two 6-bit lookup layers: 16 inputs at weights -1..1, then 4 at -3..3 (another
    noise growth: a per-norm partition makes concrete's complexity 16% smaller)."""
    rng = np.random.default_rng(0)
    return Circuit([
        QuantizeInput("q", ("input",), scale=0.5, zero_point=0, n_bits=3, signed=True),
        Gemm("fc1", ("q",), rng.integers(-1, 2, (4, 16))),
        TableLookup("act1", ("fc1",), QuantActivation(
            "relu", input_scale=0.3, output_scale=0.5, n_bits=3, signed=False)),
        Gemm("fc2", ("act1",), rng.integers(-3, 4, (4, 4))),
        TableLookup("act2", ("fc2",), QuantActivation(
            "relu", input_scale=0.05, output_scale=0.5, n_bits=2, signed=False)),
        Gemm("fc3", ("act2",), rng.integers(-2, 3, (2, 4))),
        Dequantize("out", ("fc3",), scale=0.25, zero_point=0)], n_features=16)


def table_circuit(seed: int = 1, n_features: int = 3) -> Circuit:
    """Lookups on the raw signed input and on an accumulator, with per-channel tables."""
    rng = np.random.default_rng(seed)
    hidden = 4
    return Circuit(
        [
            QuantizeInput("q", ("input",), scale=1.0, zero_point=0, n_bits=3, signed=True),
            TableLookup("square", ("q",), ExplicitTable(
                rng.integers(-4, 5, (n_features, 8)), offset=-4)),
            Gemm("fc1", ("square",), rng.integers(-1, 2, (hidden, n_features)),
                 bias=rng.integers(-2, 3, hidden)),
            TableLookup("act1", ("fc1",), ExplicitTable(
                rng.integers(0, 4, (hidden, 12)), offset=-6)),
            Gemm("fc2", ("act1",), rng.integers(-2, 3, (2, hidden))),
            Dequantize("out", ("fc2",), scale=1.0, zero_point=0),
        ],
        n_features=n_features,
    )


def quantized_inputs(circuit: Circuit, n: int, seed: int = 0) -> np.ndarray:
    """Uniform integers over the whole input quantizer range."""
    lo, hi = circuit.input_quantizer.qrange
    return np.random.default_rng(seed).integers(lo, hi + 1, (n, circuit.n_features))


@pytest.fixture(scope="session")
def make_mlp():  # type: ignore[no-untyped-def]
    """Factory of :func:`mlp_circuit` circuits."""
    return mlp_circuit


@pytest.fixture(scope="session")
def make_two_lookup_layers():  # type: ignore[no-untyped-def]
    """Factory of :func:`two_lookup_layers_circuit` circuits."""
    return two_lookup_layers_circuit


@pytest.fixture(scope="session")
def make_table_circuit():  # type: ignore[no-untyped-def]
    """Factory of :func:`table_circuit` circuits."""
    return table_circuit


@pytest.fixture(scope="session")
def sample_q():  # type: ignore[no-untyped-def]
    """``sample_q(circuit, n, seed)``: integers over the input quantizer's range."""
    return quantized_inputs

"""Portable (de)serialisation of circuits.

A circuit file is a zip archive with two members:

* ``manifest.json`` -- format name and version, node metadata, calibration, circuit
  metadata and the SHA-256 of the array member;
* ``arrays.npz`` -- every numpy array, loaded with ``allow_pickle=False``.

A file of another format, a newer format version, a truncated or corrupted file all
raise :class:`CircuitFormatError` with a message that says which.  The checksums
detect damage, not a deliberate edit: whoever can rewrite the file can rewrite its
manifest and checksum too (an activation edited in the manifest loads as another
model), so keep circuit files where only you can write, or sign them.  (The byte format
itself lives in :mod:`.archive`.)

>>> import io, numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 4), Gemm("g", ("q",), [[1]]),
...              Dequantize("o", ("g",), 1.0, 0)], n_features=1)
>>> buf = io.BytesIO(); save(c, buf); load(io.BytesIO(buf.getvalue())).same_as(c)
True
"""

from __future__ import annotations

from .archive import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CircuitFormatError,
    PathOrFile,
    decode,
    encode,
    read_bytes,
    write_bytes,
)
from .circuit import Circuit

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CircuitFormatError", "from_bytes", "load",
           "save", "to_bytes"]


def to_bytes(circuit: Circuit) -> bytes:
    """Serialise a circuit to bytes (the file format of :func:`save`)."""
    return encode(circuit.nodes, circuit.n_features, circuit.calibration, circuit.metadata)


def from_bytes(data: bytes) -> Circuit:
    """Inverse of :func:`to_bytes`."""
    return decode(data, Circuit)


def save(circuit: Circuit, path: PathOrFile) -> None:
    """Write ``circuit`` to a path or binary file object."""
    write_bytes(to_bytes(circuit), path)


def load(path: PathOrFile) -> Circuit:
    """Read a circuit written by :func:`save`."""
    return from_bytes(read_bytes(path))

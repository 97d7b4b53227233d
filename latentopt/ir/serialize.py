"""Portable (de)serialisation of circuits.

A circuit file is a zip archive with two members:

* ``manifest.json`` -- format name and version, node metadata, calibration, circuit
  metadata and the SHA-256 of the array member;
* ``arrays.npz`` -- every numpy array, loaded with ``allow_pickle=False``.

A file of another format, a newer format version, a truncated or tampered file all
raise :class:`CircuitFormatError` with a message that says which.

>>> import io, numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, Dequantize
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 4), Gemm("g", ("q",), [[1]]),
...              Dequantize("o", ("g",), 1.0, 0)], n_features=1)
>>> buf = io.BytesIO(); save(c, buf); load(io.BytesIO(buf.getvalue())).same_as(c)
True
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from typing import IO, Any, Union

import numpy as np

from .circuit import Circuit
from .nodes import Node
from .ranges import Interval

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CircuitFormatError", "from_bytes", "load",
           "save", "to_bytes"]

FORMAT_NAME = "latentopt.circuit"
FORMAT_VERSION = 1

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]

# What zipfile raises on damaged archives: bad deflate streams (zlib.error), flipped
# header fields ("unsupported compression/version": NotImplementedError, "encrypted":
# RuntimeError), besides BadZipFile and the I/O errors.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError,
               EOFError, ValueError)


class CircuitFormatError(ValueError):
    """The file is not a valid latentopt circuit of a supported version."""


def _pack(circuit: Circuit) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    nodes_meta = []
    arrays: dict[str, np.ndarray] = {}
    for i, node in enumerate(circuit.nodes):
        meta, arrs = node.to_dict()
        nodes_meta.append(meta)
        arrays.update({f"n{i}/{k}": v for k, v in arrs.items()})
    cal = None
    if circuit.calibration is not None:
        cal = {k: v.to_list() for k, v in circuit.calibration.items()}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "n_features": circuit.n_features,
        "nodes": nodes_meta,
        "calibration": cal,
        "metadata": circuit.metadata,
    }
    return manifest, arrays


def to_bytes(circuit: Circuit) -> bytes:
    """Serialise a circuit to bytes (the file format of :func:`save`)."""
    manifest, arrays = _pack(circuit)
    abuf = io.BytesIO()
    np.savez(abuf, **arrays)
    payload = abuf.getvalue()
    manifest["arrays_sha256"] = hashlib.sha256(payload).hexdigest()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, sort_keys=True))
        zf.writestr("arrays.npz", payload)
    return out.getvalue()


def from_bytes(data: bytes) -> Circuit:
    """Inverse of :func:`to_bytes`."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = set(zf.namelist())
    except _ZIP_ERRORS as exc:
        raise CircuitFormatError(f"not a latentopt circuit file (bad archive: {exc})") from exc
    if not {"manifest.json", "arrays.npz"} <= names:
        raise CircuitFormatError("not a latentopt circuit file (missing manifest or arrays)")
    try:
        manifest = json.loads(zf.read("manifest.json").decode("utf-8"))
        payload = zf.read("arrays.npz")
    except _ZIP_ERRORS as exc:
        raise CircuitFormatError(f"corrupt circuit file: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CircuitFormatError(
            f"not a latentopt circuit file (format {manifest.get('format')!r})"
            if isinstance(manifest, dict) else "not a latentopt circuit file"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CircuitFormatError(
            f"circuit format version {version!r} is not supported by this latentopt "
            f"(reads versions 1..{FORMAT_VERSION}); upgrade latentopt"
        )
    if hashlib.sha256(payload).hexdigest() != manifest.get("arrays_sha256"):
        raise CircuitFormatError("circuit file is corrupt or was modified (checksum mismatch)")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        nodes = []
        for i, meta in enumerate(manifest["nodes"]):
            prefix = f"n{i}/"
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            nodes.append(Node.from_dict(meta, sub))
        cal = manifest.get("calibration")
        calibration = (
            {k: Interval(np.array(v[0]), np.array(v[1])) for k, v in cal.items()}
            if cal is not None else None
        )
        return Circuit(nodes, manifest["n_features"], calibration, manifest.get("metadata"))
    except CircuitFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise CircuitFormatError(f"invalid circuit file content: {exc}") from exc


def save(circuit: Circuit, path: PathOrFile) -> None:
    """Write ``circuit`` to a path or binary file object."""
    data = to_bytes(circuit)
    if hasattr(path, "write"):
        path.write(data)  # type: ignore[union-attr]
        return
    tmp = f"{os.fspath(path)}.tmp"  # type: ignore[arg-type]
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # type: ignore[arg-type]


def load(path: PathOrFile) -> Circuit:
    """Read a circuit written by :func:`save`."""
    if hasattr(path, "read"):
        return from_bytes(path.read())  # type: ignore[union-attr]
    with open(path, "rb") as fh:  # type: ignore[arg-type]
        return from_bytes(fh.read())

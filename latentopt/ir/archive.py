"""The byte format of a circuit file (a zip archive), below the :class:`Circuit` class.

A circuit file is a zip archive with two members:

* ``manifest.json`` -- format name and version, node metadata, calibration, circuit
  metadata and the SHA-256 of the array member;
* ``arrays.npz`` -- every numpy array, loaded with ``allow_pickle=False``.

A file of another format, a newer format version, a truncated or corrupted file all
raise :class:`CircuitFormatError` with a message that says which (checksums detect
damage, not deliberate edits: :mod:`.serialize`).  This module knows
nodes, not circuits: :func:`encode` takes a circuit's parts and :func:`decode` hands
them to a constructor, so that :mod:`.circuit` (pickling, ``Circuit.save``) and
:mod:`.serialize` (the public functions) both build on it without importing each
other.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, TypeVar, Union

import numpy as np

from .nodes import Node
from .ranges import Interval

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CircuitFormatError", "PathOrFile", "decode",
           "encode", "read_bytes", "write_bytes"]

T = TypeVar("T")

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


def _pack(
    nodes: Sequence[Node], n_features: int, calibration: Mapping[str, Interval] | None,
    metadata: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    nodes_meta = []
    arrays: dict[str, np.ndarray] = {}
    for i, node in enumerate(nodes):
        meta, arrs = node.to_dict()
        nodes_meta.append(meta)
        arrays.update({f"n{i}/{k}": v for k, v in arrs.items()})
    cal = None
    if calibration is not None:
        cal = {k: v.to_list() for k, v in calibration.items()}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "n_features": n_features,
        "nodes": nodes_meta,
        "calibration": cal,
        "metadata": dict(metadata),
    }
    return manifest, arrays


def encode(
    nodes: Sequence[Node], n_features: int, calibration: Mapping[str, Interval] | None,
    metadata: Mapping[str, Any],
) -> bytes:
    """The file bytes of a circuit given by its parts."""
    manifest, arrays = _pack(nodes, n_features, calibration, metadata)
    abuf = io.BytesIO()
    np.savez(abuf, **arrays)
    payload = abuf.getvalue()
    manifest["arrays_sha256"] = hashlib.sha256(payload).hexdigest()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, sort_keys=True))
        zf.writestr("arrays.npz", payload)
    return out.getvalue()


def decode(data: bytes, build: Callable[..., T]) -> T:
    """Inverse of :func:`encode`: ``build(nodes, n_features, calibration, metadata)``.

    Errors of ``build`` (e.g. a circuit that does not validate) become
    :class:`CircuitFormatError` too.
    """
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
        return build(nodes, manifest["n_features"], calibration, manifest.get("metadata"))
    except CircuitFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
        raise CircuitFormatError(f"invalid circuit file content: {exc}") from exc


def write_bytes(data: bytes, path: PathOrFile) -> None:
    """Write ``data`` to a path (atomically, via a temporary file) or binary file object."""
    if not isinstance(path, (str, os.PathLike)):
        path.write(data)
        return
    target = os.fspath(path)
    tmp = f"{target}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)


def read_bytes(path: PathOrFile) -> bytes:
    """Read all bytes of a path or binary file object."""
    if not isinstance(path, (str, os.PathLike)):
        return path.read()
    with open(os.fspath(path), "rb") as fh:
        return fh.read()

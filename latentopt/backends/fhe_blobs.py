"""The wire format of ciphertexts, results and evaluation keys (framed blobs).

A blob is ``LTOPTFHE``, the length of a JSON header (little-endian uint64), the header
(format, version, kind, circuit id, the frames' sizes and SHA-256, and the kind's own
fields) and the frames.  A blob of another kind, version or circuit, or with a bad
checksum, raises :class:`FHEArtifactError`; so does a ciphertexts header whose calls do
not cover its samples as the client plans them (:func:`check_calls`).

>>> blob = _pack("ciphertexts", "c1", {"n_samples": 1, "calls": [[0, 1, "single"]]}, [b"x"])
>>> head, frames = _unpack(blob, "ciphertexts", "c1")
>>> check_calls(head, len(frames), batch_size=4), frames
(1, [b'x'])
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from typing import Any

__all__ = ["BLOB_FORMAT", "FORMAT_VERSION", "FHEArtifactError", "check_calls",
           "check_key_id", "new_key_id"]

FORMAT_VERSION = 1
BLOB_FORMAT = "latentopt.fhe.blob"
_MAGIC = b"LTOPTFHE"


class FHEArtifactError(ValueError):
    """An artefact, ciphertext or key blob is invalid, modified or for another circuit."""


def _pack(kind: str, circuit_id: str, header: dict[str, Any], frames: list[bytes]) -> bytes:
    head = dict(header, format=BLOB_FORMAT, format_version=FORMAT_VERSION, kind=kind,
                circuit_id=circuit_id, sizes=[len(f) for f in frames],
                sha256=hashlib.sha256(b"".join(frames)).hexdigest())
    raw = json.dumps(head).encode()
    return b"".join([_MAGIC, struct.pack("<Q", len(raw)), raw, *frames])


def _unpack(data: bytes, kind: str, circuit_id: str) -> tuple[dict[str, Any], list[bytes]]:
    try:
        if data[:8] != _MAGIC:
            raise ValueError("bad magic")
        (n,) = struct.unpack("<Q", data[8:16])
        head = json.loads(data[16 : 16 + n])
        pos, frames = 16 + n, []
        for size in head["sizes"]:
            frames.append(data[pos : pos + size])
            pos += size
        if not isinstance(head, dict):
            raise TypeError("its header is not a JSON object")
    except (ValueError, KeyError, TypeError, struct.error, RecursionError) as exc:
        raise FHEArtifactError(f"not a latentopt FHE {kind} blob ({exc})") from exc
    if head.get("kind") != kind:
        raise FHEArtifactError(f"expected {kind}, got a blob of {head.get('kind')!r}")
    if head.get("format_version") != FORMAT_VERSION:
        raise FHEArtifactError(f"unsupported {kind} blob version {head.get('format_version')!r}")
    if head.get("circuit_id") != circuit_id:
        raise FHEArtifactError(f"these {kind} were made for another circuit (circuit id mismatch)")
    if pos != len(data) or hashlib.sha256(b"".join(frames)).hexdigest() != head.get("sha256"):
        raise FHEArtifactError(f"{kind} blob is truncated or corrupt (checksum mismatch)")
    return head, frames


def check_calls(head: dict[str, Any], n_frames: int, batch_size: int) -> int:
    """The number of samples of a ciphertexts (or results) header, after checking that
    its ``calls`` are what :func:`~latentopt.backends.batching.plan_calls` makes: one per
    frame, ``[start, stop, "single" | "batch"]`` covering ``0 .. n_samples`` in order,
    single calls of one sample, batch calls of ``batch_size`` samples but for a last,
    shorter (padded) one.  So the declared ``n_samples`` is the work a request asks for:
    a header declaring 1 sample over 12 calls got past the server's sample limit.
    :class:`FHEArtifactError` otherwise."""
    n, calls = head.get("n_samples"), head.get("calls")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not (is_int(n) and int(n) >= 1 and isinstance(calls, list)  # type: ignore[arg-type]
            and len(calls) == n_frames):
        raise FHEArtifactError("malformed ciphertexts header (n_samples, or one call per "
                               "ciphertext frame)")
    pos = 0
    for i, c in enumerate(calls):
        ok = (isinstance(c, list) and len(c) == 3 and is_int(c[0]) and is_int(c[1])
              and c[0] == pos and c[2] in ("single", "batch"))
        if ok:
            size = c[1] - c[0]
            ok = (size == 1 if c[2] == "single" else
                  size == batch_size or (i == len(calls) - 1 and 1 <= size < batch_size))
        if not ok:
            raise FHEArtifactError(f"malformed ciphertexts header: call {i} {c!r} (calls "
                                   f"cover the samples in order, batches of {batch_size})")
        pos = c[1]
    if pos != n:
        raise FHEArtifactError(f"malformed ciphertexts header: the calls cover {pos} samples, "
                               f"n_samples says {n}")
    return int(n)


def new_key_id() -> str:
    """A fresh unguessable key id (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def check_key_id(found: str | None, expected: str | None, message: str) -> None:
    """Raise :class:`FHEArtifactError` when two key ids are known and differ."""
    if found is not None and expected is not None and found != expected:
        raise FHEArtifactError(f"{message} (key id mismatch)")

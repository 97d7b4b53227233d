"""Client/server deployment of a compiled :class:`~latentopt.backends.fhe.FHECircuit`.

:func:`save_deployment` writes two artefacts:

* ``server.zip`` -- the compiled concrete program (no secret key), for the party that
  computes on ciphertexts (:class:`FHEServer`);
* ``client.zip`` -- the input quantizer and output dequantizer of the circuit, the
  output offsets of the lowering and concrete's client specs, for the party that owns
  the data and the keys (:class:`FHEClient`).

Each artefact is a zip with a ``manifest.json`` (format name and version, library
versions, circuit id, SHA-256 of every member).  Ciphertexts, results and evaluation
keys travel as framed byte strings tagged with the circuit id, so a key or ciphertext
made for another circuit is refused with a clear message instead of failing inside
concrete.  Each key set also gets an unguessable *key id* at keygen
(``secrets.token_urlsafe``): evaluation keys, ciphertexts, results and the saved key file
carry it, so ciphertexts run with another client's evaluation keys, or results
decrypted with another key set, raise instead of decrypting to garbage.  Loading another
format, a newer version or a damaged file raises :class:`FHEArtifactError` (the
checksums, the manifest's own included, detect damage, not a deliberate edit that
rewrites them too).

A round trip::

    paths = save_deployment(fc, "deploy/")             # developer
    client = FHEClient.load(paths["client"])           # data owner
    client.keygen()
    keys, ct = client.evaluation_keys(), client.encrypt(X)
    server = FHEServer.load(paths["server"])           # untrusted server
    result = server.run(ct, keys)
    y = client.decrypt(result)                         # floats, as IntegerBackend.predict
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
import warnings
import weakref
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np

from ..ir import Circuit
from ..ir.archive import _ZIP_ERRORS
from ..ir.inputs import warn_far_outside
from ..ir.nodes import Dequantize, Node, QuantizeInput
from ..ir.schedule import check_features, check_quantized
from .batching import pad_batch, plan_calls
from .fhe_blobs import (  # the wire format; re-exported (deploy, tests)
    FORMAT_VERSION,
    FHEArtifactError,
    _pack,
    _unpack,
    check_calls,
    check_key_id,
    new_key_id,
)
from .fhe_concrete import concrete_fhe
from .fhe_diagnostics import report_overflow
from .fhe_lowering import LoweringPlan

__all__ = ["CompiledCircuit", "FHEArtifactError", "FHEClient", "FHEServer", "check_calls",
           "check_key_id", "new_key_id", "save_deployment"]

SERVER_FORMAT, CLIENT_FORMAT = "latentopt.fhe.server", "latentopt.fhe.client"
PathLike = Union[str, Path]


class CompiledCircuit(Protocol):
    """What :func:`save_deployment` reads of a compiled circuit
    (a :class:`~latentopt.backends.fhe.FHECircuit`)."""

    circuit: Circuit
    plan: LoweringPlan
    module: Any
    batch_size: int
    report: dict[str, Any]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence concrete's jsonpickle deprecation warnings (MLIR artefacts)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*jsonpickle.*", category=DeprecationWarning)
        yield


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import latentopt

    return {"latentopt": latentopt.__version__, "concrete-python": version("concrete-python")}


# ------------------------------------------------------------------ artefact zips
def _write_artifact(path: Path, fmt: str, meta: dict[str, Any], members: dict[str, bytes]) -> None:
    manifest = dict(meta, format=fmt, format_version=FORMAT_VERSION, versions=_versions(),
                    sha256={k: hashlib.sha256(v).hexdigest() for k, v in members.items()})
    manifest = json.loads(json.dumps(manifest))  # as it is read back (str keys)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        for name, data in members.items():
            zf.writestr(name, data)


#: Manifest fields every artefact of a format must hold, and their types.
_MANIFEST_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    SERVER_FORMAT: {"circuit_id": str, "batch_size": int, "n_features": int,
                    "n_outputs": int},
    CLIENT_FORMAT: {"circuit_id": str, "batch_size": int, "n_features": int,
                    "n_outputs": int, "nodes": list, "input_range": list},
}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``manifest`` without its ``manifest_sha256``
    field: the manifest's own checksum (the ``sha256`` field covers the other members)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def verify_manifest(path: PathLike, manifest: dict[str, Any]) -> None:
    """Refuse an edited manifest.  Artefacts written before manifests carried their own
    checksum (no ``manifest_sha256`` field) are still read."""
    if "manifest_sha256" not in manifest:
        return
    if manifest["manifest_sha256"] != manifest_digest(manifest):
        raise FHEArtifactError(f"{path}: artefact is corrupt or was modified (manifest.json "
                               f"checksum mismatch); use the files save_deployment wrote")


def _check_manifest(path: PathLike, fmt: str, manifest: dict[str, Any]) -> None:
    """The manifest is not covered by the checksums: a hand-edited or truncated one
    is refused here rather than as a KeyError deep inside the server or client."""
    for key, kind in _MANIFEST_FIELDS.get(fmt, {}).items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise FHEArtifactError(f"{path}: manifest field {key!r} is missing or invalid "
                                   f"({value!r}); re-export the model")
    if "model_id" in manifest and not isinstance(manifest["model_id"], str):
        raise FHEArtifactError(f"{path}: manifest field 'model_id' is invalid")
    if manifest["batch_size"] < 1 or manifest["n_features"] < 1 or manifest["n_outputs"] < 1:
        raise FHEArtifactError(f"{path}: manifest sizes must be positive; re-export the model")


def _read_artifact(path: PathLike, fmt: str, verify: bool = True
                   ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and members of an artefact, checked (``verify=False``: all but the
    manifest's own checksum, for a caller that checks it later with
    :func:`verify_manifest`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            members = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    except (*_ZIP_ERRORS, KeyError) as exc:  # a flipped bit may read as "encrypted"
        raise FHEArtifactError(f"{path}: not a latentopt FHE artefact ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise FHEArtifactError(f"{path}: expected a {fmt!r} artefact, found {found!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FHEArtifactError(
            f"{path}: {fmt} format version {version!r} is not supported (this latentopt "
            f"reads versions 1..{FORMAT_VERSION}); re-export it or upgrade latentopt")
    sums = manifest.get("sha256", {})
    if set(sums) != set(members) or any(
        hashlib.sha256(members[k]).hexdigest() != sums[k] for k in members
    ):
        raise FHEArtifactError(f"{path}: artefact is corrupt or was modified (checksum mismatch)")
    _check_manifest(path, fmt, manifest)
    built = manifest.get("versions", {}).get("concrete-python")
    if built != _versions()["concrete-python"]:
        raise FHEArtifactError(
            f"{path}: built with concrete-python {built}, this environment has "
            f"{_versions()['concrete-python']}; re-export the circuit with this version")
    if verify:
        verify_manifest(path, manifest)
    return manifest, members


def save_deployment(fc: CompiledCircuit, directory: PathLike, via_mlir: bool = False,
                    client_extra: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Write ``server.zip`` and ``client.zip`` for ``fc`` into ``directory``.

    ``via_mlir=True`` stores the MLIR program instead of the compiled library: portable
    across machines, recompiled when the server loads it.  ``client_extra`` are more
    members of the client artefact (the estimator's labels and output units); the model
    id covers them.
    """
    extra = dict(client_extra or {})
    if {"manifest.json", "client.specs", "arrays.npz"} & set(extra):
        raise ValueError(f"client_extra may not replace the artefact's members: {sorted(extra)}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    server = fc.module.server
    specs = server.client_specs.serialize()
    circuit_id = hashlib.sha256(specs).hexdigest()
    meta = {"circuit_id": circuit_id, "batch_size": fc.batch_size,
            "n_features": fc.circuit.n_features, "n_outputs": fc.circuit.n_outputs,
            "programmable_bootstrap_count": fc.report.get("programmable_bootstrap_count")}
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        server.save(Path(tmp) / "program.zip", via_mlir=via_mlir)
        program = (Path(tmp) / "program.zip").read_bytes()
    nodes: list[Node] = [fc.circuit.input_quantizer, fc.circuit.output]
    arrays, node_meta = {}, []
    for i, node in enumerate(nodes):
        m, a = node.to_dict()
        node_meta.append(m)
        arrays.update({f"n{i}/{k}": v for k, v in a.items()})
    arrays["output_offset"] = np.asarray(fc.plan.output_offset, np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    # models of one architecture share a circuit id (the key parameters); the model id
    # names this export (program, client arrays): a client of another model's export
    # would decrypt and dequantize right and label wrong
    # (and the estimator's labels and units: an export that differs only in its labels
    # is another model, not a cached one)
    digest = hashlib.sha256(program + specs + buf.getvalue())
    for name in sorted(extra):
        digest.update(name.encode() + b"\0" + hashlib.sha256(extra[name]).digest())
    meta["model_id"] = digest.hexdigest()
    _write_artifact(out / "server.zip", SERVER_FORMAT, meta, {"program.zip": program})
    client_meta = dict(meta, nodes=node_meta, input_range=list(fc.report["input_range"]),
                       input_box=fc.report.get("input_box"),
                       range_mode=fc.report.get("range_mode", "worst_case"),
                       on_overflow=fc.report.get("on_overflow", "warn"))
    _write_artifact(out / "client.zip", CLIENT_FORMAT, client_meta,
                    {"client.specs": specs, "arrays.npz": buf.getvalue(), **extra})
    return {"server": out / "server.zip", "client": out / "client.zip"}


# ----------------------------------------------------------------------- server
class FHEServer:
    """Runs a deployed circuit on ciphertexts; never sees a secret key.

    Load with :meth:`load`; call :meth:`run` with the client's ciphertext blob and
    evaluation keys (bytes, or the object :meth:`load_evaluation_keys` returns, which
    avoids deserialising hundreds of MB on every request).
    """

    def __init__(self, server: Any, manifest: dict[str, Any]) -> None:
        self._server = server
        self.manifest = manifest
        self.circuit_id: str = manifest["circuit_id"]
        library_dir = server._library.get_output_dir_path()  # concrete's temporary copy
        self._cleanup = weakref.finalize(self, shutil.rmtree, library_dir, ignore_errors=True)

    @classmethod
    def load(cls, path: PathLike) -> FHEServer:
        fhe = concrete_fhe()
        manifest, members = _read_artifact(path, SERVER_FORMAT)
        with tempfile.TemporaryDirectory() as tmp, _quiet():
            program = Path(tmp) / "program.zip"
            program.write_bytes(members["program.zip"])
            server = fhe.Server.load(program)  # unpacks to its own directory
        return cls(server, manifest)

    def load_evaluation_keys(self, data: bytes) -> Any:
        """Deserialise an evaluation-key blob from :meth:`FHEClient.evaluation_keys`."""
        _, frames = _unpack(data, "evaluation keys", self.circuit_id)
        return concrete_fhe().EvaluationKeys.deserialize(frames[0])

    def run(self, ciphertexts: bytes, evaluation_keys: Any, n_jobs: int = 2) -> bytes:
        """Evaluate encrypted inputs; return the encrypted-results blob."""
        fhe = concrete_fhe()
        head, frames = _unpack(ciphertexts, "ciphertexts", self.circuit_id)
        if isinstance(evaluation_keys, bytes):
            key_head, _ = _unpack(evaluation_keys, "evaluation keys", self.circuit_id)
            check_key_id(head.get("key_id"), key_head.get("key_id"),
                         "these ciphertexts were encrypted under another key set than the "
                         "evaluation keys given")
            keys = self.load_evaluation_keys(evaluation_keys)
        else:
            keys = evaluation_keys

        check_calls(head, len(frames), int(self.manifest["batch_size"]))

        def run_one(args: tuple[list[Any], bytes]) -> bytes:
            (a, _, name), frame = args
            try:
                value = fhe.Value.deserialize(frame)
            except Exception as exc:  # noqa: BLE001 - the client's bytes, not the server
                raise FHEArtifactError(f"the ciphertext of samples {a}.. is not a concrete "
                                       f"value ({exc})") from exc
            try:
                out = self._server.run(value, evaluation_keys=keys, function_name=name)
            except RuntimeError as exc:
                if "incompatible" not in str(exc):
                    raise
                raise FHEArtifactError(  # e.g. a batch ciphertext sent as a single call
                    f"the ciphertext of samples {a}.. is not an input of the {name!r} "
                    f"function ({exc})") from exc
            return out.serialize()

        jobs = list(zip(head["calls"], frames))
        if len(jobs) <= 1 or int(n_jobs) <= 1:
            results = [run_one(job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=int(n_jobs)) as pool:
                results = list(pool.map(run_one, jobs))
        return _pack("results", self.circuit_id, {"n_samples": head["n_samples"],
                                                  "calls": head["calls"],
                                                  "key_id": head.get("key_id")}, results)


# ----------------------------------------------------------------------- client
class FHEClient:
    """Owns the keys: quantizes and encrypts inputs, decrypts and dequantizes results.

    Parameters of :meth:`load`: ``insecure_key_cache`` reuses keys from a directory
    (**tests only**: insecure).
    """

    def __init__(self, client: Any, manifest: dict[str, Any], quantizer: QuantizeInput,
                 dequantizer: Dequantize, output_offset: np.ndarray) -> None:
        self._client = client
        self.manifest = manifest
        self.circuit_id: str = manifest["circuit_id"]
        self.batch_size = int(manifest["batch_size"])
        self.n_features = int(manifest["n_features"])
        self.quantizer, self.dequantizer = quantizer, dequantizer
        self.output_offset = output_offset
        #: Identifier of the current key set (set at keygen / load_keys), or None.
        self.key_id: str | None = None

    @classmethod
    def load(cls, path: PathLike, insecure_key_cache: PathLike | None = None) -> FHEClient:
        fhe = concrete_fhe()
        manifest, members = _read_artifact(path, CLIENT_FORMAT)
        if hashlib.sha256(members["client.specs"]).hexdigest() != manifest["circuit_id"]:
            raise FHEArtifactError(f"{path}: client specs do not match the circuit id")
        with np.load(io.BytesIO(members["arrays.npz"]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        nodes = []
        for i, meta in enumerate(manifest["nodes"]):
            sub = {k[len(f"n{i}/"):]: v for k, v in arrays.items() if k.startswith(f"n{i}/")}
            nodes.append(Node.from_dict(meta, sub))
        quantizer, dequantizer = nodes
        if not isinstance(quantizer, QuantizeInput) or not isinstance(dequantizer, Dequantize):
            raise FHEArtifactError(f"{path}: unexpected client nodes")
        specs = fhe.ClientSpecs.deserialize(members["client.specs"])
        cache = None if insecure_key_cache is None else str(insecure_key_cache)
        client = fhe.Client(specs, keyset_cache_directory=cache)
        return cls(client, manifest, quantizer, dequantizer, arrays["output_offset"])

    # keys ---------------------------------------------------------------------
    def keygen(self, force: bool = False, seed: int | None = None) -> None:
        """Generate the secret and evaluation keys (seconds to minutes).

        A new key set gets a new unguessable :attr:`key_id`.
        """
        if force or self.key_id is None or not self._client.keys.are_generated:
            self._client.keygen(force=force, secret_seed=seed)
            self.key_id = new_key_id()

    def evaluation_keys(self) -> bytes:
        """Serialised evaluation keys for the server (public material), tagged with
        the circuit id and :attr:`key_id`."""
        self.keygen()
        data = self._client.evaluation_keys.serialize()
        return _pack("evaluation keys", self.circuit_id, {"key_id": self.key_id}, [data])

    def save_keys(self, path: PathLike) -> None:
        """Write all keys, **secret key included, unencrypted**, to ``path``
        (tagged with the circuit id and :attr:`key_id`)."""
        self.keygen()
        blob = _pack("secret keys", self.circuit_id, {"key_id": self.key_id},
                     [self._client.keys.serialize()])
        Path(path).write_bytes(blob)

    def load_keys(self, path: PathLike) -> None:
        """Load keys written by :meth:`save_keys`; keys of another circuit are refused."""
        head, frames = _unpack(Path(path).read_bytes(), "secret keys", self.circuit_id)
        self._client.keys.load_from_bytes(frames[0])
        self.key_id = head.get("key_id")

    # data ---------------------------------------------------------------------
    def quantize(self, X: np.ndarray) -> np.ndarray:
        X = check_features(np.asarray(X, dtype=np.float64), self.n_features)
        if not np.all(np.isfinite(X)):  # as the estimators' predict; quantized, an inf
            raise ValueError("X contains NaN or infinity")  # was clipped to a valid input
        warn_far_outside(X, self.quantizer, stacklevel=3)  # clipped by the quantizer
        return self.quantizer.apply(X)

    def encrypt(self, X: np.ndarray) -> bytes:
        """Quantize and encrypt float features; returns the ciphertext blob.

        For a ``range_mode="calibrated"`` circuit, samples outside the calibrated input
        box (per feature, with the margin: ``manifest["input_box"]``) are clipped to it
        with a warning, or refused with ``FHEOverflowError`` (the compile option
        ``on_overflow``): their encrypted result could otherwise be silently wrong.
        """
        return self.encrypt_integers(self.clip_to_box(self.quantize(X)))

    def clip_to_box(self, q: np.ndarray) -> np.ndarray:
        """Quantized inputs clipped to the compiled input box, telling the user if any
        sample was outside (see :meth:`encrypt`); unchanged for a worst-case circuit."""
        box = self.manifest.get("input_box")
        if self.manifest.get("range_mode") != "calibrated" or box is None:
            return q
        lo, hi = np.asarray(box[0], np.int64), np.asarray(box[1], np.int64)
        outside = ((q < lo) | (q > hi)).any(axis=1)
        report_overflow(int(outside.sum()), len(q), self.manifest.get("on_overflow", "warn"),
                        "lie outside the calibrated input box of this circuit (range_mode="
                        "'calibrated'); they were clipped to it")
        return np.clip(q, lo, hi)

    def encrypt_integers(self, q: np.ndarray) -> bytes:
        q = check_quantized(q, self.n_features, self.manifest["input_range"],
                            reason="the range the deployed circuit was compiled for")
        if len(q) == 0:  # a blob of no ciphertexts: the server would have nothing to run
            raise ValueError("nothing to encrypt: X has 0 samples")
        self.keygen()
        calls = plan_calls(len(q), self.batch_size)
        frames = [
            self._client.encrypt(pad_batch(q[a:b], name, self.batch_size),
                                 function_name=name).serialize()
            for a, b, name in calls
        ]
        return _pack("ciphertexts", self.circuit_id,
                     {"n_samples": len(q), "calls": calls, "key_id": self.key_id}, frames)

    def decrypt_integers(self, results: bytes) -> np.ndarray:
        """Decrypt a results blob to the circuit's output integers."""
        fhe = concrete_fhe()
        head, frames = _unpack(results, "results", self.circuit_id)
        check_key_id(head.get("key_id"), self.key_id,
                     "these results were computed for another key set than this client's")
        check_calls(head, len(frames), self.batch_size)
        out = np.empty((head["n_samples"], int(self.manifest["n_outputs"])), dtype=np.int64)
        for (a, b, name), frame in zip(head["calls"], frames):
            y = self._client.decrypt(fhe.Value.deserialize(frame), function_name=name)
            out[a:b] = np.asarray(y, dtype=np.int64)[: b - a]
        return out + self.output_offset

    def decrypt(self, results: bytes) -> np.ndarray:
        """Decrypt and dequantize a results blob to float outputs."""
        return self.dequantizer.apply(self.decrypt_integers(results))

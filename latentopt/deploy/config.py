"""Configuration of ``latentopt serve`` and the models it serves."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.fhe_deploy import (
    CLIENT_FORMAT,
    SERVER_FORMAT,
    FHEArtifactError,
    _read_artifact,
    verify_manifest,
)

__all__ = ["ModelEntry", "ServeConfig", "load_model", "read_token_file"]

MiB = 2**20


@dataclass
class ServeConfig:
    """Settings of the server (see ``latentopt serve --help``).

    Parameters
    ----------
    models : dict
        Model name -> directory holding ``server.zip`` (and ``client.zip``, served to
        clients) or the path of a ``server.zip``.
    store : str
        Key-store directory, or a ``redis://`` URL shared by replicas.
    max_keys, max_store_bytes : int, optional
        Limits of the key store; least recently used key sets are evicted beyond them.
    workers : int, optional
        Worker processes (default: every core).
    cache_size : int
        Deserialised key sets kept per worker (LRU).
    threads : int
        Requests of one batch run concurrently in a worker.
    max_batch : int
        Queued requests of one client dispatched together.
    max_request_bytes, max_key_bytes, max_samples : int
        Request-size limits (ciphertexts, key registration, samples per request).
    request_timeout : float
        Seconds before a prediction is answered 504.
    token : str, optional
        One bearer token for every client.
    token_file : path, optional
        Per-client tokens, one ``name token`` per line (``#`` comments).
    replay_ttl : float
        Seconds a served ciphertext digest is remembered (replays refused).
    """

    models: dict[str, str | Path]
    store: str = "latentopt-keys"
    max_keys: int | None = 10_000
    max_store_bytes: int | None = 64 * 1024 * MiB
    workers: int | None = None
    cache_size: int = 4
    threads: int = 1
    max_batch: int = 8
    max_request_bytes: int = 64 * MiB
    max_key_bytes: int = 2048 * MiB
    max_samples: int = 4096
    request_timeout: float = 600.0
    token: str | None = None
    token_file: str | Path | None = None
    replay_ttl: float = 3600.0
    extra: dict[str, Any] = field(default_factory=dict)

    def tokens(self) -> dict[str, str]:
        """Token -> client name ('' for the shared token)."""
        out: dict[str, str] = {}
        if self.token:
            if len(self.token) < 16:  # as in a token file
                raise ValueError("the shared token must have at least 16 characters")
            out[self.token] = ""
        if self.token_file is not None:
            for name, tok in read_token_file(self.token_file).items():
                if tok in out:
                    raise ValueError(f"{self.token_file}: the token of {name!r} is the "
                                     f"shared --token too; give every client its own")
                out[tok] = name
        return out


def read_token_file(path: str | Path) -> dict[str, str]:
    """``{client name: token}`` from a file of ``name token`` lines."""
    out: dict[str, str] = {}
    seen: dict[str, int] = {}  # token -> line
    names: dict[str, int] = {}  # name -> line
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[1]) < 16:
            raise ValueError(f"{path}:{i}: expected 'name token' with a token of at least "
                             f"16 characters")
        name, token = parts
        # one line per client, one client per token: a second line silently replaced
        # the first (a rotated-out token answered 401, a shared one named one client)
        if name in names:
            raise ValueError(f"{path}:{i}: client {name!r} is named twice (first on line "
                             f"{names[name]}); one token per client")
        if token in seen:
            raise ValueError(f"{path}:{i}: this token is given to two clients (first on "
                             f"line {seen[token]}); every client needs its own token")
        names[name], seen[token] = i, i
        out[name] = token
    return out


@dataclass
class ModelEntry:
    """One served model: its artefacts and what ``GET /v1/models/{name}`` says."""

    name: str
    server_zip: Path
    client_zip: Path | None
    manifest: dict[str, Any]
    client_manifest: dict[str, Any] | None
    pbs_per_sample: int | None

    @property
    def circuit_id(self) -> str:
        return str(self.manifest["circuit_id"])

    @property
    def model_id(self) -> str:
        """The export's id (the circuit id for artefacts written before model ids)."""
        return str(self.manifest.get("model_id", self.circuit_id))

    @property
    def batch_size(self) -> int:
        return int(self.manifest["batch_size"])

    def info(self) -> dict[str, Any]:
        client = self.client_manifest or {}
        return {
            "name": self.name,
            "circuit_id": self.circuit_id,
            "model_id": self.model_id,
            "input": {"n_features": self.manifest["n_features"],
                      "quantized_range": client.get("input_range"),
                      "batch_size": self.batch_size},
            "n_outputs": self.manifest["n_outputs"],
            "programmable_bootstrap_count": self.pbs_per_sample,
            "versions": self.manifest.get("versions", {}),
            "format_version": self.manifest.get("format_version"),
            "client_artifact": self.client_zip is not None,
        }


def load_model(name: str, path: str | Path) -> ModelEntry:
    """Read (and check) the artefacts of one model without loading the program."""
    p = Path(path)
    server_zip = p / "server.zip" if p.is_dir() else p
    client_zip: Path | None = server_zip.with_name("client.zip")
    if not server_zip.exists():
        raise FHEArtifactError(f"{path}: no server.zip (write it with save_deployment)")
    # manifests' own checksums are checked after the pair: a client artefact of another
    # export is named as such, not as a modified file
    manifest, _ = _read_artifact(server_zip, SERVER_FORMAT, verify=False)
    client_manifest = None
    if client_zip is not None and client_zip.exists():
        client_manifest, _ = _read_artifact(client_zip, CLIENT_FORMAT, verify=False)
        if client_manifest["circuit_id"] != manifest["circuit_id"]:
            raise FHEArtifactError(f"{client_zip} belongs to another circuit than {server_zip}")
        if client_manifest.get("model_id") != manifest.get("model_id"):
            # same architecture, another export: the client would label results wrong
            raise FHEArtifactError(f"{client_zip} and {server_zip} come from different "
                                   f"exports (model ids differ); deploy the pair that "
                                   f"save_deployment wrote together")
        verify_manifest(client_zip, client_manifest)
    else:
        client_zip = None
    verify_manifest(server_zip, manifest)
    pbs = manifest.get("programmable_bootstrap_count")
    return ModelEntry(name, server_zip, client_zip, manifest, client_manifest,
                      None if pbs is None else int(pbs))


def default_workers() -> int:
    return os.cpu_count() or 1

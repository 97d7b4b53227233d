"""The client of ``latentopt serve``: keys, encryption and the estimator's outputs.

>>> client = Client("http://127.0.0.1:8000", "wine")     # doctest: +SKIP
>>> client.predict(X_test)            # labels, as clf.predict(X_test)   # doctest: +SKIP
>>> client.predict_proba(X_test)      # as clf.predict_proba(X_test)     # doctest: +SKIP

The secret key never leaves the client: it is written (unencrypted: protect the
directory) to ``key_dir`` together with its key id, and the evaluation keys are uploaded
once per server; later sessions load the keys and only check that the server still has
them.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.fhe_blobs import _pack
from ..backends.fhe_deploy import FHEArtifactError, FHEClient
from .artifacts import OutputTransform, read_estimator_info

__all__ = ["Client", "ModelChangedError", "ServerError"]

#: The HTTP header that carries the client's model id with every prediction.
MODEL_ID_HEADER = "X-Latentopt-Model-Id"

# one key generation at a time per process (threads); a lock file in key_dir for processes
_KEY_LOCK = threading.Lock()


class ServerError(RuntimeError):
    """The server answered an error: ``status`` (HTTP), ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ModelChangedError(ServerError):
    """The server now serves another export of the model (redeployed, retrained): this
    client's quantizer, dequantizer and labels are the old export's.  Create a new
    :class:`Client`."""


@contextlib.contextmanager
def _key_dir_lock(key_dir: Path) -> Iterator[None]:
    """Exclusive use of ``key_dir``: threads of this process, then other processes."""
    with _KEY_LOCK:
        try:
            import fcntl
        except ImportError:  # not POSIX: the thread lock only
            yield
            return
        fd = os.open(key_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _publish(path: Path, write: Any) -> None:
    """``write(tmp)`` into a new temporary file beside ``path`` (mode 0600), then
    atomically renamed to ``path``: a reader sees the old file or the whole new one."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _default_key_dir() -> Path:
    env = os.environ.get("LATENTOPT_KEY_DIR")
    return Path(env) if env else Path.home() / ".cache" / "latentopt" / "keys"


def _read_token(token: str | None, token_file: str | Path | None) -> str | None:
    if token is not None:
        return token
    if token_file is not None:
        for line in Path(token_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                return line.split()[-1]
        raise ValueError(f"{token_file}: no token in the file")
    return os.environ.get("LATENTOPT_TOKEN") or None


class Client:
    """Encrypted predictions from a ``latentopt serve`` server.

    Parameters
    ----------
    url : str
        The server, e.g. ``"https://fhe.example.com"``.
    model : str
        The model's name on the server.
    artifact : path, optional
        The model's ``client.zip``; by default downloaded from the server and checked
        against the circuit id the server announces.
    key_dir : path, optional
        Where the secret key and its key id are kept (default ``$LATENTOPT_KEY_DIR`` or
        ``~/.cache/latentopt/keys``).
    token, token_file : optional
        Bearer token, or a file holding it (default ``$LATENTOPT_TOKEN``).
    timeout : float
        Seconds per HTTP request.
    verify : bool or str
        TLS verification (``httpx``'s ``verify``: a CA bundle path for private CAs).
    insecure_key_cache : path, optional
        concrete's key cache -- **tests only**, insecure.
    """

    def __init__(self, url: str, model: str, *, artifact: str | Path | None = None,
                 key_dir: str | Path | None = None, token: str | None = None,
                 token_file: str | Path | None = None, timeout: float = 600.0,
                 verify: bool | str = True, insecure_key_cache: str | Path | None = None
                 ) -> None:
        import httpx

        self.url, self.model = url.rstrip("/"), model
        headers = {}
        tok = _read_token(token, token_file)
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                  verify=verify)
        self.info: dict[str, Any] = self._json("GET", f"/v1/models/{model}")
        self.key_dir = Path(key_dir) if key_dir is not None else _default_key_dir()
        self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        circuit_id = self.info["circuit_id"]
        # one export of the model (a redeployed model of the same architecture keeps its
        # circuit id and gets a new model id: a cached copy of the old one is not used)
        model_id = str(self.info.get("model_id") or circuit_id)
        self.model_id = model_id
        if artifact is None:  # downloaded once, kept in key_dir
            artifact = self.key_dir / f"{model}-{model_id[:16]}-client.zip"
            if not artifact.exists():
                self._download(artifact)
            try:
                self.fhe = FHEClient.load(artifact, insecure_key_cache=insecure_key_cache)
            except FHEArtifactError:  # a corrupt copy (an interrupted write): fetch again
                self._download(artifact)
                self.fhe = FHEClient.load(artifact, insecure_key_cache=insecure_key_cache)
        else:
            self.fhe = FHEClient.load(artifact, insecure_key_cache=insecure_key_cache)
        if self.fhe.circuit_id != circuit_id:
            raise FHEArtifactError(f"{artifact} is for another circuit than the server's "
                                   f"model {model!r}")
        if str(self.fhe.manifest.get("model_id", circuit_id)) != model_id:
            raise FHEArtifactError(f"{artifact} is another export than the server's model "
                                   f"{model!r} (model ids differ): its outputs would be "
                                   f"labelled wrong; use the server's client artefact")
        self.transform: OutputTransform = read_estimator_info(artifact)
        self.uploaded = False
        self._registered = False
        # keys are registered per served model: two models of one circuit keep their own
        self._keys_path = self.key_dir / f"{model}-{circuit_id[:32]}.keys"
        self._id_path = self.key_dir / f"{model}-{circuit_id[:32]}.json"

    def _download(self, path: Path) -> None:
        """The model's client artefact from the server, written atomically to ``path``."""
        data = self._request("GET", f"/v1/models/{self.model}/client").content
        _publish(path, lambda tmp: tmp.write_bytes(data))

    # ------------------------------------------------------------------ http
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(0, "connection", f"{method} {self.url}{path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                code, message = body["error"], body["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:500]
            raise ServerError(response.status_code, code, message)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ------------------------------------------------------------------ keys
    @property
    def key_id(self) -> str | None:
        return self.fhe.key_id

    def _load_or_generate(self) -> None:
        if self.fhe.key_id is not None:
            return
        # concurrent first uses (threads sharing this client, two clients or processes on
        # one key_dir) generate one key set: the others load it
        with _key_dir_lock(self.key_dir):
            if self.fhe.key_id is None:
                self._load_or_generate_locked()

    def _load_or_generate_locked(self) -> None:
        if self._keys_path.exists():
            self.fhe.load_keys(self._keys_path)  # refuses another circuit's keys
            meta = json.loads(self._id_path.read_text()) if self._id_path.exists() else {}
            if meta.get("key_id") not in (None, self.fhe.key_id):
                raise FHEArtifactError(f"{self._id_path}: key id does not match "
                                       f"{self._keys_path}")
            return
        old = self._keys_path.with_name(f"{self.fhe.circuit_id[:32]}.keys")
        if old.exists():  # named by circuit only, before keys were kept per served model
            warnings.warn(
                f"{old}: a key set of an earlier latentopt (named by its circuit only) is "
                f"not used; a new one is generated for model {self.model!r}.  Delete the "
                f"old file (an unencrypted secret key) once no older client needs it.",
                UserWarning, stacklevel=3)
        self.fhe.keygen()
        meta = json.dumps({"key_id": self.fhe.key_id, "circuit_id": self.fhe.circuit_id,
                           "model": self.model})
        # the key id first, then the keys: whenever the .keys file exists, the .json
        # beside it is its own (a crash in between leaves no keys: generated again)
        _publish(self._id_path, lambda tmp: tmp.write_text(meta))
        _publish(self._keys_path, self.fhe.save_keys)

    def register(self, force: bool = False) -> str:
        """Make sure the server holds this client's evaluation keys; returns the key id.

        Keys are generated (or loaded from ``key_dir``) and uploaded only when the server
        does not have them yet (or ``force``).
        """
        self._load_or_generate()
        key_id = str(self.fhe.key_id)
        if self._registered and not force:
            return key_id
        if not force:
            try:
                self._json("GET", f"/v1/models/{self.model}/keys/{key_id}")
                self._registered = True
                return key_id
            except ServerError as exc:
                if exc.status != 404:
                    raise
        lo, hi = self.fhe.manifest["input_range"]
        row = np.clip(self.fhe.quantize(np.zeros((1, self.fhe.n_features))), lo, hi)
        warmup = self.fhe.encrypt_integers(row.astype(np.int64))
        body = _pack("registration", self.fhe.circuit_id, {"key_id": key_id},
                     [self.fhe.evaluation_keys(), warmup])
        self._json("POST", f"/v1/models/{self.model}/keys", content=body,
                   headers={"Content-Type": "application/octet-stream"})
        self.uploaded = self._registered = True
        return key_id

    def delete_keys(self) -> None:
        """Remove this client's evaluation keys from the server (the secret key stays)."""
        self._load_or_generate()
        self._request("DELETE", f"/v1/models/{self.model}/keys/{self.fhe.key_id}")

    # ----------------------------------------------------------- predictions
    def run(self, ciphertexts: bytes) -> bytes:
        """Send one ciphertext blob; returns the encrypted results."""
        key_id = self.register()
        path = f"/v1/models/{self.model}/keys/{key_id}/predict"
        # the server refuses the request when it serves another export now: this client
        # would decrypt right and label wrong with the old export's dequantizer/classes
        headers = {"Content-Type": "application/octet-stream",
                   MODEL_ID_HEADER: self.model_id}
        try:
            try:
                response = self._request("POST", path, content=ciphertexts, headers=headers)
            except ServerError as exc:
                if exc.code != "unknown_key":
                    raise
                self.register(force=True)  # evicted from the server's store: upload again
                response = self._request("POST", path, content=ciphertexts, headers=headers)
        except ServerError as exc:
            if exc.code != "model_changed":
                raise
            raise ModelChangedError(
                exc.status, exc.code,
                f"{exc.message}.  This Client holds the artefact of the export it was "
                f"created for (model id {self.model_id[:12]}...); create a new Client for "
                f"{self.model!r} to use the model served now") from None
        return bytes(response.content)

    def outputs(self, X: Any) -> np.ndarray:
        """The circuit's dequantized outputs for float features ``X`` (rows, or samples
        of the torch model's input shape)."""
        X = self.transform.flat(np.asarray(X, dtype=np.float64))
        if X.ndim == 1:
            raise ValueError("X must be 2-d (n_samples, n_features)")
        self.register()
        return self.fhe.decrypt(self.run(self.fhe.encrypt(X)))

    def predict(self, X: Any) -> np.ndarray:
        """What the estimator's ``predict`` returns: labels, or target units."""
        return self.transform.predict(self.outputs(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, as the classifier's ``predict_proba``."""
        return self.transform.predict_proba(self.outputs(X))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

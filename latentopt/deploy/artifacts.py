"""What the deployment client needs to return the estimator's own outputs.

:func:`estimator_members` gives ``estimator.json`` and ``estimator.npz``, written into the
client artefact by :func:`latentopt.backends.fhe_deploy.save_deployment`: the task, the
class labels (classifiers), and the affine map from the circuit's dequantized outputs to
``predict``'s units (regressors; the identity once the transform is folded into the
circuit's ``Dequantize``).  :class:`OutputTransform` applies them on the client, so a
deployed model returns what ``estimator.predict`` / ``predict_proba`` return.

The map is *measured*, not assumed: ``predict(fhe="disable")`` is compared with the
circuit's dequantized outputs on random inputs and must be exactly affine, otherwise the
artefact is refused (the client could not reproduce ``predict``).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.fhe_deploy import FHEArtifactError
from ..ir.inputs import InputRangeWarning

__all__ = ["OutputTransform", "estimator_info", "estimator_members", "read_estimator_info",
           "write_estimator_info"]

TASKS = ("classifier", "regressor", "outputs")


@dataclass
class OutputTransform:
    """Maps dequantized circuit outputs to the estimator's ``predict`` units.

    Parameters
    ----------
    task : {"classifier", "regressor", "outputs"}
    classes : ndarray or None
        Labels, indexed by the argmax of the outputs (classifiers).
    scale, offset : ndarray or None
        ``predict = outputs * scale + offset`` per output (regressors).
    output_shape : tuple of int
        Shape of one prediction (``()`` for a 1-d target).
    input_shape : tuple of int or None
        Shape of one sample that the estimator accepts besides flat rows (a torch
        model's image shape); the deployment :class:`~latentopt.deploy.client.Client`
        accepts it too.
    """

    task: str = "outputs"
    classes: np.ndarray | None = None
    scale: np.ndarray | None = None
    offset: np.ndarray | None = None
    output_shape: tuple[int, ...] | None = None
    input_shape: tuple[int, ...] | None = None

    def flat(self, X: np.ndarray) -> np.ndarray:
        """``X`` as rows: samples of shape ``input_shape`` are flattened (C order, as
        the estimators do); other arrays are returned as they are."""
        if self.input_shape is not None and X.ndim == len(self.input_shape) + 1 and len(
                self.input_shape) > 1 and X.shape[1:] == self.input_shape:
            return X.reshape(len(X), -1)
        return X

    def predict(self, outputs: np.ndarray) -> np.ndarray:
        """What ``estimator.predict`` returns for these dequantized outputs."""
        out = np.asarray(outputs, dtype=np.float64)
        if self.task == "classifier":  # one output: a binary logit, class 1 above 0
            idx = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else np.argmax(out, 1)
            return idx if self.classes is None else self.classes[idx]
        if self.scale is not None and self.offset is not None:
            out = out * self.scale + self.offset
        if self.output_shape is not None:
            out = out.reshape((len(out), *self.output_shape))
        return out

    def predict_proba(self, outputs: np.ndarray) -> np.ndarray:
        """Softmax of the outputs, as the classifiers' ``predict_proba`` (a single output:
        the sigmoid of a binary logit)."""
        if self.task != "classifier":
            raise AttributeError(f"predict_proba is for classifiers; this model is a {self.task}")
        z = np.asarray(outputs, dtype=np.float64)
        if z.shape[1] == 1:  # a binary logit: [1 - sigmoid, sigmoid]
            p1 = 1.0 / (1.0 + np.exp(-np.clip(z[:, 0], -500, 500)))
            return np.stack([1.0 - p1, p1], axis=1)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)


def _affine(raw: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column ``pred = raw * a + b``; raises when that does not hold exactly."""
    a = np.ones(raw.shape[1])
    b = np.zeros(raw.shape[1])
    for j in range(raw.shape[1]):
        r, p = raw[:, j], pred[:, j]
        spread = np.ptp(r)
        if spread > 0:
            a[j] = (p[np.argmax(r)] - p[np.argmin(r)]) / spread
        b[j] = float(np.mean(p - a[j] * r))
    if not np.allclose(raw * a + b, pred, rtol=1e-9, atol=1e-9 * (1 + np.abs(pred).max())):
        raise FHEArtifactError("the estimator's predict is not an affine map of the circuit's "
                               "outputs; the deployment client cannot reproduce it")
    return a, b


def estimator_info(est: Any, n_probe: int = 64) -> OutputTransform:
    """Measure the :class:`OutputTransform` of a fitted, compiled latentopt estimator."""
    import warnings

    circuit = est.active_circuit_
    shape = getattr(est, "input_shape_", None)
    input_shape = None if shape is None else tuple(int(d) for d in shape)
    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 2.0, (n_probe, circuit.n_features))
    with warnings.catch_warnings():  # probe rows: an array, whatever the model was fitted on
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        warnings.simplefilter("ignore", InputRangeWarning)
        raw = np.asarray(est._raw_output(X, "disable"), dtype=np.float64)
        classes = getattr(est, "classes_", None)
        if classes is not None or getattr(est, "task", None) == "classification":
            if classes is None:
                classes = np.arange(max(2, raw.shape[1]))
            return OutputTransform("classifier", classes=np.asarray(classes),
                                   input_shape=input_shape)
        pred = np.asarray(est.predict(X, fhe="disable"), dtype=np.float64)
    a, b = _affine(raw, pred.reshape(len(pred), -1))
    return OutputTransform("regressor", scale=a, offset=b, output_shape=tuple(pred.shape[1:]),
                           input_shape=input_shape)


def estimator_members(info: OutputTransform) -> dict[str, bytes]:
    """``info`` as the client artefact's members ``estimator.json`` and ``estimator.npz``.

    ``save_deployment(..., client_extra=estimator_members(info))`` writes them with the
    artefact, and its model id covers them.
    """
    arrays = {k: v for k, v in (("classes", info.classes), ("scale", info.scale),
                                ("offset", info.offset)) if v is not None}
    if info.classes is not None and info.classes.dtype.kind == "O":
        arrays["classes"] = np.asarray(info.classes.tolist())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    meta = {"task": info.task, "output_shape": None if info.output_shape is None
            else list(info.output_shape),
            "input_shape": None if info.input_shape is None else list(info.input_shape)}
    return {"estimator.json": json.dumps(meta).encode(), "estimator.npz": buf.getvalue()}


def write_estimator_info(client_zip: str | Path, info: OutputTransform) -> None:
    """Add ``info`` to a client artefact written without it (checksums are updated).

    The model id is not: it does not cover ``info``.  Estimators write it with the
    artefact instead (:func:`estimator_members`).
    """
    extra = estimator_members(info)
    path = Path(client_zip)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    members.update(extra)
    manifest["sha256"] = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
        for name, data in members.items():
            zf.writestr(name, data)
    tmp.replace(path)


def read_estimator_info(client_zip: str | Path) -> OutputTransform:
    """The :class:`OutputTransform` of a client artefact (identity when it has none)."""
    try:
        zf = zipfile.ZipFile(client_zip)
    except zipfile.BadZipFile as exc:
        raise FHEArtifactError(f"{client_zip}: not a readable client artefact ({exc})") from exc
    with zf:
        names = set(zf.namelist())
        if "estimator.json" not in names:
            return OutputTransform()
        meta = json.loads(zf.read("estimator.json"))
        with np.load(io.BytesIO(zf.read("estimator.npz")), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    if meta.get("task") not in TASKS:
        raise FHEArtifactError(f"{client_zip}: unknown task {meta.get('task')!r}")
    shape, in_shape = meta.get("output_shape"), meta.get("input_shape")
    return OutputTransform(meta["task"], arrays.get("classes"), arrays.get("scale"),
                           arrays.get("offset"), None if shape is None else tuple(shape),
                           None if in_shape is None else tuple(int(d) for d in in_shape))

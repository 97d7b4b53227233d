"""The artefacts' manifests are covered by a checksum of their own."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from latentopt.backends.fhe_deploy import (
    FHEArtifactError,
    FHEClient,
    FHEServer,
    manifest_digest,
)
from latentopt.deploy.config import load_model

pytestmark = pytest.mark.fhe


def rewrite(src: Path, dst: Path, edit: Any, resign: bool = False) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "manifest.json":
                manifest = json.loads(data)
                edit(manifest)
                if resign:
                    manifest["manifest_sha256"] = manifest_digest(manifest)
                data = json.dumps(manifest).encode()
            zout.writestr(name, data)
    return dst


def test_an_edited_manifest_is_refused(deployed, tmp_path):
    """Editing manifest.json (the input quantizer's bits, the server's n_features) went
    undetected: the client quantized differently from the compiled circuit."""
    wine = deployed["root"] / "wine"
    for zip_name in ("client.zip", "server.zip"):
        with zipfile.ZipFile(wine / zip_name) as zf:
            assert "manifest_sha256" in json.loads(zf.read("manifest.json"))
    edits = [("client.zip", FHEClient.load, lambda m: m["nodes"][0].update(n_bits=2)),
             ("server.zip", FHEServer.load, lambda m: m.update(n_features=7))]
    for zip_name, load, edit in edits:
        d = tmp_path / zip_name.split(".")[0]
        d.mkdir()
        for name in ("client.zip", "server.zip"):
            (d / name).write_bytes((wine / name).read_bytes())
        rewrite(wine / zip_name, d / zip_name, edit)
        with pytest.raises(FHEArtifactError, match="manifest.json checksum mismatch"):
            load(d / zip_name)
        with pytest.raises(FHEArtifactError, match="manifest.json checksum mismatch"):
            load_model("wine", d)


def test_artefacts_written_before_manifest_checksums_still_load(deployed, tmp_path):
    wine = deployed["root"] / "wine"

    def legacy(m: dict[str, Any]) -> None:
        del m["manifest_sha256"]

    d = tmp_path / "legacy"
    d.mkdir()
    for name in ("client.zip", "server.zip"):
        rewrite(wine / name, d / name, legacy)
    assert FHEClient.load(d / "client.zip").circuit_id == load_model("w", d).circuit_id


def test_a_torch_models_deployment_takes_image_shaped_samples_and_warns_nothing(tmp_path,
                                                                               monkeypatch):
    """The deployment's Client refused (n, 1, 6, 6) images that the estimator accepts, and
    ``save_deployment`` warned that its own N(0, 2) probe rows were far outside the range
    of a model calibrated on pixels in [0, 1]."""
    import warnings

    import numpy as np
    import torch
    from torch import nn

    from latentopt import QuantizedTorchModel, compile_torch_model
    from latentopt.deploy.artifacts import read_estimator_info

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 2)).eval()
    X = np.random.default_rng(0).uniform(0, 1, (40, 1, 6, 6)).astype(np.float32)
    monkeypatch.setattr(QuantizedTorchModel, "_insecure_key_cache", str(tmp_path / "keys"),
                        raising=False)
    q = compile_torch_model(model, X, n_bits=3, rounding_bits=3, range_mode="worst_case",
                            verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = q.save_deployment(tmp_path / "cnn")
    info = read_estimator_info(paths["client"])
    assert info.input_shape == (1, 6, 6)
    np.testing.assert_array_equal(info.flat(X), X.reshape(40, 36))
    flat = X.reshape(40, 36)
    assert info.flat(flat) is flat  # rows stay rows
    assert info.flat(X.transpose(0, 2, 3, 1)).shape == (40, 6, 6, 1)  # not its shape: refused
    client = FHEClient.load(paths["client"])  # later, as rows of 36 columns
    with pytest.raises(ValueError, match="must have shape"):
        client.quantize(X.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(client.quantize(info.flat(X)), q.rounded_circuit_
                                  .input_quantizer.apply(flat))

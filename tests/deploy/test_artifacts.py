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

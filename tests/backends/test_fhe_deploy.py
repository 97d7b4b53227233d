"""Tests of latentopt.backends.fhe_deploy: artefacts, blobs and a cross-process round trip."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from latentopt.backends.fhe import FHECircuit
from latentopt.backends.fhe_deploy import FHEArtifactError, FHEClient, FHEServer
from latentopt.backends.integer import IntegerBackend

SERVER_SCRIPT = """
import sys
from latentopt.backends.fhe_deploy import FHEServer
server_zip, ct, keys, out = sys.argv[1:]
server = FHEServer.load(server_zip)
keys = server.load_evaluation_keys(open(keys, "rb").read())
result = server.run(open(ct, "rb").read(), keys)
open(out, "wb").write(result)
"""


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, make_mlp, sample_q):  # type: ignore[no-untyped-def]
    circuit = make_mlp(seed=11, hidden=3).with_rounding(1, "exact")
    fc = FHECircuit.compile(circuit, sample_q(circuit, 100), p_error=2.0**-40,
                            range_mode="worst_case", batch_size=4)
    paths = fc.save_deployment(tmp_path_factory.mktemp("deploy"))
    return circuit, fc, paths


def _rewrite(src: Path, dst: Path, edit_manifest=None, edit_member=None) -> Path:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "manifest.json" and edit_manifest is not None:
                manifest = json.loads(data)
                edit_manifest(manifest)
                data = json.dumps(manifest).encode()
            elif name != "manifest.json" and edit_member is not None:
                data = edit_member(data)
            zout.writestr(name, data)
    return dst


def test_artefacts_hold_no_secret_and_describe_the_circuit(deployed):
    circuit, fc, paths = deployed
    with zipfile.ZipFile(paths["server"]) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert sorted(zf.namelist()) == ["manifest.json", "program.zip"]
    assert manifest["format"] == "latentopt.fhe.server" and manifest["format_version"] == 1
    assert manifest["batch_size"] == 4 and manifest["n_features"] == circuit.n_features
    client = FHEClient.load(paths["client"])
    assert client.circuit_id == manifest["circuit_id"]
    assert client.quantizer.same_as(circuit.input_quantizer)
    assert client.dequantizer.same_as(circuit.output)
    X = np.random.default_rng(0).normal(0, 2, (5, circuit.n_features))
    np.testing.assert_array_equal(client.quantize(X), IntegerBackend(circuit).quantize(X))


def test_portable_server_artefact_loads(deployed, tmp_path):
    _, fc, paths = deployed
    portable = fc.save_deployment(tmp_path, via_mlir=True)  # MLIR, compiled on load
    assert portable["server"].stat().st_size < paths["server"].stat().st_size
    server = FHEServer.load(portable["server"])
    assert server.circuit_id == FHEServer.load(paths["server"]).circuit_id


@pytest.mark.parametrize("which", ["server", "client"])
def test_tampered_or_foreign_artefacts_are_refused(deployed, tmp_path, which):
    _, _, paths = deployed
    load = FHEServer.load if which == "server" else FHEClient.load
    other = "client" if which == "server" else "server"
    flip = lambda data: data[:-1] + bytes([data[-1] ^ 1])  # noqa: E731

    with pytest.raises(FHEArtifactError, match="modified"):
        load(_rewrite(paths[which], tmp_path / "a.zip", edit_member=flip))

    def newer(m): m["format_version"] = 99  # noqa: E306, E704
    with pytest.raises(FHEArtifactError, match="version 99 is not supported"):
        load(_rewrite(paths[which], tmp_path / "b.zip", edit_manifest=newer))

    def old_concrete(m): m["versions"]["concrete-python"] = "2.5.0"  # noqa: E306, E704
    with pytest.raises(FHEArtifactError, match="concrete-python 2.5.0"):
        load(_rewrite(paths[which], tmp_path / "c.zip", edit_manifest=old_concrete))

    with pytest.raises(FHEArtifactError, match="expected a 'latentopt.fhe"):
        load(paths[other])
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(FHEArtifactError, match="not a latentopt FHE artefact"):
        load(tmp_path / "junk.zip")
    # one flipped bit in the central directory reads as "encrypted" (RuntimeError) or
    # an unknown compression (NotImplementedError): still the artefact's error
    import struct

    data = paths[which].read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    first = struct.unpack("<I", data[eocd + 16:eocd + 20])[0]
    for offset in (8, 10):  # general-purpose flag (bit 0: encrypted), compression method
        bad = bytearray(data)
        bad[first + offset] ^= 1
        (tmp_path / "flip.zip").write_bytes(bytes(bad))
        with pytest.raises(FHEArtifactError, match="not a latentopt FHE artefact"):
            load(tmp_path / "flip.zip")


def test_manifests_are_checked_and_exports_are_told_apart(deployed, tmp_path):
    from latentopt.deploy.config import load_model

    _, _, paths = deployed
    for which, load in (("server", FHEServer.load), ("client", FHEClient.load)):
        def no_id(m): del m["circuit_id"]  # noqa: E306, E704
        with pytest.raises(FHEArtifactError, match="manifest field 'circuit_id'"):
            load(_rewrite(paths[which], tmp_path / f"{which}-a.zip", edit_manifest=no_id))

        def bad_batch(m): m["batch_size"] = "4"  # noqa: E306, E704
        with pytest.raises(FHEArtifactError, match="manifest field 'batch_size'"):
            load(_rewrite(paths[which], tmp_path / f"{which}-b.zip", edit_manifest=bad_batch))
    # the server and client artefacts of one export share its model id ...
    entry = load_model("m", paths["server"].parent)
    assert entry.client_manifest["model_id"] == entry.model_id != entry.circuit_id
    # ... and a client artefact of another export beside the server is refused
    pair = tmp_path / "pair"
    pair.mkdir()
    (pair / "server.zip").write_bytes(paths["server"].read_bytes())

    def other(m): m["model_id"] = "0" * 64  # noqa: E306, E704
    _rewrite(paths["client"], pair / "client.zip", edit_manifest=other)
    with pytest.raises(FHEArtifactError, match="different exports"):
        load_model("m", pair)


def test_an_empty_batch_is_not_encrypted(deployed, key_cache):
    _, _, paths = deployed
    client = FHEClient.load(paths["client"], insecure_key_cache=key_cache)
    with pytest.raises(ValueError, match="0 samples"):
        client.encrypt(np.zeros((0, client.n_features)))


def test_blobs_for_another_circuit_or_corrupt_are_refused(deployed):
    from latentopt.backends.fhe_deploy import _pack

    _, _, paths = deployed
    server = FHEServer.load(paths["server"])
    client = FHEClient.load(paths["client"])
    foreign = _pack("ciphertexts", "0" * 64, {"n_samples": 0, "calls": []}, [])
    with pytest.raises(FHEArtifactError, match="another circuit"):
        server.run(foreign, b"")
    mine = _pack("ciphertexts", server.circuit_id, {"n_samples": 1, "calls": []}, [b"abc"])
    with pytest.raises(FHEArtifactError, match="corrupt"):
        server.run(mine[:-1], b"")
    with pytest.raises(FHEArtifactError, match="expected results"):
        client.decrypt(mine)
    with pytest.raises(FHEArtifactError, match="not a latentopt FHE evaluation keys blob"):
        server.load_evaluation_keys(b"garbage")


@pytest.mark.fhe
def test_round_trip_across_processes(deployed, key_cache, tmp_path):
    circuit, _, paths = deployed
    client = FHEClient.load(paths["client"], insecure_key_cache=key_cache)
    client.keygen()
    X = np.random.default_rng(3).normal(0, 2, (6, circuit.n_features))  # 4 + padded 2
    (tmp_path / "keys").write_bytes(client.evaluation_keys())
    (tmp_path / "ct").write_bytes(client.encrypt(X))
    subprocess.run(
        [sys.executable, "-c", SERVER_SCRIPT, str(paths["server"]), str(tmp_path / "ct"),
         str(tmp_path / "keys"), str(tmp_path / "out")],
        check=True,
    )
    result = (tmp_path / "out").read_bytes()
    backend = IntegerBackend(circuit)
    np.testing.assert_array_equal(client.decrypt_integers(result),
                                  backend.run_integers(backend.quantize(X)))
    np.testing.assert_array_equal(client.decrypt(result), backend.predict(X))
    # keys saved by the client decrypt the same results after a reload
    client.save_keys(tmp_path / "secret.keys")
    again = FHEClient.load(paths["client"])
    again.load_keys(tmp_path / "secret.keys")
    np.testing.assert_array_equal(again.decrypt(result), backend.predict(X))


@pytest.mark.fhe
def test_round_trip_with_per_norm_partitions(make_two_lookup_layers, sample_q, key_cache,
                                             tmp_path):
    """A circuit compiled with several crypto-parameter sets (two bootstrap keys of one
    width) deploys and decrypts exactly."""
    circuit = make_two_lookup_layers()
    fc = FHECircuit.compile(circuit, sample_q(circuit, 100), p_error=2.0**-40,
                            parameter_strategy="precision_and_norm2", batch_size=2)
    paths = fc.save_deployment(tmp_path / "deploy")
    client = FHEClient.load(paths["client"], insecure_key_cache=key_cache)
    client.keygen()
    server = FHEServer.load(paths["server"])
    keys = server.load_evaluation_keys(client.evaluation_keys())
    X = np.random.default_rng(4).normal(0, 2, (3, circuit.n_features))
    result = server.run(client.encrypt(X), keys)
    backend = IntegerBackend(circuit)
    np.testing.assert_array_equal(client.decrypt_integers(result),
                                  backend.run_integers(backend.quantize(X)))


def test_a_corrupt_client_artefact_names_its_path_in_the_estimator_info(tmp_path):
    from latentopt.deploy.artifacts import read_estimator_info

    bad = tmp_path / "client.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FHEArtifactError, match="client.zip: not a readable client artefact"):
        read_estimator_info(bad)

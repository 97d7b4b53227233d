"""``latentopt serve`` over real HTTP: a uvicorn subprocess on loopback, the real client."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from deploy_support import TOKENS, Server

from latentopt.backends.fhe_deploy import FHEArtifactError, _pack, manifest_digest
from latentopt.deploy import Client, ServerError

pytestmark = pytest.mark.fhe


@pytest.fixture(scope="module")
def server(deployed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    """Both models, per-client tokens (alice, bob), a directory key store."""
    d = tmp_path_factory.mktemp("server")
    (d / "tokens").write_text("".join(f"{n} {t}\n" for n, t in TOKENS.items()))
    root = deployed["root"]
    srv = Server([str(root / "wine"), f"diabetes={root / 'diabetes'}"], d / "keys",
                 "--token-file", str(d / "tokens"), "--max-request-mb", "1",
                 "--cache-size", "8",
                 log=d / "server.log")
    yield srv
    srv.stop()


def client(server: Server, tmp_path: Path, key_cache: Path, model: str = "wine",
           who: str = "alice", key_dir: Path | None = None) -> Client:
    return Client(server.url, model, key_dir=key_dir or tmp_path / f"keys-{who}",
                  token=TOKENS[who], insecure_key_cache=key_cache)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_round_trip_equals_predict_execute(server, deployed, tmp_path, key_cache):
    clf, reg, X, Xd = deployed["clf"], deployed["reg"], deployed["X"], deployed["Xd"]
    with client(server, tmp_path, key_cache) as c:
        labels = c.predict(X[:6])
        np.testing.assert_array_equal(labels, clf.predict(X[:6], fhe="execute"))
        assert labels.dtype.kind == "U" and set(labels) <= set(clf.classes_)
        np.testing.assert_allclose(c.predict_proba(X[:3]), clf.predict_proba(X[:3]))
        assert c.uploaded
    with client(server, tmp_path, key_cache, model="diabetes") as c:
        y = c.predict(Xd[:5])
        assert y.shape == (5,)  # target units, 1-d like the regressor's predict
        np.testing.assert_allclose(y, reg.predict(Xd[:5], fhe="execute"))
        with pytest.raises(AttributeError, match="classifiers"):
            c.predict_proba(Xd[:1])


def test_model_info_health_and_metrics(server, deployed):
    info = httpx.get(f"{server.url}/v1/models/wine").json()
    fc = deployed["clf"].fhe_circuit_
    assert info["input"]["n_features"] == 3 and info["input"]["batch_size"] == 4
    assert info["programmable_bootstrap_count"] == fc.report["programmable_bootstrap_count"]
    assert info["versions"]["concrete-python"]
    assert len(info["circuit_id"]) == 64
    # the export's own id: models of one architecture share the circuit id
    assert len(info["model_id"]) == 64 and info["model_id"] != info["circuit_id"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json()["workers"] == 2
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("latentopt_requests_total", "latentopt_errors_total",
                 "latentopt_request_seconds_bucket", "latentopt_pbs_per_second",
                 "latentopt_queue_length", "latentopt_key_store_bytes",
                 "latentopt_key_store_keys"):
        assert name in text, name
    r = httpx.get(f"{server.url}/v1/models/nope")
    assert r.status_code == 404 and "wine" in r.json()["message"]


def test_keys_are_uploaded_once_and_reused_across_sessions(server, deployed, tmp_path,
                                                           key_cache):
    X = deployed["X"]
    with client(server, tmp_path, key_cache) as c:
        first = c.predict(X[:2])
        key_id = c.key_id
        assert c.uploaded
    uploads = metric(server.url, "latentopt_key_uploads_total")
    with client(server, tmp_path, key_cache) as again:  # a new session, same key_dir
        np.testing.assert_array_equal(again.predict(X[:2]), first)
        assert again.key_id == key_id and not again.uploaded
    assert metric(server.url, "latentopt_key_uploads_total") == uploads
    saved = json.loads((tmp_path / "keys-alice" / f"wine-{c.fhe.circuit_id[:32]}.json").read_text())
    assert saved["key_id"] == key_id and len(key_id) >= 43  # 256 random bits


def test_other_clients_keys_and_missing_tokens_are_refused(server, deployed, tmp_path,
                                                           key_cache):
    X = deployed["X"]
    alice = client(server, tmp_path, key_cache)
    alice.predict(X[:1])
    bob = client(server, tmp_path, key_cache, who="bob")
    bob.register()
    ct = alice.fhe.encrypt(X[:1])
    url = f"{server.url}/v1/models/wine/keys/{alice.key_id}"
    auth = {"Authorization": f"Bearer {TOKENS['bob']}"}
    for method, path, body in [("POST", "/predict", ct), ("GET", "", None),
                               ("DELETE", "", None)]:
        r = httpx.request(method, url + path, content=body, headers=auth)
        assert r.status_code == 403 and "another client" in r.json()["message"], (method, r.text)
        r = httpx.request(method, url + path, content=body)  # no token
        assert r.status_code == 401 and "token" in r.json()["message"]
        r = httpx.request(method, url + path, content=body,
                          headers={"Authorization": "Bearer wrong-token-0123456789"})
        assert r.status_code == 401
    r = httpx.post(f"{server.url}/v1/models/wine/keys", content=b"x")
    assert r.status_code == 401
    # ciphertexts of another key set (bob's) sent under alice's key id: refused, not garbage
    r = httpx.post(url + "/predict", content=bob.fhe.encrypt(X[:1]),
                   headers={"Authorization": f"Bearer {TOKENS['alice']}"})
    assert r.status_code == 409 and "another key set" in r.json()["message"]
    # the client refuses results of another key set and secret keys of another model
    results = bob.run(bob.fhe.encrypt(X[:1]))
    with pytest.raises(FHEArtifactError, match="another key set"):
        alice.fhe.decrypt(results)
    reg = client(server, tmp_path, key_cache, model="diabetes", who="bob")
    reg.register()
    with pytest.raises(FHEArtifactError, match="another circuit"):
        alice.fhe.load_keys(next((tmp_path / "keys-bob").glob(f"*-{reg.fhe.circuit_id[:32]}.keys")))
    # keys of another circuit registered for this model
    body = _pack("registration", reg.fhe.circuit_id, {"key_id": reg.key_id},
                 [reg.fhe.evaluation_keys(), b""])
    r = httpx.post(f"{server.url}/v1/models/wine/keys", content=body, headers=auth)
    assert r.status_code == 409 and "another circuit" in r.json()["message"]
    # alice deletes her own keys; then they are gone
    alice.delete_keys()
    r = httpx.get(url, headers={"Authorization": f"Bearer {TOKENS['alice']}"})
    assert r.status_code == 404
    for c in (alice, bob, reg):
        c.close()


def test_malformed_oversized_truncated_and_replayed_requests(server, deployed, tmp_path,
                                                             key_cache):
    X = deployed["X"]
    with client(server, tmp_path, key_cache) as c:
        c.register()
        url = f"{server.url}/v1/models/wine/keys/{c.key_id}/predict"
        auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
        ct = c.fhe.encrypt(X[:2])
        cases = [(b"garbage", 400, "not a latentopt"), (ct[:-7], 400, "truncated"),
                 (b"\0" * (2 * 2**20), 413, "limit")]
        for body, status, text in cases:
            r = httpx.post(url, content=body, headers=auth)
            assert r.status_code == status and text in r.json()["message"], r.text
        r = httpx.post(url, content=ct, headers=auth)
        assert r.status_code == 200
        np.testing.assert_array_equal(c.transform.predict(c.fhe.decrypt(r.content)),
                                      deployed["clf"].predict(X[:2], fhe="disable"))
        r = httpx.post(url, content=ct, headers=auth)  # the same request again
        assert r.status_code == 409 and r.json()["error"] == "replayed"
        r = httpx.post(f"{server.url}/v1/models/wine/keys/not-a-key/predict", content=ct,
                       headers=auth)
        assert r.status_code == 400 and r.json()["error"] == "bad_key_id"
        for method, path in [("GET", "/nope"), ("PUT", "/v1/models/wine")]:
            r = httpx.request(method, server.url + path)
            assert r.status_code in (404, 405) and r.json()["message"]
    assert "Traceback" not in server.log()


def test_forged_headers_and_frames_are_bad_requests(server, deployed, tmp_path, key_cache):
    """Headers that disagree with the frames sent, frames of the wrong function or not
    ciphertexts at all, a warm-up of more than one sample: 400, never a 500 (a header
    declaring 1 sample over 6 got past the sample limit and its results decrypted)."""
    import struct

    from latentopt.backends.fhe_blobs import _MAGIC, _unpack

    X = deployed["X"]
    with client(server, tmp_path, key_cache) as c:
        c.register()
        cid = c.fhe.circuit_id
        url = f"{server.url}/v1/models/wine/keys/{c.key_id}/predict"
        auth = {"Authorization": f"Bearer {TOKENS['alice']}"}
        head, frames = _unpack(c.fhe.encrypt(X[:6]), "ciphertexts", cid)
        assert [x[2] for x in head["calls"]] == ["batch", "single", "single"]
        fields = {k: head[k] for k in ("n_samples", "calls", "key_id")}
        forged = [dict(fields, n_samples=1), dict(fields, n_samples=-1),
                  dict(fields, n_samples=True),
                  dict(fields, calls=[["a", "b", "batch"], *head["calls"][1:]]),
                  dict(fields, calls=[[4, 0, "batch"], *head["calls"][1:]]),
                  dict(fields, calls=[[0, 4, "single"], *head["calls"][1:]]),
                  dict(fields, calls=head["calls"][:2])]
        for f in forged:
            r = httpx.post(url, content=_pack("ciphertexts", cid, f, frames), headers=auth)
            assert r.status_code == 400 and "header" in r.json()["message"], (f, r.text)
        head5, frames5 = _unpack(c.fhe.encrypt(X[:5]), "ciphertexts", cid)
        bodies = {  # the single call's ciphertext where the batch's goes, and back
            "not an input": _pack("ciphertexts", cid, {k: head5[k] for k in fields},
                                  frames5[::-1]),
            "not a concrete value": _pack("ciphertexts", cid, {k: head5[k] for k in fields},
                                          [frames5[0], b"\0" * 64]),
            "not a latentopt": _MAGIC + struct.pack("<Q", 100_000) + b"[" * 100_000}
        for text, body in bodies.items():
            r = httpx.post(url, content=body, headers=auth)
            assert r.status_code == 400 and text in r.json()["message"], (text, r.text)
        # a registration whose warm-up holds two samples
        reg = _pack("registration", cid, {"key_id": c.key_id},
                    [c.fhe.evaluation_keys(), c.fhe.encrypt(X[:2])])
        r = httpx.post(f"{server.url}/v1/models/wine/keys", content=reg, headers=auth)
        assert r.status_code == 400 and "one sample" in r.json()["message"], r.text
        # infinite features: refused like the estimator's predict, not clipped to a label
        bad = X[:2].copy()
        bad[0, 0] = np.inf
        with pytest.raises(ValueError, match="NaN or infinity"):
            c.predict(bad)
    # a corrupt cached client artefact (an interrupted write) is fetched again
    key_dir = tmp_path / "keys-alice"
    cached = next(key_dir.glob("wine-*-client.zip"))
    cached.write_bytes(cached.read_bytes()[:100])
    with client(server, tmp_path, key_cache) as c:
        np.testing.assert_array_equal(c.predict(X[:2]),
                                      deployed["clf"].predict(X[:2], fhe="disable"))
    assert "Traceback" not in server.log()


def test_concurrent_clients_load(server, deployed, tmp_path, key_cache):
    """8 clients x 20 requests at once: every answer arrives and is right."""
    X, clf = deployed["X"], deployed["clf"]
    n_clients, n_requests = 8, 20
    expected = clf.predict(X, fhe="disable")
    clients = [client(server, tmp_path, key_cache, who="alice" if i % 2 else "bob",
                      key_dir=tmp_path / f"load{i}") for i in range(n_clients)]
    for c in clients:
        c.register()
    loads = metric(server.url, "latentopt_key_loads")
    latencies: list[float] = []
    errors: list[BaseException] = []
    correct = [0] * n_clients

    def work(i: int) -> None:
        try:
            for j in range(n_requests):
                k = (i * n_requests + j) % len(X)
                t0 = time.perf_counter()
                label = clients[i].predict(X[k : k + 1])
                latencies.append(time.perf_counter() - t0)
                correct[i] += int(label[0] == expected[k])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - t0
    assert not errors, errors[:3]
    assert len(latencies) == n_clients * n_requests and sum(correct) == len(latencies)
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"\nload: {n_clients} clients x {n_requests} requests in {wall:.1f} s "
          f"({len(latencies) / wall:.1f} req/s), p50 {p50 * 1e3:.0f} ms, "
          f"p99 {p99 * 1e3:.0f} ms")
    # keys were deserialised at registration: no request paid for it
    assert metric(server.url, "latentopt_key_loads") == loads
    for c in clients:
        c.close()


def test_killed_worker_gives_a_clear_error_and_a_retry_succeeds(server, deployed, tmp_path,
                                                                key_cache):
    X, clf = deployed["X"], deployed["clf"]
    c = client(server, tmp_path, key_cache)
    c.register()
    outcome: dict[str, Any] = {}

    def request() -> None:
        try:
            outcome["result"] = c.predict(X[:48])
        except ServerError as exc:
            outcome["error"] = exc

    pids = server.wait_ready()["worker_pids"]
    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 30
    while metric(server.url, "latentopt_queue_length") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    err = outcome.get("error")
    assert isinstance(err, ServerError), outcome
    assert err.status == 503 and err.code == "worker_crashed" and "retry" in err.message
    np.testing.assert_array_equal(c.predict(X[:5]), clf.predict(X[:5], fhe="disable"))
    deadline = time.monotonic() + 60  # the idle worker is replaced too
    while not set(server.wait_ready()["worker_pids"]).isdisjoint(pids):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert len(server.wait_ready()["worker_pids"]) == 2
    c.close()


def test_a_client_artefact_of_another_export_is_refused(server, deployed, tmp_path, key_cache):
    """A retrained model of the same architecture keeps its circuit id: its client
    artefact decrypts the server's results and labels them with its own dequantizer and
    classes (silently wrong); the model id tells the exports apart."""
    import zipfile

    src = deployed["root"] / "wine" / "client.zip"
    other = tmp_path / "other-client.zip"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(other, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "manifest.json":
                manifest = json.loads(data)
                manifest["model_id"] = "f" * 64  # a re-signed artefact of another export
                manifest["manifest_sha256"] = manifest_digest(manifest)
                data = json.dumps(manifest).encode()
            zout.writestr(name, data)
    with pytest.raises(FHEArtifactError, match="another export"):
        Client(server.url, "wine", artifact=other, key_dir=tmp_path / "k",
               token=TOKENS["alice"], insecure_key_cache=key_cache)


def test_an_export_that_differs_only_in_its_labels_is_another_model(deployed, tmp_path):
    """The model id covers the estimator's labels: a client artefact cached for a model
    with other class names would otherwise be reused and label every answer wrong."""
    import copy
    import zipfile

    from latentopt.deploy.artifacts import read_estimator_info

    clf = deployed["clf"]
    relabelled = copy.copy(clf)
    relabelled.classes_ = np.array(["nebbiolo", "freisa", "dolcetto"])
    relabelled.save_deployment(tmp_path / "relabelled")
    ids = []
    for root in (deployed["root"] / "wine", tmp_path / "relabelled"):
        with zipfile.ZipFile(root / "client.zip") as zf:
            client_id = json.loads(zf.read("manifest.json"))["model_id"]
        with zipfile.ZipFile(root / "server.zip") as zf:
            assert json.loads(zf.read("manifest.json"))["model_id"] == client_id
        ids.append(client_id)
    assert ids[0] != ids[1]
    info = read_estimator_info(tmp_path / "relabelled" / "client.zip")
    assert list(info.classes) == ["nebbiolo", "freisa", "dolcetto"]


def test_key_files_of_an_earlier_version_are_named_not_used(server, deployed, tmp_path,
                                                           key_cache):
    """Keys were named by circuit only before they were kept per served model: such a
    file is left alone, with a warning that says so."""
    key_dir = tmp_path / "upgraded"
    with client(server, tmp_path, key_cache, key_dir=key_dir) as c:
        old = key_dir / f"{c.fhe.circuit_id[:32]}.keys"
        old.write_bytes(b"an earlier version's secret key")
        with pytest.warns(UserWarning, match="a key set of an earlier latentopt"):
            c.register()
        assert old.read_bytes() == b"an earlier version's secret key"
        assert (key_dir / f"wine-{c.fhe.circuit_id[:32]}.keys").exists()

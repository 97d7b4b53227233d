"""Long-lived clients across a redeploy, concurrent first use of a key directory, and a
server whose Redis key store goes down and comes back."""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from latentopt.deploy import Client, ModelChangedError, ServerError

pytestmark = pytest.mark.fhe


def test_a_client_of_a_redeployed_model_is_refused_not_mislabelled(start_server, deployed,
                                                                   tmp_path, key_cache):
    """The server restarted with a retrained model of the same architecture (same circuit
    id, new model id): a long-lived client decoded with the old export's classes."""
    X, clf = deployed["X"], deployed["clf"]
    relabelled = copy.copy(clf)
    relabelled.classes_ = np.array(["nebbiolo", "freisa", "dolcetto"])
    relabelled.save_deployment(tmp_path / "relabelled")
    store = tmp_path / "store"
    first = start_server([f"wine={deployed['root'] / 'wine'}"], store)
    old = Client(first.url, "wine", key_dir=tmp_path / "keys", insecure_key_cache=key_cache)
    np.testing.assert_array_equal(old.predict(X[:2]), clf.predict(X[:2], fhe="disable"))
    first.stop()
    again = start_server([f"wine={tmp_path / 'relabelled'}"], store, port=first.port)
    with pytest.raises(ModelChangedError, match="create a new Client") as exc:
        old.predict(X[:2])
    assert exc.value.status == 409 and exc.value.code == "model_changed"
    new = Client(again.url, "wine", key_dir=tmp_path / "keys", insecure_key_cache=key_cache)
    assert new.model_id != old.model_id and new.fhe.circuit_id == old.fhe.circuit_id
    labels = new.predict(X[:2])
    assert set(labels) <= {"nebbiolo", "freisa", "dolcetto"}
    # a request without the header (an earlier client) is still served
    ct = new.fhe.encrypt(X[:1])
    r = httpx.post(f"{again.url}/v1/models/wine/keys/{new.key_id}/predict", content=ct)
    assert r.status_code == 200
    old.close()
    new.close()


def test_concurrent_first_use_of_one_key_dir(start_server, deployed, tmp_path, key_cache):
    """Two clients on one fresh key_dir (and one client shared by threads) wrote one
    fixed temporary file: FileNotFoundError, and a .json of one key set beside the .keys
    of the other that broke every later session."""
    X, clf = deployed["X"], deployed["clf"]
    server = start_server([str(deployed["root"] / "wine")], tmp_path / "store")
    expected = clf.predict(X[:2], fhe="disable")
    for round_ in range(2):
        key_dir = tmp_path / f"keys{round_}"
        shared = Client(server.url, "wine", key_dir=key_dir, insecure_key_cache=key_cache)
        clients = [shared, shared, Client(server.url, "wine", key_dir=key_dir,
                                          insecure_key_cache=key_cache)]
        outcome: list[Any] = []
        barrier = threading.Barrier(len(clients))

        def work(c: Client, barrier: threading.Barrier = barrier,
                 outcome: list[Any] = outcome) -> None:
            barrier.wait()
            try:
                outcome.append((c.predict(X[:2]), c.key_id))
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)

        threads = [threading.Thread(target=work, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert all(not isinstance(o, Exception) for o in outcome), outcome
        assert len({key_id for _, key_id in outcome}) == 1  # one key set, generated once
        for labels, _ in outcome:
            np.testing.assert_array_equal(labels, expected)
        files = sorted(p.name for p in key_dir.iterdir() if not p.name.endswith(".zip"))
        assert [f for f in files if not f.startswith(".")] == [
            f"wine-{shared.fhe.circuit_id[:32]}.json", f"wine-{shared.fhe.circuit_id[:32]}.keys"]
        assert not [f for f in files if f.endswith(".tmp")]
        meta = json.loads((key_dir / f"wine-{shared.fhe.circuit_id[:32]}.json").read_text())
        assert meta["key_id"] == shared.key_id
        later = Client(server.url, "wine", key_dir=key_dir, insecure_key_cache=key_cache)
        np.testing.assert_array_equal(later.predict(X[:2]), expected)
        assert later.key_id == shared.key_id
        for c in (*clients, later):
            c.close()


def test_a_redis_outage_is_reported_and_survived(start_server, deployed, tmp_path, key_cache):
    """While Redis was down /metrics answered 500, /readyz said ready and predictions 500
    internal; after it came back the replica no longer listened for announcements."""
    import redis
    from deploy_support import Redis

    X, clf = deployed["X"], deployed["clf"]
    store = Redis(tmp_path / "redis")
    try:
        server = start_server([str(deployed["root"] / "wine")], store.url)
        c = Client(server.url, "wine", key_dir=tmp_path / "keys", insecure_key_cache=key_cache)
        np.testing.assert_array_equal(c.predict(X[:2]), clf.predict(X[:2], fhe="disable"))
        store.stop()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30)
        assert metrics.status_code == 200 and "latentopt_key_loads" in metrics.text
        ready = httpx.get(f"{server.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["error"] == "store_unavailable"
        with pytest.raises(ServerError) as exc:
            c.predict(X[:2])
        assert exc.value.status == 503 and exc.value.code == "store_unavailable"
        store.start()  # empty: the keys are gone with the old process, uploaded again
        server.wait_ready(60)
        probe = redis.Redis(port=store.port)
        deadline = time.monotonic() + 30
        while probe.pubsub_numsub("latentopt:registered")[0][1] < 1:
            assert time.monotonic() < deadline, "the announcement listener did not return"
            time.sleep(0.2)
        probe.close()
        np.testing.assert_array_equal(c.predict(X[:2]), clf.predict(X[:2], fhe="disable"))
        log = server.log()
        assert "lost the key store" in log and "reconnected" in log
        c.close()
    finally:
        store.stop()

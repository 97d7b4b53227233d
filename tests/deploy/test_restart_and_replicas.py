"""Server restarts (directory store), graceful shutdown, and replicas sharing Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from latentopt.deploy import Client

pytestmark = pytest.mark.fhe


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_restart_keeps_keys_and_shutdown_finishes_in_flight(start_server, deployed, tmp_path,
                                                            key_cache):
    X, clf = deployed["X"], deployed["clf"]
    wine = str(deployed["root"] / "wine")
    store = tmp_path / "store"
    server = start_server([wine], store)
    assert "NO TOKEN SET" in server.log()  # an open server says so at start-up
    c = Client(server.url, "wine", key_dir=tmp_path / "keys", insecure_key_cache=key_cache)
    expected = clf.predict(X[:24], fhe="disable")
    np.testing.assert_array_equal(c.predict(X[:2]), expected[:2])
    assert c.uploaded
    # SIGTERM while a request runs: it finishes, then the server exits cleanly
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(y=c.predict(X[:24])))
    thread.start()
    time.sleep(0.3)
    assert server.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in server.log()
    thread.join(60)
    np.testing.assert_array_equal(outcome["y"], expected)
    c.close()
    # a new server on the same store: the keys are there, nothing is uploaded again
    again = start_server([wine], store, port=server.port)
    c2 = Client(again.url, "wine", key_dir=tmp_path / "keys", insecure_key_cache=key_cache)
    np.testing.assert_array_equal(c2.predict(X[:3]), expected[:3])
    assert not c2.uploaded and c2.key_id == c.key_id
    c2.close()


def test_two_replicas_share_keys_through_redis(start_server, deployed, tmp_path, key_cache,
                                               redis_url):
    X, clf = deployed["X"], deployed["clf"]
    wine = str(deployed["root"] / "wine")
    a = start_server([wine], redis_url, "--token", "shared-token-0123456789")
    b = start_server([wine], redis_url, "--token", "shared-token-0123456789")
    kw = dict(key_dir=tmp_path / "keys", insecure_key_cache=key_cache,
              token="shared-token-0123456789")
    ca = Client(a.url, "wine", **kw)
    np.testing.assert_array_equal(ca.predict(X[:3]), clf.predict(X[:3], fhe="disable"))
    assert ca.uploaded
    # the other replica was told through Redis and has deserialised the keys already
    deadline = time.monotonic() + 60
    while _metric(b.url, "latentopt_key_loads") < 1:
        assert time.monotonic() < deadline, "replica b did not warm the announced keys"
        time.sleep(0.1)
    cb = Client(b.url, "wine", **kw)  # the other replica finds the keys in Redis
    np.testing.assert_array_equal(cb.predict(X[3:6]), clf.predict(X[3:6], fhe="disable"))
    assert not cb.uploaded
    assert _metric(b.url, "latentopt_key_loads") == 1  # the request paid no deserialisation
    # a request replayed to the other replica is refused there too
    ct = ca.fhe.encrypt(X[:1])
    path = f"/v1/models/wine/keys/{ca.key_id}/predict"
    auth = {"Authorization": "Bearer shared-token-0123456789"}
    assert httpx.post(a.url + path, content=ct, headers=auth).status_code == 200
    r = httpx.post(b.url + path, content=ct, headers=auth)
    assert r.status_code == 409 and r.json()["error"] == "replayed"
    # deleted through one replica: gone for both; the client uploads again on its own
    ca.delete_keys()
    assert httpx.get(f"{b.url}/v1/models/wine/keys/{ca.key_id}", headers=auth).status_code == 404
    cb2 = Client(b.url, "wine", **kw)
    np.testing.assert_array_equal(cb2.predict(X[:2]), clf.predict(X[:2], fhe="disable"))
    assert cb2.uploaded
    for c in (ca, cb, cb2):
        c.close()

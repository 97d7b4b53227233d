"""Key stores (directory and a real Redis), the replay guard, the CLI entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from latentopt.backends.fhe_deploy import new_key_id
from latentopt.deploy.artifacts import OutputTransform, _affine
from latentopt.deploy.store import (
    DirectoryKeyStore,
    KeyConflictError,
    KeyRecord,
    RedisKeyStore,
    ReplayGuard,
    open_store,
    valid_key_id,
)


def record(key_id: str, size: int = 100, owner: str = "alice") -> KeyRecord:
    return KeyRecord(key_id=key_id, circuit_id="c" * 64, model="m", owner=owner, size=size,
                     fingerprint=f"f-{key_id}", created=time.time())


@pytest.fixture(params=["directory", "redis"])
def make_store(request, tmp_path):
    def make(**limits):
        if request.param == "directory":
            return DirectoryKeyStore(tmp_path / "store", **limits)
        url = request.getfixturevalue("redis_url")
        store = RedisKeyStore(url, prefix=f"t{time.monotonic_ns()}", **limits)
        return store
    return make


def test_put_is_write_once_and_idempotent(make_store):
    store = make_store()
    kid = new_key_id()
    assert valid_key_id(kid) and not valid_key_id("../../etc") and not valid_key_id("short")
    assert store.put(record(kid), b"K" * 90, b"W" * 10)
    assert store.load(kid) == (b"K" * 90, b"W" * 10)
    assert store.meta(kid).owner == "alice"
    assert store.put(record(kid), b"K" * 90, b"W" * 10) is False  # same keys again: fine
    other = record(kid)
    other.fingerprint = "different keys"
    with pytest.raises(KeyConflictError):
        store.put(other, b"X" * 90, b"")
    with pytest.raises(KeyConflictError):
        store.put(record(kid, owner="mallory"), b"K" * 90, b"W" * 10)
    assert store.load(kid) == (b"K" * 90, b"W" * 10)  # never overwritten
    with pytest.raises(ValueError, match="malformed"):
        store.load("../x")
    assert store.delete(kid) and store.meta(kid) is None and not store.delete(kid)


def test_limits_evict_least_recently_used(make_store):
    store = make_store(max_keys=3, max_bytes=350)
    ids = [new_key_id() for _ in range(4)]
    for kid in ids[:3]:
        store.put(record(kid), b"k" * 90, b"w" * 10)
        time.sleep(0.02)
    store.meta(ids[0])  # used: now the most recent
    time.sleep(0.02)
    store.put(record(ids[3]), b"k" * 90, b"w" * 10)  # 4 > max_keys: evicts ids[1]
    assert store.meta(ids[1], touch=False) is None
    assert all(store.meta(k, touch=False) is not None for k in (ids[0], ids[2], ids[3]))
    assert store.usage() == (3, 300)
    big = new_key_id()
    store.put(record(big, size=200), b"k" * 190, b"w" * 10)  # bytes over 350: evict 2
    assert store.meta(big, touch=False) is not None and store.usage()[1] <= 350
    assert store.recent(1) == [big]


def test_replay_guard_in_memory_and_redis(redis_url):
    import redis

    for guard in (ReplayGuard(ttl=60), ReplayGuard(redis.Redis.from_url(redis_url), ttl=60,
                                                   prefix=f"g{time.monotonic_ns()}")):
        assert guard.claim("a") and not guard.claim("a") and guard.claim("b")
        guard.release("a")
        assert guard.claim("a")
    short = ReplayGuard(ttl=0.05)
    assert short.claim("x")
    time.sleep(0.1)
    assert short.claim("x")  # expired


def test_open_store_picks_the_backend(tmp_path, redis_url):
    assert isinstance(open_store(tmp_path / "d"), DirectoryKeyStore)
    store = open_store(redis_url)
    assert isinstance(store, RedisKeyStore) and "127.0.0.1" in store.describe()
    store.close()


def test_output_transform():
    raw = np.array([[0.5, -1.0], [2.0, 3.0]])
    clf = OutputTransform("classifier", classes=np.array(["a", "b"]))
    assert clf.predict(raw).tolist() == ["a", "b"]
    np.testing.assert_allclose(clf.predict_proba(raw).sum(axis=1), 1.0)
    a, b = _affine(raw, raw * [2.0, 3.0] + [1.0, -1.0])
    np.testing.assert_allclose(a, [2, 3])
    np.testing.assert_allclose(b, [1, -1])
    with pytest.raises(ValueError, match="not an affine map"):
        _affine(np.array([[0.0], [1.0], [2.0]]), np.array([[0.0], [1.0], [5.0]]))
    reg = OutputTransform("regressor", scale=a, offset=b, output_shape=(2,))
    np.testing.assert_allclose(reg.predict(raw), raw * [2.0, 3.0] + [1.0, -1.0])


def test_command_line_entry_points():
    from latentopt.__main__ import entry

    with pytest.raises(SystemExit) as info:
        entry(["serve", "--help"])
    assert info.value.code == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-m", "latentopt", "serve", "--help"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert "--key-store" in out and "--token-file" in out
    bad = subprocess.run([sys.executable, "-m", "latentopt", "serve", "/nonexistent"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "no server.zip" in bad.stderr


def test_queued_requests_of_one_client_are_batched():
    import asyncio

    from latentopt.deploy.batching import ClientQueues

    calls: list[tuple[str, int]] = []

    async def run(model, key_id, blobs):
        calls.append((key_id, len(blobs)))
        await asyncio.sleep(0.05)
        return [(200, b.upper()) for b in blobs]

    async def main():
        queues = ClientQueues(run, max_batch=3)
        first = asyncio.ensure_future(queues.submit("m", "alice", b"a0"))
        await asyncio.sleep(0.01)  # a0 runs; the next five queue behind it
        rest = [queues.submit("m", "alice", f"a{i}".encode()) for i in range(1, 6)]
        results = await asyncio.gather(first, *rest, queues.submit("m", "bob", b"b0"))
        assert queues.pending == 0
        return results

    results = asyncio.run(main())
    assert [r[1] for r in results] == [b"A0", b"A1", b"A2", b"A3", b"A4", b"A5", b"B0"]
    # alice: the first request alone, then the queued ones 3 at a time; bob concurrently
    assert [n for k, n in calls if k == "alice"] == [1, 3, 2]
    assert [n for k, n in calls if k == "bob"] == [1]


def test_a_record_with_unreadable_metadata_is_replaced(tmp_path):
    """A damaged meta.json answered 404 (unknown key) and refused the owner's re-upload
    as a conflict forever: the record is replaced instead."""
    store = DirectoryKeyStore(tmp_path / "store")
    kid = new_key_id()
    assert store.put(record(kid), b"K" * 90, b"W" * 10)
    (tmp_path / "store" / kid / "meta.json").write_text('{"key_id": "trunc')
    assert store.meta(kid) is None
    again = record(kid)
    again.fingerprint = "the owner's keys, uploaded again"
    assert store.put(again, b"N" * 90, b"w" * 10) is True
    assert store.load(kid) == (b"N" * 90, b"w" * 10)
    assert store.meta(kid).fingerprint == again.fingerprint
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")]
    with pytest.raises(KeyConflictError):  # a readable record is still never overwritten
        store.put(record(kid), b"X" * 90, b"")


def test_the_announcement_listener_survives_a_redis_restart(tmp_path):
    """redis' run_in_thread ended on the first lost connection: after a Redis restart a
    replica no longer warmed the keys registered through the others."""
    from deploy_support import Redis

    server = Redis(tmp_path)
    try:
        store = RedisKeyStore(server.url, prefix="t")
        heard: list[tuple[str, str]] = []
        listener = store.listen(lambda model, key_id: heard.append((model, key_id)))
        try:
            def announced(key_id: str) -> bool:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        store.announce("m", key_id)
                    except Exception:  # noqa: BLE001 - Redis coming back
                        pass
                    time.sleep(0.2)
                    if ("m", key_id) in heard:
                        return True
                return False

            first, second = new_key_id(), new_key_id()
            assert announced(first)
            server.stop()
            time.sleep(1.0)
            server.start()
            assert announced(second), "the listener did not subscribe again"
        finally:
            listener.stop()
            store.close()
    finally:
        server.stop()


@pytest.mark.parametrize("text, message", [
    ("alice old-token-0123456789abcdef\nalice new-token-0123456789abcdef\n",
     ":2: client 'alice' is named twice"),
    ("alice same-token-0123456789abcdef\n# bob\n\nbob same-token-0123456789abcdef\n",
     ":4: this token is given to two clients"),
])
def test_a_token_file_with_duplicates_is_refused(tmp_path, text, message):
    """Only the last line of a name counted (a rotated-out token answered 401), and one
    token for two clients named one of them."""
    from latentopt.deploy.config import ServeConfig, read_token_file

    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_token_file(path)
    with pytest.raises(ValueError, match=message):
        ServeConfig(models={}, token_file=path).tokens()
    path.write_text("alice alice-token-0123456789abcdef\n")
    with pytest.raises(ValueError, match="shared --token"):
        ServeConfig(models={}, token="alice-token-0123456789abcdef",
                    token_file=path).tokens()

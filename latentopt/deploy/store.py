"""Evaluation-key stores: a directory (default) or Redis, with size limits and eviction.

A record is one client's key set for one circuit: the evaluation-key blob (tagged with
its key id and circuit id, see :mod:`latentopt.backends.fhe_deploy`), a small warm-up
ciphertext the server runs once after deserialising the keys (concrete decompresses
seeded keys on their first use), and metadata (circuit id, owner, size, times).

Records are written once: registering an existing key id with other keys is refused
(:class:`KeyConflictError`), so nobody can overwrite a client's keys; only the owner
deletes them.  Both stores keep a least-recently-used order and evict the oldest records
beyond ``max_keys`` records or ``max_bytes`` bytes.

Replicas of the server share a :class:`RedisKeyStore`; a :class:`DirectoryKeyStore`
survives restarts of one server.  :class:`ReplayGuard` remembers the digests of served
ciphertexts (in memory, or in Redis for replicas) to refuse replayed requests.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["DirectoryKeyStore", "KeyConflictError", "KeyRecord", "KeyStore",
           "RedisKeyStore", "ReplayGuard", "open_store", "store_errors", "valid_key_id"]

log = logging.getLogger("latentopt.serve")

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def valid_key_id(key_id: str) -> bool:
    """Whether ``key_id`` looks like a key id (``fhe_deploy.new_key_id``)."""
    return bool(_KEY_ID.match(key_id))


class KeyConflictError(ValueError):
    """A record with this key id exists already (with other keys)."""


def store_errors() -> tuple[type[Exception], ...]:
    """The errors of an unreachable store (Redis down): answered 503, not 500."""
    try:
        import redis
    except ImportError:
        return ()
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@dataclass
class KeyRecord:
    """Metadata of one stored key set."""

    key_id: str
    circuit_id: str
    model: str
    owner: str
    size: int
    fingerprint: str
    created: float


class KeyStore(ABC):
    """Interface of the key stores (see the module docstring)."""

    max_keys: int | None
    max_bytes: int | None

    @abstractmethod
    def put(self, record: KeyRecord, keys: bytes, warmup: bytes) -> bool:
        """Store a record; ``False`` when the same keys are stored already (idempotent),
        :class:`KeyConflictError` when other keys hold this id."""

    @abstractmethod
    def meta(self, key_id: str, touch: bool = True) -> KeyRecord | None:
        """The record's metadata (marking it used), or ``None``."""

    @abstractmethod
    def load(self, key_id: str) -> tuple[bytes, bytes] | None:
        """``(keys, warmup)`` of a record, or ``None``."""

    @abstractmethod
    def delete(self, key_id: str) -> bool:
        """Remove a record; ``False`` when there was none."""

    @abstractmethod
    def recent(self, n: int) -> list[str]:
        """The ``n`` most recently used key ids, newest first."""

    @abstractmethod
    def usage(self) -> tuple[int, int]:
        """``(records, bytes)`` stored."""

    @abstractmethod
    def describe(self) -> str:
        """One line naming the store, for logs and model info."""

    def close(self) -> None:  # noqa: B027 - optional hook, not every store holds connections
        """Release connections."""

    def ping(self) -> None:  # noqa: B027 - optional hook, a local store is always there
        """Raise when the store cannot be reached (``/readyz``)."""

    def _over(self, count: int, size: int) -> bool:
        return ((self.max_keys is not None and count > self.max_keys)
                or (self.max_bytes is not None and size > self.max_bytes))


class DirectoryKeyStore(KeyStore):
    """One sub-directory per key id: ``keys.bin``, ``warmup.bin``, ``meta.json``.

    The modification time of ``meta.json`` is the last use (LRU order).
    """

    def __init__(self, root: str | Path, max_keys: int | None = None,
                 max_bytes: int | None = None) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():  # mkdir said "File exists"
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(self.root))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_keys, self.max_bytes = max_keys, max_bytes
        self._lock = threading.Lock()

    def _dir(self, key_id: str) -> Path:
        if not valid_key_id(key_id):
            raise ValueError("malformed key id")
        return self.root / key_id

    def put(self, record: KeyRecord, keys: bytes, warmup: bytes) -> bool:
        d = self._dir(record.key_id)
        tmp = self.root / f".tmp-{record.key_id}-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "keys.bin").write_bytes(keys)
        (tmp / "warmup.bin").write_bytes(warmup)
        (tmp / "meta.json").write_text(json.dumps(asdict(record)))
        try:
            for attempt in range(2):
                try:
                    os.rename(tmp, d)  # atomic; fails when the id exists
                    break
                except OSError:
                    old = self.meta(record.key_id, touch=False)
                    if old is None and attempt == 0 and self._set_aside(record.key_id):
                        continue  # a record with unreadable metadata was removed
                    if old is not None and old.fingerprint == record.fingerprint \
                            and old.owner == record.owner:
                        return False
                    raise KeyConflictError(
                        f"key id {record.key_id[:8]}... is taken") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._evict()
        return True

    def _set_aside(self, key_id: str) -> bool:
        """Remove a record whose metadata cannot be read (a damaged or truncated copy):
        it answered 404 and refused every new upload as a conflict, locking its owner
        out.  ``False`` when there is nothing to remove."""
        d = self._dir(key_id)
        if not d.is_dir():
            return False
        log.warning("key store: record %s... has unreadable metadata; replaced by the "
                    "new upload", key_id[:8])
        return self.delete(key_id)

    def meta(self, key_id: str, touch: bool = True) -> KeyRecord | None:
        path = self._dir(key_id) / "meta.json"
        try:
            record = KeyRecord(**json.loads(path.read_text()))
            if touch:
                os.utime(path)
        except (OSError, ValueError, TypeError):
            return None
        return record

    def load(self, key_id: str) -> tuple[bytes, bytes] | None:
        d = self._dir(key_id)
        try:
            return (d / "keys.bin").read_bytes(), (d / "warmup.bin").read_bytes()
        except OSError:
            return None

    def delete(self, key_id: str) -> bool:
        d = self._dir(key_id)
        if not d.exists():
            return False
        trash = self.root / f".del-{key_id}-{os.getpid()}-{threading.get_ident()}"
        try:
            os.rename(d, trash)
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _entries(self) -> list[tuple[float, str, int]]:
        out = []
        for d in self.root.iterdir():
            if d.name.startswith("."):
                continue
            try:
                used = (d / "meta.json").stat().st_mtime
                size = (d / "keys.bin").stat().st_size + (d / "warmup.bin").stat().st_size
            except OSError:
                continue
            out.append((used, d.name, size))
        return sorted(out)

    def _evict(self) -> None:
        if self.max_keys is None and self.max_bytes is None:
            return
        with self._lock:
            entries = self._entries()
            count, size = len(entries), sum(e[2] for e in entries)
            for _, key_id, n in entries[:-1]:  # never the newest
                if not self._over(count, size):
                    break
                if self.delete(key_id):
                    count, size = count - 1, size - n

    def recent(self, n: int) -> list[str]:
        return [key_id for _, key_id, _ in reversed(self._entries())][:n]

    def usage(self) -> tuple[int, int]:
        entries = self._entries()
        return len(entries), sum(e[2] for e in entries)

    def describe(self) -> str:
        return f"directory {self.root}"

    def ping(self) -> None:
        """Raise when the directory is gone or this process cannot write keys into it
        (a read-only store passed the start-up check and the first key upload failed
        with a 500 and a 40-line traceback, /readyz still "ready")."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"key store {self.root} is gone")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable by this process",
                                  str(self.root))


class RedisKeyStore(KeyStore):
    """Records in Redis hashes ``{prefix}:k:{id}``, LRU order in the sorted set
    ``{prefix}:lru`` and the byte total in ``{prefix}:bytes``."""

    def __init__(self, url: str, max_keys: int | None = None, max_bytes: int | None = None,
                 prefix: str = "latentopt") -> None:
        import redis

        self.url = url
        self.client: Any = redis.Redis.from_url(url)
        self.client.ping()
        self.max_keys, self.max_bytes = max_keys, max_bytes
        self.prefix = prefix

    def _k(self, key_id: str) -> str:
        if not valid_key_id(key_id):
            raise ValueError("malformed key id")
        return f"{self.prefix}:k:{key_id}"

    def put(self, record: KeyRecord, keys: bytes, warmup: bytes) -> bool:
        name = self._k(record.key_id)
        if not self.client.hsetnx(name, "meta", json.dumps(asdict(record))):
            old = self.meta(record.key_id, touch=False)
            if old is not None and old.fingerprint == record.fingerprint \
                    and old.owner == record.owner:
                return False
            raise KeyConflictError(f"key id {record.key_id[:8]}... is taken")
        pipe = self.client.pipeline()
        pipe.hset(name, mapping={"keys": keys, "warmup": warmup})
        pipe.zadd(f"{self.prefix}:lru", {record.key_id: time.time()})
        pipe.incrby(f"{self.prefix}:bytes", record.size)
        pipe.execute()
        self._evict(record.key_id)
        return True

    def meta(self, key_id: str, touch: bool = True) -> KeyRecord | None:
        raw = self.client.hget(self._k(key_id), "meta")
        if raw is None:
            return None
        if touch:
            self.client.zadd(f"{self.prefix}:lru", {key_id: time.time()}, xx=True)
        return KeyRecord(**json.loads(raw))

    def load(self, key_id: str) -> tuple[bytes, bytes] | None:
        keys, warmup = self.client.hmget(self._k(key_id), ["keys", "warmup"])
        if keys is None or warmup is None:
            return None
        return bytes(keys), bytes(warmup)

    def delete(self, key_id: str) -> bool:
        record = self.meta(key_id, touch=False)
        if not self.client.delete(self._k(key_id)):
            return False
        pipe = self.client.pipeline()
        pipe.zrem(f"{self.prefix}:lru", key_id)
        if record is not None:
            pipe.decrby(f"{self.prefix}:bytes", record.size)
        pipe.execute()
        return True

    def _evict(self, keep: str) -> None:
        lru = f"{self.prefix}:lru"
        while True:
            count, size = self.usage()
            if not self._over(count, size) or count <= 1:
                return
            oldest = self.client.zrange(lru, 0, 0)
            if not oldest or oldest[0].decode() == keep:
                return
            self.delete(oldest[0].decode())

    def recent(self, n: int) -> list[str]:
        return [k.decode() for k in self.client.zrevrange(f"{self.prefix}:lru", 0, n - 1)]

    def usage(self) -> tuple[int, int]:
        count = int(self.client.zcard(f"{self.prefix}:lru"))
        size = int(self.client.get(f"{self.prefix}:bytes") or 0)
        return count, size

    def announce(self, model: str, key_id: str) -> None:
        """Tell the other replicas that a key set was registered (they warm it)."""
        self.client.publish(f"{self.prefix}:registered", json.dumps([model, key_id]))

    def listen(self, callback: Any) -> Any:
        """Call ``callback(model, key_id)`` for every announced registration (in a
        background thread that subscribes again after a lost connection); returns the
        listener (``.stop()`` ends it)."""
        from .listener import Listener

        return Listener(self.client, f"{self.prefix}:registered", callback)

    def ping(self) -> None:
        self.client.ping()

    def describe(self) -> str:
        return f"redis {self.url.split('@')[-1]}"  # no password in logs

    def close(self) -> None:  # noqa: B027 - optional hook, not every store holds connections
        self.client.close()


def open_store(location: str | Path, max_keys: int | None = None,
               max_bytes: int | None = None) -> KeyStore:
    """A :class:`RedisKeyStore` for a ``redis://`` / ``rediss://`` / ``unix://`` URL,
    else a :class:`DirectoryKeyStore`."""
    text = str(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        return RedisKeyStore(text, max_keys, max_bytes)
    return DirectoryKeyStore(text, max_keys, max_bytes)


class ReplayGuard:
    """Remembers digests of accepted ciphertexts for ``ttl`` seconds.

    In memory (one server) or in Redis (replicas: a request replayed to another replica
    is refused too).  A digest is released when its request fails, so the same
    ciphertexts can be retried.
    """

    def __init__(self, redis_client: Any = None, ttl: float = 3600.0,
                 max_entries: int = 1_000_000, prefix: str = "latentopt") -> None:
        self.redis, self.ttl, self.max_entries = redis_client, ttl, max_entries
        self.prefix = prefix
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def claim(self, digest: str) -> bool:
        """``True`` the first time a digest is seen (within ``ttl``), else ``False``."""
        if self.redis is not None:
            return bool(self.redis.set(f"{self.prefix}:seen:{digest}", b"1", nx=True,
                                        ex=max(1, int(self.ttl))))
        now = time.monotonic()
        with self._lock:
            while self._seen and (next(iter(self._seen.values())) < now
                                  or len(self._seen) >= self.max_entries):
                self._seen.popitem(last=False)
            if digest in self._seen:
                return False
            self._seen[digest] = now + self.ttl
            return True

    def release(self, digest: str) -> None:
        if self.redis is not None:
            self.redis.delete(f"{self.prefix}:seen:{digest}")
            return
        with self._lock:
            self._seen.pop(digest, None)

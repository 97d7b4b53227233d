"""The execution pool: one process per core, each holding every model and an LRU cache
of deserialised evaluation keys.

Requests of one key id always go to the same worker (a stable hash of the key id), so a
key set is deserialised -- and decompressed, by running the warm-up ciphertext stored
with it -- once, in one process, when it is registered or first used after a restart;
requests then never pay for it.  Each worker is a one-process
:class:`~concurrent.futures.ProcessPoolExecutor`: when a worker dies (killed, out of
memory), the requests it held fail with :class:`WorkerCrashed` and the worker is
replaced, so a retry succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

__all__ = ["WorkerCrashed", "WorkerPool"]

# ------------------------------------------------------------- in the worker process
_STATE: dict[str, Any] = {}


def _init(models: dict[str, str], store_location: str, cache_size: int, threads: int,
          cores: int) -> None:
    import signal

    # concrete parallelises loops with OpenMP: share the cores between the workers
    # instead of every worker starting one thread per core (set before concrete loads)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores)))

    from ..backends.fhe_deploy import FHEServer
    from .store import open_store

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent shuts workers down
    try:
        _STATE["servers"] = {name: FHEServer.load(path) for name, path in models.items()}
        _STATE["store"] = open_store(store_location)
    except Exception as exc:  # noqa: BLE001 - reported by _pid to the starting server
        # an initializer that raises breaks the pool: the server then said "killed or
        # ran out of memory" about a model whose program.zip concrete could not load
        _STATE["init_error"] = f"{type(exc).__name__}: {exc}"
        return
    _STATE["cache"] = OrderedDict()
    _STATE["cache_size"] = max(1, cache_size)
    _STATE["threads"] = ThreadPoolExecutor(max_workers=max(1, threads))
    _STATE["lock"] = threading.Lock()


def _keys(model: str, key_id: str) -> Any:
    """Deserialised (and warmed) evaluation keys of ``key_id``, cached LRU."""
    cache: OrderedDict[str, Any] = _STATE["cache"]
    with _STATE["lock"]:
        if key_id in cache:
            cache.move_to_end(key_id)
            return cache[key_id]
        _STATE["loads"] = _STATE.get("loads", 0) + 1
    loaded = _STATE["store"].load(key_id)
    if loaded is None:
        raise LookupError("no evaluation keys are registered under this key id")
    blob, warmup = loaded
    server = _STATE["servers"][model]
    keys = server.load_evaluation_keys(blob)
    if warmup:
        server.run(warmup, keys, n_jobs=1)  # concrete decompresses seeded keys on first use
    with _STATE["lock"]:
        cache[key_id] = keys
        while len(cache) > _STATE["cache_size"]:
            cache.popitem(last=False)
    return keys


def _run(model: str, key_id: str, blobs: list[bytes]
         ) -> tuple[list[tuple[int, bytes | str]], int]:
    """Run a batch of one client's requests: per request ``(status, result or message)``,
    and how many key sets this worker has loaded so far (cache misses)."""
    from ..backends.fhe_deploy import FHEArtifactError

    try:
        keys = _keys(model, key_id)
    except LookupError as exc:
        return [(404, str(exc))] * len(blobs), _STATE.get("loads", 0)
    except FHEArtifactError as exc:
        return [(409, str(exc))] * len(blobs), _STATE.get("loads", 0)
    server = _STATE["servers"][model]

    def one(blob: bytes) -> tuple[int, bytes | str]:
        try:
            return 200, server.run(blob, keys, n_jobs=1)
        except FHEArtifactError as exc:
            return 400, str(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the client as JSON
            return 500, f"{type(exc).__name__}: {exc}"

    return list(_STATE["threads"].map(one, blobs)), _STATE.get("loads", 0)


def _warm(model: str, key_id: str) -> int:
    _keys(model, key_id)
    return int(_STATE.get("loads", 0))


def _evict(key_id: str) -> None:
    with _STATE["lock"]:
        _STATE["cache"].pop(key_id, None)


def _pid() -> int:
    if "init_error" in _STATE:
        raise RuntimeError(f"the worker could not load the models or the key store: "
                           f"{_STATE['init_error']}")
    return os.getpid()


# ------------------------------------------------------------------ in the server
class WorkerCrashed(RuntimeError):
    """The worker process running a request died; the request may be retried."""


class WorkerPool:
    """``n_workers`` single-process executors with key-id affinity.

    Parameters
    ----------
    models : dict
        Model name -> path of its ``server.zip``.
    store_location : str
        Where the workers read evaluation keys (directory or Redis URL).
    n_workers : int, optional
        Default: every core (``os.cpu_count()``).
    cache_size : int
        Deserialised key sets each worker keeps (LRU).
    threads : int
        Requests of one batch a worker runs concurrently.

    Each worker gets ``cores // n_workers`` OpenMP threads (``OMP_NUM_THREADS``, unless
    set), the threads concrete parallelises a batched call with.
    """

    def __init__(self, models: dict[str, str | Path], store_location: str,
                 n_workers: int | None = None, cache_size: int = 8, threads: int = 1) -> None:
        self.models = {k: str(v) for k, v in models.items()}
        self.store_location = store_location
        self.n_workers = max(1, int(n_workers or os.cpu_count() or 1))
        self.cache_size, self.threads = cache_size, threads
        #: OpenMP threads of each worker: the cores divided between the workers
        self.cores_per_worker = max(1, (os.cpu_count() or 1) // self.n_workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._executors = [self._spawn() for _ in range(self.n_workers)]
        self._loads = [0] * self.n_workers
        self.restarts = 0

    def _spawn(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1, mp_context=self._ctx, initializer=_init,
            initargs=(self.models, self.store_location, self.cache_size, self.threads,
                      self.cores_per_worker))

    def worker_of(self, key_id: str) -> int:
        digest = hashlib.sha256(key_id.encode()).digest()
        return int.from_bytes(digest[:8], "little") % self.n_workers

    async def _call(self, index: int, fn: Any, *args: Any) -> Any:
        executor = self._executors[index]
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except BrokenProcessPool as exc:
            with self._lock:
                if self._executors[index] is executor:
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._executors[index] = self._spawn()
                    self._loads[index] = 0
                    self.restarts += 1
            raise WorkerCrashed(
                "the worker process running this request died (it was killed or ran out "
                "of memory); it has been restarted, retry the request") from exc

    async def start(self) -> list[int]:
        """Start every worker (models loaded); returns their process ids."""
        return list(await asyncio.gather(*(self._call(i, _pid) for i in range(self.n_workers))))

    @property
    def key_loads(self) -> int:
        """Key sets deserialised by the workers (registrations, warm-ups, cache misses)."""
        return sum(self._loads)

    async def run(self, model: str, key_id: str, blobs: list[bytes]) -> list[tuple[int, Any]]:
        index = self.worker_of(key_id)
        results, loads = await self._call(index, _run, model, key_id, blobs)
        self._loads[index] = max(self._loads[index], loads)
        return list(results)

    async def warm(self, model: str, key_id: str) -> None:
        index = self.worker_of(key_id)
        loads = await self._call(index, _warm, model, key_id)
        self._loads[index] = max(self._loads[index], loads)

    async def heal(self) -> None:
        """Replace (and start) workers that died while idle."""
        for index, executor in enumerate(list(self._executors)):
            if getattr(executor, "_broken", False):
                with contextlib.suppress(WorkerCrashed):
                    await self._call(index, _pid)  # detects the break, respawns
                with contextlib.suppress(WorkerCrashed):
                    await self._call(index, _pid)  # starts the new worker

    async def evict(self, key_id: str) -> None:
        await self._call(self.worker_of(key_id), _evict, key_id)

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        out: list[int] = []
        for ex in self._executors:
            procs = getattr(ex, "_processes", None) or {}
            out.extend(int(pid) for pid, proc in procs.items() if proc.is_alive())
        return out

    def shutdown(self, wait: bool = True) -> None:
        for ex in self._executors:
            ex.shutdown(wait=wait, cancel_futures=not wait)

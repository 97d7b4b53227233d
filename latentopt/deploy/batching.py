"""Per-client request queues: queued requests of one key id go to its worker together.

While a client's batch runs, its new requests wait in its queue; the next dispatch takes
up to ``max_batch`` of them in one call to the worker (one round trip, one key lookup,
run by the worker's threads), instead of one call each.  Clients are independent: their
dispatches run concurrently on their workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ClientQueues"]

Runner = Callable[[str, str, list[bytes]], Awaitable[list[tuple[int, Any]]]]


class ClientQueues:
    """Queues keyed by ``(model, key_id)``, each drained by one dispatcher task.

    Parameters
    ----------
    run : coroutine function
        ``run(model, key_id, blobs)`` -> one ``(status, payload)`` per blob
        (:meth:`latentopt.deploy.worker.WorkerPool.run`).
    max_batch : int
        Most requests of one client per dispatch.
    """

    def __init__(self, run: Runner, max_batch: int = 8) -> None:
        self._run = run
        self.max_batch = max(1, max_batch)
        self._queues: dict[tuple[str, str], list[tuple[bytes, asyncio.Future[Any]]]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.pending = 0  # waiting or running
        self.batches = 0
        self.batched_requests = 0

    async def submit(self, model: str, key_id: str, blob: bytes) -> tuple[int, Any]:
        """Queue one request; returns its ``(status, payload)``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        key = (model, key_id)
        self._queues.setdefault(key, []).append((blob, future))
        self.pending += 1
        if key not in self._tasks:
            self._tasks[key] = loop.create_task(self._drain(key))
        try:
            return await future
        finally:
            self.pending -= 1

    async def _drain(self, key: tuple[str, str]) -> None:
        try:
            while True:
                queue = self._queues.get(key)
                if not queue:
                    break
                batch = [(b, f) for b, f in queue[: self.max_batch] if not f.done()]
                del queue[: self.max_batch]
                if not batch:
                    continue
                self.batches += 1
                self.batched_requests += len(batch)
                try:
                    results = await self._run(key[0], key[1], [b for b, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for (_, f), result in zip(batch, results):
                    if not f.done():
                        f.set_result(result)
        finally:
            self._tasks.pop(key, None)
            if not self._queues.get(key):
                self._queues.pop(key, None)

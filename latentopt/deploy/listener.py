"""The replicas' announcement listener: Redis pub/sub in a thread that survives outages.

``redis``' own ``PubSub.run_in_thread`` ends on the first lost connection: after a Redis
restart a replica no longer warmed keys registered through the others.  This one logs
the loss, subscribes again with a growing delay, and logs the reconnection.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

__all__ = ["Listener"]

log = logging.getLogger("latentopt.serve")


class Listener:
    """Calls ``callback(model, key_id)`` for every message ``[model, key_id]`` published
    on ``channel``; :meth:`stop` ends the thread."""

    def __init__(self, client: Any, channel: str, callback: Any, *, poll: float = 0.5,
                 max_delay: float = 10.0) -> None:
        self.client, self.channel, self.callback = client, channel, callback
        self.poll, self.max_delay = poll, max_delay
        self.subscriptions = 0  # successful (re)subscriptions, for tests and logs
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentopt-listener",
                                        daemon=True)
        self._thread.start()

    def _handle(self, message: dict[str, Any] | None) -> None:
        if not message or message.get("type") != "message":
            return
        try:
            model, key_id = json.loads(message["data"])
        except (ValueError, TypeError):
            return
        try:
            self.callback(str(model), str(key_id))
        except Exception:  # noqa: BLE001 - one bad callback must not end the listener
            log.exception("announcement listener: callback failed")

    def _run(self) -> None:
        delay, lost = self.poll, False
        while not self._stopped.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.subscriptions += 1
                if lost:
                    log.warning("announcement listener: reconnected to the key store, "
                                "warming keys registered by other replicas again")
                delay, lost = self.poll, False
                while not self._stopped.is_set():
                    self._handle(pubsub.get_message(timeout=self.poll))
            except Exception as exc:  # noqa: BLE001 - redis' errors are not OSErrors
                if self._stopped.is_set():
                    break
                if not lost:
                    log.warning("announcement listener: lost the key store (%s: %s); keys "
                                "registered by other replicas are not pre-warmed until it "
                                "is back, retrying", type(exc).__name__, exc)
                lost = True
                self._stopped.wait(delay)
                delay = min(delay * 2, self.max_delay)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001, S110 - closing a dead connection
                        pass

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        self._thread.join(timeout)

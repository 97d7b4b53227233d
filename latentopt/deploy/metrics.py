"""Prometheus metrics of the server (one registry per application).

``latentopt_requests_total`` / ``latentopt_errors_total`` (by endpoint, model and
status), ``latentopt_request_seconds`` (latency histogram), ``latentopt_pbs_total`` and
``latentopt_pbs_per_second`` (programmable bootstrappings run, and their rate over the
last minute), ``latentopt_queue_length`` (requests waiting or running),
``latentopt_key_store_keys`` / ``latentopt_key_store_bytes``, ``latentopt_key_uploads_total``,
``latentopt_key_loads`` (key sets deserialised: registrations, warm-ups, cache misses),
``latentopt_worker_restarts``.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The server's metrics; :attr:`registry` is what ``/metrics`` exports."""

    def __init__(self, window: float = 60.0) -> None:
        self.registry = r = CollectorRegistry()
        labels = ["endpoint", "model", "status"]
        self.requests = Counter("latentopt_requests", "HTTP requests", labels, registry=r)
        self.errors = Counter("latentopt_errors", "Requests answered with an error",
                              labels, registry=r)
        self.latency = Histogram("latentopt_request_seconds", "Request latency",
                                 ["endpoint", "model"], buckets=BUCKETS, registry=r)
        self.pbs = Counter("latentopt_pbs", "Programmable bootstrappings run", ["model"],
                           registry=r)
        self.pbs_rate = Gauge("latentopt_pbs_per_second",
                              f"PBS per second over the last {window:.0f} s", registry=r)
        self.queue = Gauge("latentopt_queue_length", "Predict requests waiting or running",
                           registry=r)
        self.store_keys = Gauge("latentopt_key_store_keys", "Key sets stored", registry=r)
        self.store_bytes = Gauge("latentopt_key_store_bytes", "Bytes of keys stored",
                                 registry=r)
        self.uploads = Counter("latentopt_key_uploads", "Evaluation key sets registered",
                               registry=r)
        self.key_loads = Gauge("latentopt_key_loads", "Key sets deserialised by the workers "
                               "(registrations, warm-ups and cache misses)", registry=r)
        self.restarts = Gauge("latentopt_worker_restarts", "Worker processes replaced",
                              registry=r)
        self._window = window
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.pbs_rate.set_function(self._rate)

    def observe(self, endpoint: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, model, str(status)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def add_pbs(self, model: str, count: int) -> None:
        self.pbs.labels(model).inc(count)
        with self._lock:
            self._events.append((time.monotonic(), count))

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._events and self._events[0][0] < now - self._window:
                self._events.popleft()
            total = sum(c for _, c in self._events)
        return total / self._window

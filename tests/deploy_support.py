"""Shared pieces of the serving tests (tests/deploy): the tiny model settings, the tokens
and a ``latentopt serve`` subprocess.  A module of its own, not ``conftest``: several test
directories have a conftest.py, so ``from conftest import ...`` is ambiguous.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
# 3 features, 3 hidden units, no rounding: 3 PBS of 4 bits per sample, exact (p_error
# 2**-40), so encrypted results equal the integer backend's.
TINY = dict(hidden_layer_sizes=(3,), n_w_bits=2, n_a_bits=2, n_input_bits=3, max_epochs=15,
            lr=1e-2, random_state=0, verbose=0)
COMPILE = dict(p_error=2**-40, batch_size=4)
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``latentopt serve`` in a subprocess; :meth:`stop` sends SIGTERM (graceful)."""

    def __init__(self, models: list[str], store: str | Path, *args: str,
                 log: Path, port: int | None = None, workers: int = 2) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "latentopt", "serve", *models, "--port", str(self.port),
             "--key-store", str(store), "--workers", str(workers), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        self.wait_ready()

    def wait_ready(self, timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return dict(r.json())
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


class Redis:
    """A real ``redis-server`` on 127.0.0.1 that a test can stop and start again on the
    same port (an outage)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        import shutil

        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port, self.dir = port or free_port(), directory
        directory.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

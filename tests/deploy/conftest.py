"""Fixtures of the serving tests: tiny deployed estimators, servers in subprocesses, Redis.

Servers run ``python -m latentopt serve`` on 127.0.0.1 with a free port; Redis is the
real ``redis-server`` binary on loopback with a temporary directory.  Keys come from
concrete's *insecure* key cache (tests only).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from deploy_support import COMPILE, REPO, TINY, TOKENS, Redis, Server, free_port  # noqa: F401
from sklearn.datasets import load_diabetes, load_wine
from sklearn.preprocessing import StandardScaler

from latentopt import QuantizedMLPClassifier, QuantizedMLPRegressor


@pytest.fixture(scope="session")
def key_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """concrete's *insecure* key cache, kept in pytest's cache directory: tests only."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return Path(tmp_path_factory.mktemp("deploy-key-cache"))
    path = Path(cache.mkdir("latentopt_deploy_keys")) / os.environ.get("PYTEST_XDIST_WORKER",
                                                                       "main")
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def wine_data() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_wine(return_X_y=True)
    return StandardScaler().fit_transform(X[:, [0, 6, 9]]), y


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory, key_cache: Path,
             wine_data: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """A tiny classifier (string labels) and regressor, compiled and deployed."""
    root = tmp_path_factory.mktemp("models")
    X, y = wine_data
    labels = np.array(["barolo", "grignolino", "barbera"])[y]
    out: dict[str, Any] = {"root": root, "X": X}
    old = {cls: getattr(cls, "_insecure_key_cache", None)
           for cls in (QuantizedMLPClassifier, QuantizedMLPRegressor)}
    try:
        for cls in old:
            cls._insecure_key_cache = str(key_cache)  # type: ignore[attr-defined]
        clf = QuantizedMLPClassifier(**TINY).fit(X, labels)
        clf.compile(**COMPILE)
        clf.save_deployment(root / "wine")
        Xd, yd = load_diabetes(return_X_y=True)
        Xd = StandardScaler().fit_transform(Xd[:, [2, 3, 8]])
        reg = QuantizedMLPRegressor(**TINY).fit(Xd, yd)
        reg.compile(**COMPILE)
        reg.save_deployment(root / "diabetes")
        out.update(clf=clf, reg=reg, Xd=Xd)
        yield out
    finally:
        for cls, value in old.items():
            cls._insecure_key_cache = value  # type: ignore[attr-defined]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """``start_server(models, store, *args)`` -> a running :class:`Server` (stopped after)."""
    servers: list[Server] = []

    def start(models: list[str], store: str | Path, *args: str, port: int | None = None,
              workers: int = 1) -> Server:
        server = Server(models, store, *args, log=tmp_path / f"server{len(servers)}.log",
                        port=port, workers=workers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on 127.0.0.1 (a free port, a temporary directory)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = Redis(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()

"""``latentopt serve DIR...``: serve deployed models over HTTP (uvicorn).

Each ``DIR`` holds a model's ``server.zip`` and ``client.zip`` (from
``save_deployment``); its name on the server is the directory name, or ``NAME=DIR``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main", "number_arg"]

MiB = 2**20


def number_arg(kind: type, lo: float, inclusive: bool = True,
               hi: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` >= ``lo`` (> ``lo`` if not ``inclusive``),
    at most ``hi``; a bad value is one line of argparse's usage error, not a traceback
    after minutes of work (``--n-encrypted -3`` ran 140 samples and printed negative
    seconds)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (not math.isfinite(value) or value < lo or (not inclusive and value == lo)
                or (hi is not None and value > hi)):
            upto = "" if hi is None else f" and <= {hi}"
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>=' if inclusive else '>'} {lo}{upto}, "
                f"got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    positive = number_arg(float, 0, inclusive=False)
    p = argparse.ArgumentParser(prog="latentopt serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="[NAME=]DIR",
                   help="directory of a model's server.zip and client.zip")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=number_arg(int, 1, hi=65535), default=8000)
    p.add_argument("--key-store", default=os.environ.get("LATENTOPT_KEY_STORE",
                                                         "latentopt-keys"),
                   help="key-store directory, or redis://host:port/db shared by replicas "
                        "(env LATENTOPT_KEY_STORE)")
    p.add_argument("--max-keys", type=number_arg(int, 1), default=10_000,
                   help="key sets kept; least recently used evicted beyond")
    p.add_argument("--max-store-mb", type=positive, default=64 * 1024,
                   help="MiB of keys kept; least recently used evicted beyond")
    p.add_argument("--workers", type=number_arg(int, 1), default=None,
                   help="worker processes (default: every core)")
    p.add_argument("--cache-size", type=number_arg(int, 1), default=4,
                   help="deserialised key sets kept in memory per worker (LRU)")
    p.add_argument("--threads", type=number_arg(int, 1), default=1,
                   help="requests of one batch run concurrently in a worker")
    p.add_argument("--max-batch", type=number_arg(int, 1), default=8,
                   help="queued requests of one client sent to its worker together")
    p.add_argument("--max-request-mb", type=positive, default=64, help="ciphertext body limit")
    p.add_argument("--max-key-mb", type=positive, default=2048, help="key registration limit")
    p.add_argument("--max-samples", type=number_arg(int, 1), default=4096,
                   help="samples per request")
    p.add_argument("--timeout", type=positive, default=600, help="seconds per prediction")
    p.add_argument("--token", default=os.environ.get("LATENTOPT_TOKEN"),
                   help="bearer token required from every client (env LATENTOPT_TOKEN)")
    p.add_argument("--token-file", default=None,
                   help="per-client tokens: lines of 'name token'")
    p.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM), uvicorn")
    p.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM), uvicorn")
    p.add_argument("--graceful-timeout", type=number_arg(float, 0), default=600,
                   help="seconds in-flight requests may take to finish on shutdown")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from .app import create_app
    from .config import ServeConfig

    models = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, Path(item.rstrip("/")).name
        if not name or not path:
            raise SystemExit(f"latentopt serve: {item!r} names no model or no directory; "
                             f"use DIR or NAME=DIR")
        if name in models:
            raise SystemExit(f"latentopt serve: two models named {name!r}; use NAME=DIR")
        if name in (".", "..") or any(c in name for c in "/\\%?#") or not name.isprintable():
            # served under /v1/models/{name}: such a name was listed but never reached
            raise SystemExit(f"latentopt serve: model name {name!r} cannot be part of a URL "
                             f"path (no '/', '\\', '%', '?' or '#'; not '.' or '..'); "
                             f"use NAME=DIR")
        models[name] = path
    for flag, path in (("--ssl-certfile", args.ssl_certfile),
                       ("--ssl-keyfile", args.ssl_keyfile)):
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"latentopt serve: {flag} {path}: no such file")
    config = ServeConfig(
        models=models, store=args.key_store, max_keys=args.max_keys,
        max_store_bytes=int(args.max_store_mb * MiB), workers=args.workers,
        cache_size=args.cache_size, threads=args.threads, max_batch=args.max_batch,
        max_request_bytes=int(args.max_request_mb * MiB),
        max_key_bytes=int(args.max_key_mb * MiB), max_samples=args.max_samples,
        request_timeout=args.timeout, token=args.token, token_file=args.token_file)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..backends.fhe_deploy import FHEArtifactError

    try:  # bad artefacts, token files, stores: one line, not a traceback
        config.tokens()
        app = create_app(config)
    except (FHEArtifactError, OSError, ValueError) as exc:
        raise SystemExit(f"latentopt serve: {exc}") from None
    _check_store(str(config.store))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                timeout_graceful_shutdown=int(args.graceful_timeout), access_log=False)
    return 0


def _check_store(location: str) -> None:
    """Open the key store once before serving (a directory store is created): one that
    cannot be used failed inside uvicorn's start-up, with 22 (a file in a directory's
    way) to 57 (Redis unreachable) lines of traceback."""
    from .store import open_store

    try:
        store = open_store(location)
        store.ping()
        store.close()
    except Exception as exc:  # noqa: BLE001 - redis' errors are not OSErrors
        where = location.split("@")[-1]  # no password on the screen
        if isinstance(exc, OSError):  # a directory store (redis' errors are not OSErrors)
            why = f"cannot use it as a directory ({exc.strerror or exc})"
        else:
            why = f"{type(exc).__name__}: {exc}"
        raise SystemExit(f"latentopt serve: key store {where}: {why}") from None


if __name__ == "__main__":
    raise SystemExit(main())

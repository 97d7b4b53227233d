"""Serving encrypted inference: artefacts, a key store, an HTTP server and its client.

* :class:`Client` -- keys, encryption and the estimator's outputs over HTTP;
* ``latentopt serve DIR...`` (:mod:`.cli`) -- the server (:mod:`.app`, :mod:`.worker`,
  :mod:`.batching`, :mod:`.store`, :mod:`.metrics`);
* :mod:`.artifacts` -- the estimator's task, classes and output units in the client
  artefact.

The lower layer (artefact zips, framed blobs, :class:`FHEClient` / :class:`FHEServer`)
is :mod:`latentopt.backends.fhe_deploy`.  Importing this package is light: the server
side (FastAPI, uvicorn) is imported only by :func:`serve`.
"""

from __future__ import annotations

from typing import Any

from ..backends.fhe_deploy import FHEArtifactError, FHEClient, FHEServer, save_deployment
from .client import Client, ModelChangedError, ServerError

__all__ = ["Client", "FHEArtifactError", "FHEClient", "FHEServer", "ModelChangedError",
           "ServerError", "save_deployment", "serve"]


def serve(argv: list[str] | None = None) -> Any:
    """Run ``latentopt serve`` with command-line arguments ``argv``."""
    from .cli import main

    return main(argv)

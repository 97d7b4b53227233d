"""The HTTP application (FastAPI on uvicorn): keys, predictions, model info, metrics.

Endpoints (``{m}``: a model name, ``{k}``: a key id):

=========================================  ====================================================
``GET  /healthz``                          liveness
``GET  /readyz``                           readiness: workers started, recent keys warmed
``GET  /metrics``                          Prometheus metrics (:mod:`.metrics`)
``GET  /v1/models``                        every model's info
``GET  /v1/models/{m}``                    input spec, versions, circuit id, PBS count
``GET  /v1/models/{m}/client``             the client artefact (public material)
``POST /v1/models/{m}/keys``               register evaluation keys -> ``{"key_id": ...}``
``GET  /v1/models/{m}/keys/{k}``           metadata of one's own keys (never the keys)
``DELETE /v1/models/{m}/keys/{k}``         delete one's own keys
``POST /v1/models/{m}/keys/{k}/predict``   ciphertexts in, encrypted results out
=========================================  ====================================================

Bodies of keys and predictions are the framed blobs of
:mod:`latentopt.backends.fhe_deploy` (``application/octet-stream``).  Every error is a
JSON object ``{"error": code, "message": text}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.fhe_blobs import FHEArtifactError, _unpack, check_calls
from ._http import ApiError, _json_error, _read_body, _same
from .client import MODEL_ID_HEADER
from .config import ServeConfig, load_model
from .store import (
    KeyConflictError,
    KeyRecord,
    ReplayGuard,
    open_store,
    store_errors,
    valid_key_id,
)
from .worker import WorkerCrashed, WorkerPool

__all__ = ["ApiError", "create_app"]

log = logging.getLogger("latentopt.serve")


def create_app(config: ServeConfig) -> FastAPI:
    """Build the application for ``config`` (workers start in its lifespan)."""
    from .metrics import Metrics

    models = {name: load_model(name, path) for name, path in config.models.items()}
    metrics = Metrics()
    tokens = config.tokens()
    state: dict[str, Any] = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(config.store, config.max_keys, config.max_store_bytes)
        redis_client = getattr(store, "client", None)
        state["store"] = store
        state["replay"] = ReplayGuard(redis_client, ttl=config.replay_ttl)
        pool = WorkerPool({n: m.server_zip for n, m in models.items()}, str(config.store),
                          config.workers, config.cache_size, config.threads)
        state["pool"] = pool
        from .batching import ClientQueues

        queues = ClientQueues(pool.run, config.max_batch)
        state["queues"] = queues
        metrics.queue.set_function(lambda: queues.pending)
        metrics.restarts.set_function(lambda: pool.restarts)
        metrics.key_loads.set_function(lambda: pool.key_loads)
        pids = await pool.start()
        log.info("latentopt serve: %d model(s) %s, %d worker process(es) %s, key store %s",
                 len(models), sorted(models), len(pids), pids, store.describe())
        if not tokens:
            log.warning("latentopt serve: NO TOKEN SET -- the server is open: anyone who can "
                        "reach it may register keys and run predictions (use --token or "
                        "--token-file)")
        else:
            log.info("latentopt serve: bearer token required (%d client(s))", len(tokens))
        warm = asyncio.create_task(_warm_recent(pool, store))
        listener = None
        if hasattr(store, "listen"):  # replicas: warm keys registered through another one
            loop = asyncio.get_running_loop()

            def warm_announced(model: str, key_id: str) -> None:
                if model in models and valid_key_id(key_id):
                    asyncio.run_coroutine_threadsafe(_warm_quietly(pool, model, key_id), loop)

            listener = store.listen(warm_announced)
        healer = asyncio.create_task(_heal(pool))
        try:
            yield
        finally:
            state["ready"] = False
            warm.cancel()
            healer.cancel()
            if listener is not None:
                listener.stop()
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
            store.close()

    async def _warm_quietly(pool: WorkerPool, model: str, key_id: str) -> None:
        with contextlib.suppress(Exception):
            await pool.warm(model, key_id)

    async def _heal(pool: WorkerPool) -> None:
        while True:
            await asyncio.sleep(0.5)
            await pool.heal()

    async def _warm_recent(pool: WorkerPool, store: Any) -> None:
        """Deserialise the most recently used keys into the workers before reporting ready."""
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(
                None, store.recent, config.cache_size * pool.n_workers)
            for key_id in ids:
                record = await loop.run_in_executor(None, store.meta, key_id, False)
                if record is not None and record.model in models:
                    with contextlib.suppress(Exception):
                        await pool.warm(record.model, key_id)
        finally:
            state["ready"] = True

    app = FastAPI(title="latentopt encrypted inference", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)

    # ------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json_error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(422, "invalid_request", str(exc.errors()))

    async def _store_error(request: Request, exc: Exception) -> JSONResponse:
        log.warning("key store unavailable on %s: %s: %s", request.url.path,
                    type(exc).__name__, exc)
        return _json_error(503, "store_unavailable", f"the key store cannot be reached "
                                                     f"({type(exc).__name__}); retry later")

    for error in store_errors():  # Redis down: 503, not 500 internal
        app.add_exception_handler(error, _store_error)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _json_error(500, "internal", f"internal server error ({type(exc).__name__}); "
                                            "see the server log")

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        status = 500
        try:
            response: Response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            model = request.path_params.get("model", "") if route is not None else ""
            metrics.observe(endpoint, model if model in models else "", status,
                            time.perf_counter() - t0)

    # ------------------------------------------------------------------ helpers
    def principal(request: Request) -> str:
        """The caller's name from its bearer token ('' on an open server)."""
        if not tokens:
            return ""
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "a bearer token is required "
                                                "(Authorization: Bearer <token>)")
        for known, name in tokens.items():
            if _same(token.strip(), known):
                return name
        raise ApiError(401, "unauthorized", "invalid bearer token")

    def model_of(name: str) -> Any:
        if name not in models:
            raise ApiError(404, "unknown_model", f"no model named {name!r}; "
                                                 f"this server has {sorted(models)}")
        return models[name]

    async def own_record(model: str, key_id: str, who: str) -> KeyRecord:
        if not valid_key_id(key_id):
            raise ApiError(400, "bad_key_id", "malformed key id")
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(None, state["store"].meta, key_id, True)
        if record is None:
            raise ApiError(404, "unknown_key", "no evaluation keys are registered under this "
                                               "key id (evicted or never registered): "
                                               "register them again")
        if record.owner != who:
            raise ApiError(403, "forbidden", "these keys belong to another client")
        if record.model != model or record.circuit_id != models[model].circuit_id:
            raise ApiError(409, "key_mismatch", f"these keys were registered for another "
                                                f"model/circuit ({record.model!r}), not {model!r}")
        return record

    def update_store_gauges() -> None:
        try:
            count, size = state["store"].usage()
        except Exception as exc:  # noqa: BLE001 - the other metrics are served regardless
            if not state.get("gauges_failing"):
                log.warning("metrics: key store gauges skipped, the store cannot be read "
                            "(%s: %s)", type(exc).__name__, exc)
            state["gauges_failing"] = True
            return
        state["gauges_failing"] = False
        metrics.store_keys.set(count)
        metrics.store_bytes.set(size)

    # ---------------------------------------------------------------- endpoints
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not state["ready"]:
            return _json_error(503, "not_ready", "starting: workers or key warm-up pending")
        try:  # a replica whose (shared) key store is down cannot serve anyone
            await asyncio.get_running_loop().run_in_executor(None, state["store"].ping)
        except Exception as exc:  # noqa: BLE001 - redis' errors are not OSErrors
            return _json_error(503, "store_unavailable", f"the key store cannot be reached "
                                                         f"({type(exc).__name__}: {exc})")
        pool: WorkerPool = state["pool"]
        return JSONResponse({"status": "ready", "workers": pool.n_workers,
                             "worker_pids": pool.pids()})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        if "store" in state:
            await asyncio.get_running_loop().run_in_executor(None, update_store_gauges)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"models": [m.info() for m in models.values()]}

    @app.get("/v1/models/{model}")
    async def model_info(model: str) -> dict[str, Any]:
        return dict(model_of(model).info())

    @app.get("/v1/models/{model}/client")
    async def client_artifact(model: str) -> Response:
        m = model_of(model)
        if m.client_zip is None:
            raise ApiError(404, "no_client_artifact", f"{model!r} was served without client.zip")
        return Response(m.client_zip.read_bytes(), media_type="application/zip")

    @app.post("/v1/models/{model}/keys", status_code=201)
    async def register_keys(model: str, request: Request) -> JSONResponse:
        who = principal(request)
        m = model_of(model)
        body = await _read_body(request, config.max_key_bytes, config.request_timeout)
        try:
            head, frames = _unpack(body, "registration", m.circuit_id)
            keys_blob, warmup = frames
            key_head, _ = _unpack(keys_blob, "evaluation keys", m.circuit_id)
            key_id = str(key_head.get("key_id"))
            if head.get("key_id") != key_id:
                raise FHEArtifactError("registration and evaluation keys disagree on the key id")
            if warmup:
                warm_head, warm_frames = _unpack(warmup, "ciphertexts", m.circuit_id)
                if warm_head.get("key_id") != key_id:
                    raise FHEArtifactError("warm-up ciphertexts are for another key set")
                # one sample: a 160-sample warm-up held a worker for 26 s, past --timeout
                if check_calls(warm_head, len(warm_frames), m.batch_size) != 1:
                    raise FHEArtifactError("a warm-up ciphertext holds one sample")
        except FHEArtifactError as exc:
            raise ApiError(409 if "another circuit" in str(exc) else 400,
                           "key_mismatch" if "another circuit" in str(exc) else "bad_keys",
                           str(exc)) from None
        except ValueError:
            raise ApiError(400, "bad_keys", "a registration holds keys and a warm-up "
                                            "ciphertext") from None
        if not valid_key_id(key_id):
            raise ApiError(400, "bad_key_id", "malformed key id (generate keys with "
                                              "latentopt >= 0.1)")
        record = KeyRecord(key_id=key_id, circuit_id=m.circuit_id, model=model, owner=who,
                           size=len(keys_blob) + len(warmup),
                           fingerprint=hashlib.sha256(keys_blob).hexdigest(),
                           created=time.time())
        loop = asyncio.get_running_loop()
        try:
            created = await loop.run_in_executor(None, state["store"].put, record, keys_blob,
                                                 warmup)
        except KeyConflictError as exc:
            raise ApiError(409, "key_conflict", f"{exc}; keys are never overwritten") from None
        try:
            await asyncio.wait_for(state["pool"].warm(model, key_id), config.request_timeout)
        except asyncio.TimeoutError:
            await loop.run_in_executor(None, state["store"].delete, key_id)
            raise ApiError(504, "timeout", f"loading the keys took more than "
                                           f"{config.request_timeout:.0f} s") from None
        except WorkerCrashed as exc:
            raise ApiError(503, "worker_crashed", str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - bad keys: forget them, tell the client
            await loop.run_in_executor(None, state["store"].delete, key_id)
            raise ApiError(400, "bad_keys", f"the evaluation keys could not be loaded: "
                                            f"{exc}") from None
        if created:
            metrics.uploads.inc()
            if hasattr(state["store"], "announce"):
                with contextlib.suppress(Exception):
                    await loop.run_in_executor(None, state["store"].announce, model, key_id)
        return JSONResponse({"key_id": key_id, "created": created},
                            status_code=201 if created else 200)

    @app.get("/v1/models/{model}/keys/{key_id}")
    async def key_info(model: str, key_id: str, request: Request) -> dict[str, Any]:
        who = principal(request)
        model_of(model)
        record = await own_record(model, key_id, who)
        return {"key_id": key_id, "model": record.model, "circuit_id": record.circuit_id,
                "size": record.size, "created": record.created}

    @app.delete("/v1/models/{model}/keys/{key_id}", status_code=204)
    async def delete_keys(model: str, key_id: str, request: Request) -> Response:
        who = principal(request)
        model_of(model)
        await own_record(model, key_id, who)
        await asyncio.get_running_loop().run_in_executor(None, state["store"].delete, key_id)
        with contextlib.suppress(Exception):
            await state["pool"].evict(key_id)
        return Response(status_code=204)

    @app.post("/v1/models/{model}/keys/{key_id}/predict")
    async def predict(model: str, key_id: str, request: Request) -> Response:
        who = principal(request)
        m = model_of(model)
        if not valid_key_id(key_id):
            raise ApiError(400, "bad_key_id", "malformed key id")
        body = await _read_body(request, config.max_request_bytes, config.request_timeout)
        sent = request.headers.get(MODEL_ID_HEADER)  # absent from earlier clients
        if sent is not None and sent != m.model_id:
            # a client of an earlier export (same circuit): it would decrypt these results
            # right and label them with the old export's dequantizer and classes
            raise ApiError(409, "model_changed", f"{model!r} was redeployed: the server "
                                                 f"serves model id {m.model_id[:12]}..., the "
                                                 f"client was made for {sent[:12]}...")
        try:
            head, frames = _unpack(body, "ciphertexts", m.circuit_id)
        except FHEArtifactError as exc:
            mismatch = "another circuit" in str(exc)
            raise ApiError(409 if mismatch else 400, "key_mismatch" if mismatch else "bad_request",
                           str(exc)) from None
        try:
            n = check_calls(head, len(frames), m.batch_size)  # the samples actually sent
        except FHEArtifactError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        calls = head["calls"]
        if n > config.max_samples:
            raise ApiError(413, "too_large", f"{n} samples in one request; the limit is "
                                             f"{config.max_samples}")
        if head.get("key_id") != key_id:
            raise ApiError(409, "key_mismatch", "these ciphertexts were encrypted under another "
                                                "key set than the key id of the request")
        await own_record(model, key_id, who)
        digest = f"{key_id}:{head['sha256']}"
        replay: ReplayGuard = state["replay"]
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, replay.claim, digest):
            raise ApiError(409, "replayed", "these ciphertexts were submitted before (replayed "
                                            "request); encrypt again for a new request")
        ok = False
        try:
            status, payload = await asyncio.wait_for(
                state["queues"].submit(model, key_id, body), config.request_timeout)
            ok = status == 200
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"the request took more than "
                                           f"{config.request_timeout:.0f} s") from None
        except WorkerCrashed as exc:
            raise ApiError(503, "worker_crashed", str(exc)) from None
        finally:
            if not ok:
                await loop.run_in_executor(None, replay.release, digest)
        if status != 200:
            raise ApiError(status, {404: "unknown_key", 409: "key_mismatch",
                                    400: "bad_request"}.get(status, "execution_failed"),
                           str(payload))
        if m.pbs_per_sample:
            metrics.add_pbs(model, m.pbs_per_sample * sum(
                (m.batch_size if c[2] == "batch" else 1) for c in calls))
        return Response(payload, media_type="application/octet-stream")

    app.state.serve = state
    app.state.metrics = metrics
    return app

"""``create_app(settings)``: the FastAPI application, its lifespan, its middleware and its
metrics wiring.

The lifespan builds the model registry (which spawns the engine workers) and the service
and puts them on ``app.state``; routes get them through ``api/deps.py``. Error responses
are ``api/errors.py``'s, the pre-route limits ``api/limits.py``'s, the per-request
metrics, log line and span ``api/observability.py``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from embedhost import __version__
from embedhost.api import console
from embedhost.api.deps import require_scope
from embedhost.api.errors import EXCEPTION_HANDLERS
from embedhost.api.limits import (
    BodyLimitMiddleware,
    ConcurrencyLimit,
    ConcurrencyLimitMiddleware,
    QueueGate,
    RateLimitHeadersMiddleware,
    RefusalPacer,
)
from embedhost.api.observability import TIMING_HEADERS, ObservabilityMiddleware
from embedhost.api.routes import admin, embeddings, ops
from embedhost.api.routes import metrics as metrics_routes
from embedhost.cache import EmbeddingCache
from embedhost.config import Settings
from embedhost.metrics import Metrics, StateSnapshot, WorkerSnapshot
from embedhost.models.registry import ModelRegistry
from embedhost.models.reload import install_sighup
from embedhost.security.admission import Security
from embedhost.security.ratelimit import RATE_LIMIT_HEADERS
from embedhost.service import EmbeddingService
from embedhost.tracing import Tracing


def create_app(settings: Settings) -> FastAPI:
    """Raises :class:`ConfigError` when the configuration cannot serve here (no keys on a
    network address, a missing keys file, ...)."""
    security = Security(settings)
    pacer = RefusalPacer(settings.limits.refusals_per_s)
    concurrency = ConcurrencyLimit(
        settings.limits.max_concurrent_requests, settings.worker.retry_after_s, pacer
    )
    instance_id = settings.server.resolved_instance_id
    metrics = (
        Metrics(version=__version__, instance=instance_id) if settings.metrics.enabled else None
    )
    cache = EmbeddingCache(settings.cache, metrics.cache_observer() if metrics else None)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        tracing = None
        if settings.tracing.enabled:
            tracing = Tracing(settings.tracing.service_name)
        app.state.tracing = tracing
        registry = ModelRegistry(settings, metrics)
        app.state.registry = registry
        app.state.service = EmbeddingService(
            registry, settings.limits, tracing=tracing, cache=cache
        )
        app.state.draining = False
        registry.start()
        remove_sighup = install_sighup(app)
        try:
            yield {}
        finally:
            remove_sighup()
            app.state.draining = True
            await registry.stop(settings.server.graceful_shutdown_s)
            await security.limiter.close()
            await cache.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)

    app = FastAPI(
        title="embedhost",
        version=__version__,
        summary="Text embeddings over an OpenAI-compatible API",
        lifespan=lifespan,
        root_path=settings.server.root_path,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=_middleware(settings, concurrency),
    )
    app.state.settings = settings
    app.state.instance_id = instance_id
    app.state.started = time.monotonic()
    app.state.security = security
    app.state.concurrency = concurrency
    app.state.refusal_pacer = pacer
    app.state.tracing = None
    app.state.metrics = metrics
    app.state.cache = cache
    app.include_router(ops.router)
    app.include_router(embeddings.router)
    if metrics is not None:
        metrics.add_state(lambda: _snapshot(app, security, concurrency))
        # auth.metrics_open lets it through without the scope (Security.admit decides).
        app.include_router(metrics_routes.router, dependencies=[Depends(require_scope("metrics"))])
    app.include_router(admin.router)
    if settings.server.console:
        app.include_router(console.router)
    return app


def _middleware(settings: Settings, concurrency: ConcurrencyLimit) -> list[Middleware]:
    """The app's middleware, outermost first."""
    cors = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Cache-Control"],
            expose_headers=[
                "X-Embedhost-Model",
                "X-Embedhost-Cache",
                "Retry-After",
                *RATE_LIMIT_HEADERS,
                *TIMING_HEADERS,
            ],
        )
    ]
    return [
        # Outermost, so that every response (a 413 or 503 from below included) carries
        # X-Request-Id and is counted and logged.
        Middleware(ObservabilityMiddleware),
        *(cors if settings.server.cors_origins else []),
        # A full queue is refused here, before the body is read and without a slot.
        Middleware(QueueGate, pacer=concurrency.pacer),
        # Outside the body limit, so that a request waiting for its body holds a slot.
        Middleware(ConcurrencyLimitMiddleware, limit=concurrency),
        Middleware(RateLimitHeadersMiddleware),
        Middleware(
            BodyLimitMiddleware,
            max_bytes=settings.limits.max_body_bytes,
            max_depth=settings.limits.max_json_depth,
            timeout_s=settings.server.timeout_body_read_s,
        ),
    ]


def _snapshot(app: FastAPI, security: Security, concurrency: ConcurrencyLimit) -> StateSnapshot:
    """The state the metrics read at scrape time: readiness, workers, refusals."""
    registry: ModelRegistry | None = getattr(app.state, "registry", None)
    snap = StateSnapshot(
        ready=False,
        draining=bool(getattr(app.state, "draining", False)),
        overloaded_requests=concurrency.overloaded,
        rate_limit_storage_errors=security.limiter.storage_errors,
    )
    if registry is None:
        return snap
    snap.ready = registry.ready
    snap.workers = [
        WorkerSnapshot(
            h.name,
            h.version,
            r.worker.replica,
            r.worker.state == "ready",
            r.worker.pid,
            r.batcher.load_ratio,
        )
        for h in registry.handles.values()
        for r in h.replicas
    ]
    return snap

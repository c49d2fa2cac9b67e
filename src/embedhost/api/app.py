"""``create_app(settings)``: the FastAPI application, its context, its lifespan, its
middleware and its metrics wiring.

``create_app`` builds the app's one context (:class:`~embedhost.api.context.AppContext`,
``app.state.context``); the lifespan builds the serving core into it
(:meth:`~embedhost.core.Core.build`: model registry, engine workers, cache, service) and
stops it at the end. Routes get its parts through ``api/deps.py``. Error responses are
``api/errors.py``'s, the pre-route limits ``api/middleware.py``'s, the per-request
metrics, log line and span ``api/observability.py``'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware import Middleware

from embedhost import __version__
from embedhost.api import console
from embedhost.api.context import AppContext
from embedhost.api.deps import require_scope
from embedhost.api.errors import EXCEPTION_HANDLERS
from embedhost.api.gate import AuthGate
from embedhost.api.middleware import (
    BodyLimitMiddleware,
    ConcurrencyLimitMiddleware,
    QueueGate,
    RateLimitHeadersMiddleware,
)
from embedhost.api.observability import TIMING_HEADERS, ObservabilityMiddleware
from embedhost.api.overload import ConcurrencyLimit, RefusalPacer
from embedhost.api.routes import admin, batches, cohere_embed, embeddings, ops
from embedhost.api.routes import metrics as metrics_routes
from embedhost.api.routes import rerank as rerank_routes
from embedhost.api.routes import tokenize as tokenize_routes
from embedhost.config import Settings
from embedhost.core import Core
from embedhost.errors import EmbedhostError
from embedhost.jobs.metrics import JobsCollector
from embedhost.jobs.runner import Jobs
from embedhost.metrics import Metrics, StateSnapshot, WorkerSnapshot
from embedhost.models.reload import install_sighup
from embedhost.security.admission import Security
from embedhost.security.ratelimit import RATE_LIMIT_HEADERS


def create_app(
    settings: Settings,
    *,
    config_path: Path | None = None,
    orchestrator: str | None = None,
) -> FastAPI:
    """The app for ``settings``. ``config_path``: the file they were read from (SIGHUP and
    ``POST /admin/reload`` re-read it); ``orchestrator``: what runs many identical copies
    of this app (``ray-serve``: the admin API then refuses per-copy model changes).

    Raises :class:`ConfigError` when the configuration cannot serve here (no keys on a
    network address, a missing keys file, ...)."""
    security = Security(settings)
    pacer = RefusalPacer(settings.limits.refusals_per_s)
    concurrency = ConcurrencyLimit(
        settings.limits.max_concurrent_requests,
        settings.worker.retry_after_s,
        pacer,
        lambda: context.core.registry.retry_after() if context.core is not None else None,
    )
    instance_id = settings.server.resolved_instance_id
    metrics = (
        Metrics(version=__version__, instance=instance_id) if settings.metrics.enabled else None
    )
    context = AppContext(
        settings,
        security,
        concurrency,
        metrics,
        instance_id,
        config_path=config_path,
        orchestrator=orchestrator,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        core = context.core = Core.build(settings, metrics)
        context.draining = False
        core.start()
        if context.jobs is not None:
            context.jobs.start(core.service)
        remove_sighup = install_sighup(core.registry, config_path)
        try:
            yield {}
        finally:
            remove_sighup()
            context.draining = True
            if context.jobs is not None:
                await context.jobs.stop()
            await core.stop(settings.server.graceful_shutdown_s)
            await security.limiter.close()

    def refusal() -> EmbedhostError | None:
        return context.core.registry.refusal() if context.core is not None else None

    app = FastAPI(
        title="embedhost",
        version=__version__,
        summary="Text embeddings over an OpenAI-compatible API",
        lifespan=lifespan,
        root_path=settings.server.root_path,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=_middleware(settings, security, concurrency, refusal),
    )
    app.state.context = context
    app.include_router(ops.router)
    app.include_router(embeddings.router)
    app.include_router(tokenize_routes.router)
    app.include_router(cohere_embed.router)
    app.include_router(rerank_routes.router)
    if metrics is not None:
        metrics.add_state(lambda: _snapshot(context))
        # auth.metrics_open lets it through without the scope (Security.admit decides).
        app.include_router(metrics_routes.router, dependencies=[Depends(require_scope("metrics"))])
    app.include_router(admin.router)
    if settings.jobs.enabled:
        context.jobs = Jobs(settings, security)
        if metrics is not None:
            metrics.local.register(JobsCollector(context.jobs))
        app.include_router(batches.router)
    if settings.server.console:
        app.include_router(console.router)
    return app


def _middleware(
    settings: Settings,
    security: Security,
    concurrency: ConcurrencyLimit,
    refusal: Callable[[], EmbedhostError | None],
) -> list[Middleware]:
    """The app's middleware, outermost first."""
    cors = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Cache-Control",
                "X-Embedhost-Priority",
            ],
            expose_headers=[
                "X-Embedhost-Model",
                "X-Embedhost-Cache",
                "X-Embedhost-Chunks",
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
        Middleware(QueueGate, refusal=refusal, pacer=concurrency.pacer),
        # Outside the body limit, so that a request waiting for its body holds a slot.
        Middleware(ConcurrencyLimitMiddleware, limit=concurrency),
        Middleware(RateLimitHeadersMiddleware),
        # Who is calling, before the body is read (issue 20).
        Middleware(AuthGate, security=security, pacer=concurrency.pacer),
        Middleware(
            BodyLimitMiddleware,
            max_bytes=settings.limits.max_body_bytes,
            max_depth=settings.limits.max_json_depth,
            max_elements=settings.limits.json_elements,
            timeout_s=settings.server.timeout_body_read_s,
            uploads={"/v1/files": settings.jobs.max_file_bytes} if settings.jobs.enabled else None,
        ),
    ]


def _snapshot(context: AppContext) -> StateSnapshot:
    """The state the metrics read at scrape time: readiness, workers, refusals."""
    snap = StateSnapshot(
        ready=False,
        draining=context.draining,
        overloaded_requests=context.concurrency.overloaded,
        rate_limit_storage_errors=context.security.limiter.storage_errors,
    )
    if context.core is None:
        return snap
    registry = context.core.registry
    snap.ready = registry.ready
    snap.workers = [
        WorkerSnapshot(h.name, h.version, r.replica, r.ready, r.pid, r.load_ratio)
        for h, r in registry.replica_loads()
    ]
    return snap

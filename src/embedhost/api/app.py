"""``create_app(settings)``: the FastAPI application, its lifespan and its error handling.

The lifespan builds the model registry (which spawns the engine workers) and the service
and puts them on ``app.state``; routes get them through ``api/deps.py``. One handler turns
every :class:`EmbedhostError` into OpenAI's error body with the status from
``errors.STATUS``; validation errors and unknown routes get the same shape; anything else
is a 500 whose text is logged, never sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedhost import __version__
from embedhost.api.deps import require_scope
from embedhost.api.observability import TIMING_HEADERS, ObservabilityMiddleware
from embedhost.api.routes import admin, embeddings, ops
from embedhost.api.routes import metrics as metrics_routes
from embedhost.config import Settings
from embedhost.errors import EmbedhostError, Overloaded, error_body, status_for
from embedhost.metrics import Metrics, StateSnapshot, WorkerSnapshot
from embedhost.models.registry import ModelRegistry
from embedhost.models.reload import install_sighup
from embedhost.security import RATE_LIMIT_HEADERS, UNLIMITED_PATHS, Admission, Security
from embedhost.service import EmbeddingService

log = logging.getLogger(__name__)


def _json_error(
    status: int,
    message: str,
    type_: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        orjson.dumps(error_body(message, type_, code, param)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _embedhost_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmbedhostError)
    request.state.error = exc  # for the errors metric and the request log line
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return _json_error(status_for(exc), exc.message, exc.type, exc.code, exc.param, headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = loc[0] if loc else None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if field == "input":
        return (
            "input must be a non-empty string, an array of strings, an array of token ids, "
            "or an array of arrays of token ids",
            "input",
        )
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return "the request body must be a JSON object", None
    where = ".".join(loc) if loc else "body"
    return f"{where}: {first.get('msg', 'invalid value')}", field


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    message, param = _describe_validation(exc)
    return _json_error(422, message, "invalid_request_error", "invalid_request", param)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    message = str(exc.detail) if exc.status_code != 404 else f"no route {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed_methods(request)}
    return _json_error(exc.status_code, message, type_, code, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method the path's routes take: Starlette names only the first route's, which
    is wrong when several routes (GET and DELETE of one path) share a path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json_error(500, "internal server error", "server_error", "internal_error")


# A JSON string (skipped whole, so brackets inside it do not count) or a bracket.
_JSON_NESTING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_too_deep(body: bytes, max_depth: int) -> bool:
    """Whether a JSON document nests arrays/objects deeper than ``max_depth``.

    Checked on the raw bytes before parsing: a parser recursing 10,000 levels deep costs
    far more than this scan, and most bodies have too few brackets to need it at all.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    depth = 0
    for m in _JSON_NESTING.finditer(body):
        c = m.group()[0]
        if c in b"[{":
            depth += 1
            if depth > max_depth:
                return True
        elif c in b"]}":
            depth -= 1
    return False


class BodyLimitMiddleware:
    """413 before parsing when a body is larger than ``max_body_bytes``; 400 when its JSON
    nests deeper than ``max_json_depth``; 408 when it is not received within
    ``timeout_body_read_s`` (a slow client holding a connection and a concurrency slot).

    Checks Content-Length up front, and counts bodies (also chunked ones) as they arrive.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        max_depth: int | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send)
                    return
                break
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # Read the whole body here, within the limits, and replay it.
        chunks: list[bytes] = []
        size = 0
        more = True
        try:
            async with asyncio.timeout(self.timeout_s):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._reject(send)
                        return
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            await self._send(
                send,
                408,
                f"the request body was not received within {self.timeout_s:g} s",
                "request_timeout",
            )
            return
        body = b"".join(chunks)
        if self.max_depth is not None and json_too_deep(body, self.max_depth):
            await self._send(
                send,
                400,
                f"the JSON body nests deeper than the limit of {self.max_depth} levels",
                "json_too_deep",
            )
            return
        await self.app(scope, _replay(body, receive), send)

    async def _reject(self, send: Send) -> None:
        await self._send(
            send,
            413,
            f"request body is larger than the limit of {self.max_bytes} bytes",
            "payload_too_large",
        )

    async def _send(self, send: Send, status: int, message: str, code: str) -> None:
        await send_error(
            send, status, message, "invalid_request_error", code, {"connection": "close"}
        )


async def send_error(
    send: Send, status: int, message: str, type_: str, code: str, headers: dict[str, str]
) -> None:
    """OpenAI's error body, sent straight from an ASGI middleware (before any route)."""
    body = orjson.dumps(error_body(message, type_, code))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields an already-read body once, then defers to the server's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ConcurrencyLimitMiddleware:
    """An immediate 503 + Retry-After beyond ``max_concurrent`` requests in flight, rather
    than a queue that grows until clients time out. Probes (/health, /ready, /metrics) are
    never refused. Also adds the X-RateLimit-* headers of an admitted request."""

    def __init__(
        self, app: ASGIApp, max_concurrent: int | None, retry_after_s: int, security: Security
    ) -> None:
        self.app = app
        self.max_concurrent = max_concurrent
        self.retry_after_s = retry_after_s
        # Counted on the Security object (app.state.security), where metrics can read them.
        self.counters = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limited = self.max_concurrent is not None and scope.get("path") not in UNLIMITED_PATHS
        counters = self.counters
        if limited and counters.in_flight >= (self.max_concurrent or 0):
            counters.overloaded += 1
            err = Overloaded(
                f"the server is at its limit of {self.max_concurrent} concurrent requests; "
                "retry shortly",
            )
            await send_error(
                send, 503, err.message, err.type, err.code, {"retry-after": str(self.retry_after_s)}
            )
            return
        state: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                admission = state.get("admission")
                rl = admission.state.get("ratelimit") if isinstance(admission, Admission) else None
                if rl is not None:
                    present = {n.lower() for n, _ in message.get("headers", ())}
                    extra = [
                        (k.lower().encode(), v.encode())
                        for k, v in rl.headers().items()
                        if k.lower().encode() not in present
                    ]
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        if limited:
            counters.in_flight += 1
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if limited:
                counters.in_flight -= 1


def create_app(settings: Settings) -> FastAPI:
    """Raises :class:`ConfigError` when the configuration cannot serve here (no keys on a
    network address, a missing keys file, ...)."""
    security = Security(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        tracing = None
        if settings.tracing.enabled:
            from embedhost.tracing import Tracing

            tracing = Tracing(settings.tracing.service_name)
        app.state.tracing = tracing
        registry = ModelRegistry(settings, app.state.metrics)
        app.state.registry = registry
        app.state.service = EmbeddingService(registry, settings.limits, tracing=tracing)
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
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)

    app = FastAPI(
        title="embedhost",
        version=__version__,
        summary="Text embeddings over an OpenAI-compatible API",
        lifespan=lifespan,
        root_path=settings.server.root_path,
    )
    app.state.settings = settings
    app.state.instance_id = uuid.uuid4().hex[:12]
    app.state.started = time.monotonic()
    app.add_exception_handler(EmbedhostError, _embedhost_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.state.security = security
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.limits.max_body_bytes,
        max_depth=settings.limits.max_json_depth,
        timeout_s=settings.server.timeout_body_read_s,
    )
    # Outside the body limit, so that a request waiting for its body holds a slot.
    app.add_middleware(
        ConcurrencyLimitMiddleware,
        max_concurrent=settings.limits.max_concurrent_requests,
        retry_after_s=settings.worker.retry_after_s,
        security=security,
    )
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=[
                "X-Embedhost-Model",
                "Retry-After",
                *RATE_LIMIT_HEADERS,
                *TIMING_HEADERS,
            ],
        )
    app.include_router(ops.router)
    app.include_router(embeddings.router)
    _add_observability(app, settings)
    app.include_router(admin.router)
    return app


def _add_observability(app: FastAPI, settings: Settings) -> None:
    """Metrics (on a registry of this app's own), /metrics, and the request middleware,
    added last so that it is the outermost and sees every response."""
    app.state.tracing = None
    app.state.metrics = None
    if settings.metrics.enabled:
        metrics = Metrics(version=__version__)
        app.state.metrics = metrics

        def snapshot() -> StateSnapshot:
            registry: ModelRegistry | None = getattr(app.state, "registry", None)
            security: Security = app.state.security
            snap = StateSnapshot(
                ready=False,
                draining=bool(getattr(app.state, "draining", False)),
                overloaded_requests=security.overloaded,
                rate_limit_storage_errors=security.limiter.storage_errors,
            )
            if registry is None:
                return snap
            snap.ready = registry.ready
            snap.workers = [
                WorkerSnapshot(
                    h.name, h.version, r.worker.replica, r.worker.state == "ready", r.worker.pid
                )
                for h in registry.handles.values()
                for r in h.replicas
            ]
            return snap

        metrics.add_state(snapshot)
        # auth.metrics_open lets it through without the scope (security.py decides).
        app.include_router(metrics_routes.router, dependencies=[Depends(require_scope("metrics"))])
    app.add_middleware(ObservabilityMiddleware, state=app.state)

"""Per-request observability: request id, request metrics, the request log line, the
request's trace span, and the timing headers of embedding responses.

:class:`ObservabilityMiddleware` is a pure ASGI middleware (``BaseHTTPMiddleware`` would run
the route in another task and break the disconnect watcher of the embedding routes). It is
the outermost of the app's middleware, so every response, a 413 from the body limit
included, carries ``X-Request-Id``. The id is the client's ``X-Request-Id`` when it is sane
(1 to 128 characters of ``A-Z a-z 0-9 . _ : + = / -``), otherwise a new UUID. It is bound in
structlog's context for every line logged while the request is served.

The middleware creates the request's :class:`~embedhost.api.record.RequestRecord`;
routes and dependencies fill it in (the admission and key id from ``require_scope``; the
model, input counts and result from the embedding routes, through :func:`note_inputs` and
:func:`timing_headers`; the error from the error handler), and the middleware turns it into
metrics, one log line and the span's attributes after the response, so the embedding path
itself only sets fields.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedhost.api.context import AppContext, context_in, context_of
from embedhost.api.errors import send_error
from embedhost.api.middleware import PROBE_PATHS
from embedhost.api.record import RequestRecord, record_of
from embedhost.errors import RateLimited
from embedhost.metrics import ANONYMOUS

if TYPE_CHECKING:
    from embedhost.metrics import Metrics
    from embedhost.service import EmbedResult
    from embedhost.tracing import Tracing

log = logging.getLogger(__name__)
access = structlog.stdlib.get_logger("embedhost.access")

_SANE_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")
# Error responses produced outside the EmbedhostError handler, by status.
_STATUS_CODES = {
    404: "not_found",
    408: "request_timeout",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    500: "internal_error",
    503: "server_overloaded",  # the concurrency limit answers before any handler
}


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            if _SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are not used as labels: a scanner would make one series per URL.
    return path if isinstance(path, str) else "unmatched"


class ObservabilityMiddleware:
    """Reads settings, metrics and tracing from the context of the app it serves
    (``scope["app"]``): tracing only exists once the lifespan has started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        rid = request_id_from(scope.get("headers", []))
        record = RequestRecord(request_id=rid, start=t0)
        scope.setdefault("state", {})["record"] = record
        rid_header = (b"x-request-id", rid.encode("ascii"))
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        context = context_in(scope)
        metrics = context.metrics
        tracing = context.tracing
        bound = structlog.contextvars.bind_contextvars(request_id=rid)
        if metrics is not None:
            metrics.in_flight.inc()
        try:
            with self._span(tracing, scope) as span:
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception:
                    # Answered here rather than by Starlette's outer error middleware, so the
                    # 500 carries the request id and its log line has it bound.
                    log.exception(
                        "unhandled error on %s %s", scope.get("method"), scope.get("path")
                    )
                    status = 500
                    record.error_code = "internal_error"
                    record.error = None
                    if not started:
                        await send_error(
                            send_with_id,
                            500,
                            "internal server error",
                            "server_error",
                            "internal_error",
                            {},
                        )
                if span is not None and tracing is not None:
                    self._end_span(tracing, span, scope, record, status)
        finally:
            if metrics is not None:
                metrics.in_flight.dec()
            try:
                self._finish(context, scope, record, status, time.monotonic() - t0, metrics)
            finally:
                structlog.contextvars.reset_contextvars(**bound)

    @contextlib.contextmanager
    def _span(self, tracing: Tracing | None, scope: Scope) -> Iterator[Any]:
        if tracing is None:
            yield None
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in (b"traceparent", b"tracestate")
        }
        with tracing.server_span(str(scope.get("method", "HTTP")), headers) as span:
            trace_id = tracing.trace_id(span)
            if trace_id is not None:
                structlog.contextvars.bind_contextvars(trace_id=trace_id)
            yield span

    @staticmethod
    def _end_span(
        tracing: Tracing, span: Any, scope: Scope, record: RequestRecord, status: int
    ) -> None:
        route = _route(scope)
        span.update_name(f"{scope.get('method', 'HTTP')} {route}")
        span.set_attribute("http.request.method", str(scope.get("method", "")))
        span.set_attribute("http.route", route)
        span.set_attribute("url.path", str(scope.get("path", "")))
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("embedhost.request_id", record.request_id)
        if record.model:
            span.set_attribute("embedhost.model", record.model)
        result = record.embed_result
        if result is not None:
            span.set_attribute("embedhost.tokens", result.tokens.total)
            span.set_attribute("embedhost.inputs", len(result.tokens.counts))
        if status >= 500:
            tracing.set_error(span, f"HTTP {status}")

    @staticmethod
    def _finish(
        context: AppContext,
        scope: Scope,
        record: RequestRecord,
        status: int,
        seconds: float,
        metrics: Metrics | None,
    ) -> None:
        settings = context.settings
        route = _route(scope)
        method = str(scope.get("method", ""))
        model = record.model or ""
        err = record.error
        # A key over its own budget is refused before it is admitted (no record.key_id).
        key_id = str(
            record.key_id or (err.key_id if isinstance(err, RateLimited) else None) or ANONYMOUS
        )
        label_key = key_id if settings.metrics.key_id_label else ""
        quiet = route in PROBE_PATHS
        error_code = err.code if err is not None else record.error_code
        if error_code is None and status >= 400 and not quiet:
            # (A 503 from /ready while loading or draining is an answer, not an error.)
            error_code = _STATUS_CODES.get(status, f"http_{status}")
        result = record.embed_result
        if metrics is not None:
            metrics.observe_request(
                route=route,
                method=method,
                status=status,
                seconds=seconds,
                model=model,
                key_id=label_key,
                error_code=error_code,
            )
            if isinstance(err, RateLimited):
                metrics.rate_limited(label_key or None, err.limit)
            if result is not None:
                metrics.observe_embedding(
                    model=model,
                    key_id=label_key,
                    texts=len(result.tokens.counts),
                    tokens=result.tokens.total,
                    tokenize_s=result.tokenize_s,
                    queue_s=result.queue_s,
                )
        if not settings.logs.requests:
            return
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "path": scope.get("path", ""),
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "model": model or None,
            "key_id": key_id,
        }
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        if error_code is not None:
            fields["error"] = error_code
        if record.inputs is not None:
            fields["inputs"] = record.inputs
            fields["input_chars"] = record.input_chars
        if result is not None:
            fields["tokens"] = result.tokens.total
            fields["truncated"] = sum(result.tokens.truncated)
            fields["tokenize_ms"] = round(result.tokenize_s * 1000, 3)
            fields["queue_ms"] = round(result.queue_s * 1000, 3)
            fields["inference_ms"] = round(result.inference_s * 1000, 3)
        if record.input_texts is not None:
            fields["input_texts"] = record.input_texts
        if quiet:
            access.debug("request", **fields)
        elif status >= 500:
            access.warning("request", **fields)
        else:
            access.info("request", **fields)


# -- called by the embedding routes -----------------------------------------------------------


def note_inputs(request: Request, model: str, inputs: list[str] | list[list[int]]) -> None:
    """Record the resolved model and the inputs' size (texts only with ``logs.log_inputs``)."""
    record = record_of(request)
    record.model = model
    record.inputs = len(inputs)
    if inputs and isinstance(inputs[0], str):
        record.input_chars = sum(len(t) for t in inputs)
        if context_of(request).settings.logs.log_inputs:
            record.input_texts = list(inputs)
    else:
        record.input_chars = None


TIMING_HEADERS = (
    "X-Request-Id",
    "X-Tokenization-Time-Ms",
    "X-Queue-Time-Ms",
    "X-Inference-Time-Ms",
    "X-Total-Time-Ms",
)
"""Response headers a browser may read (CORS ``expose_headers``)."""


def timing_headers(request: Request, result: EmbedResult) -> dict[str, str]:
    """X-Tokenization/Queue/Inference/Total-Time-Ms of one embedding response."""
    record = record_of(request)
    record.embed_result = result
    return {
        "X-Tokenization-Time-Ms": f"{result.tokenize_s * 1000:.3f}",
        "X-Queue-Time-Ms": f"{result.queue_s * 1000:.3f}",
        "X-Inference-Time-Ms": f"{result.inference_s * 1000:.3f}",
        "X-Total-Time-Ms": f"{(time.monotonic() - record.start) * 1000:.3f}",
    }

"""Optional OpenTelemetry tracing (``pip install 'embedhost[otel]'``, ``tracing.enabled``).

Spans: one server span per HTTP request (its parent taken from the client's W3C
``traceparent``/``tracestate`` headers), and inside an embedding request ``tokenize``,
``queue`` (until the request's first batch ran) and ``inference`` (until its last batch
answered). The queue and inference spans are recorded after the fact from timestamps the
batcher already keeps, so tracing adds nothing to the batching path.

The exporter is configured by the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``,
the default, ``console`` or ``none``), ``OTEL_EXPORTER_OTLP_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``.

The tracer provider belongs to the app (it is not installed as OpenTelemetry's global
provider), so several apps in one process do not fight over it. OpenTelemetry is imported
only here, and only when tracing is enabled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer


class Tracing:
    """An app's tracer, and the few operations the server needs from OpenTelemetry."""

    def __init__(self, service_name: str) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise ImportError(
                f"tracing.enabled needs OpenTelemetry ({exc.name} is missing); "
                "install it with: pip install 'embedhost[otel]'"
            ) from exc
        attrs: dict[str, Any] = {}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = service_name
        self.provider: TracerProvider = TracerProvider(resource=Resource.create(attrs))
        exporter = _exporter()
        if exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        from embedhost import __version__

        self.tracer: Tracer = self.provider.get_tracer("embedhost", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        # Monotonic timestamps (what the batcher keeps) to the wall clock OTel wants, in ns.
        self._offset_ns = time.time_ns() - time.monotonic_ns()

    def shutdown(self) -> None:
        """Flush pending spans and stop the exporter."""
        self.provider.shutdown()

    @contextmanager
    def server_span(self, name: str, headers: Mapping[str, str]) -> Iterator[Span]:
        """The request's span, a child of the caller's trace when it sent ``traceparent``."""
        ctx = self._propagator.extract(headers)
        with self.tracer.start_as_current_span(
            name, context=ctx, kind=self._trace.SpanKind.SERVER
        ) as span:
            yield span

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Span]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def record(self, name: str, start: float, end: float, **attributes: Any) -> None:
        """A span that already happened, between two ``time.monotonic()`` readings."""
        span = self.tracer.start_span(
            name, start_time=int(start * 1e9) + self._offset_ns, attributes=attributes
        )
        span.end(end_time=int(end * 1e9) + self._offset_ns)

    def trace_id(self, span: Span) -> str | None:
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x") if ctx.is_valid else None

    def set_error(self, span: Span, description: str) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, description))


def _exporter() -> Any:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={kind!r} is not supported; use otlp, console or none"
        )
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()

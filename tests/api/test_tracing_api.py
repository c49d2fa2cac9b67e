"""OpenTelemetry tracing: spans reach a real OTLP/HTTP endpoint, in the caller's trace."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.app import app_client, fake_model, make_settings

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class _Collector(BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            self.server.received.append(req)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def otlp_endpoint() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


async def test_spans_for_request_tokenize_queue_inference(
    otlp_endpoint: tuple[str, list[ExportTraceServiceRequest]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = otlp_endpoint
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    settings = make_settings(
        [fake_model("fake")], tracing={"enabled": True, "service_name": "embedhost-test"}
    )
    async with app_client(settings) as (_, client):
        r = await client.post(
            "/v1/embeddings",
            json={"input": ["traced text", "another"]},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        assert r.status_code == 200
    # The lifespan's end flushed the exporter.
    spans = {}
    services = set()
    for req in received:
        for rs in req.resource_spans:
            for attr in rs.resource.attributes:
                if attr.key == "service.name":
                    services.add(attr.value.string_value)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    if sp.trace_id.hex() == TRACE_ID:
                        spans[sp.name] = sp
    assert services == {"embedhost-test"}
    assert set(spans) == {"POST /v1/embeddings", "tokenize", "queue", "inference"}
    root = spans["POST /v1/embeddings"]
    assert root.parent_span_id.hex() == PARENT_ID
    attrs = {a.key: a.value for a in root.attributes}
    assert attrs["http.response.status_code"].int_value == 200
    assert attrs["http.route"].string_value == "/v1/embeddings"
    assert attrs["embedhost.model"].string_value == "fake"
    assert attrs["embedhost.request_id"].string_value == r.headers["x-request-id"]
    for name in ("tokenize", "queue", "inference"):
        assert spans[name].parent_span_id == root.span_id
        assert root.start_time_unix_nano <= spans[name].start_time_unix_nano
        assert spans[name].start_time_unix_nano <= spans[name].end_time_unix_nano
    # Queue then inference, back to back.
    assert spans["queue"].end_time_unix_nano == spans["inference"].start_time_unix_nano

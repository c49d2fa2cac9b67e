"""Index, liveness, readiness, info, model list and the OpenAPI docs."""

from __future__ import annotations

import socket

import httpx

from embedhost import __version__


async def test_index(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "embedhost"
    assert body["endpoints"]["embeddings"] == "POST /v1/embeddings"


async def test_health(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_ready_reports_models_memory_uptime(fake_client: httpx.AsyncClient) -> None:
    r = await fake_client.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ready"
    assert body["models"] == {"fake": {"status": "ready"}, "fake-refuse": {"status": "ready"}}
    assert body["memory"]["workers_rss_bytes"] > 0
    assert body["memory"]["total_rss_bytes"] >= body["memory"]["api_rss_bytes"]
    assert body["uptime_s"] > 0


async def test_info(fake_client: httpx.AsyncClient) -> None:
    body = (await fake_client.get("/info")).json()
    assert body["version"] == __version__
    assert body["instance_id"] == socket.gethostname()  # server.instance_id unset
    assert body["default_model"] == "fake"
    m = body["models"][0]
    assert m["name"] == "fake"
    assert m["version"] == "1"
    assert m["status"] == "ready"
    assert m["dimensions"] == 32
    assert m["max_input_tokens"] == 16
    assert m["engine"] == "plugin:tests.fakes:FakeEngine"
    assert m["replicas"][0]["state"] == "ready"
    assert m["replicas"][0]["pid"] > 0


async def test_models_list(fake_client: httpx.AsyncClient) -> None:
    body = (await fake_client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake", "fake-refuse"]
    assert all(m["object"] == "model" for m in body["data"])


async def test_openapi_docs(fake_client: httpx.AsyncClient) -> None:
    assert (await fake_client.get("/docs")).status_code == 200
    spec = (await fake_client.get("/openapi.json")).json()
    assert "/v1/embeddings" in spec["paths"]
    assert "/embed" in spec["paths"]

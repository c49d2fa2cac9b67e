"""Index, liveness, readiness, info, model list and the OpenAPI docs."""

from __future__ import annotations

import socket

import httpx
import numpy as np

from embedhost import __version__
from embedhost.tokenization import load_tokenizer
from tests.fakes import vector_for
from tests.support.app import app_client, fake_model, make_settings


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


async def test_an_engine_added_by_its_row_serves() -> None:
    """``engine: fake`` is tests/fakes.py's catalog row (registered by conftest): the config
    takes the name, the API process builds the tokenizer the row says, and the worker (a
    spawned process whose catalog starts without the row) loads the class the row names."""
    settings = make_settings([fake_model("new", engine="fake", max_input_tokens=16)])
    text = "a new engine is one module and one row"
    async with app_client(settings) as (_, client):
        assert (await client.get("/info")).json()["models"][0]["engine"] == "fake"
        r = await client.post("/embed", json={"texts": [text], "model": "new", "normalize": False})
    assert r.status_code == 200, r.text
    ids = load_tokenizer(settings.models[0]).encode_batch([text])[0]
    got = np.asarray(r.json()["embeddings"][0], dtype=np.float32)
    np.testing.assert_allclose(got, vector_for(ids), rtol=1e-6)

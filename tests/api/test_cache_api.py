"""The embedding cache through the HTTP API, in-process, on the fake engine (in-process
memory tier; the Redis tier is tests/integration/test_cache_redis.py).

What reaches the engine is counted on the replica's batcher (every sequence the worker
embeds goes through it)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from fastapi import FastAPI

from embedhost.security.keys import new_key_entry
from tests.fakes import vector_for
from tests.support.app import app_client, fake_model, make_settings
from tests.support.prom import Samples, parse, value

ADMIN, ADMIN_E = new_key_entry("ops", ["embed", "admin", "metrics"])
TENANT_A, TENANT_A_E = new_key_entry("tenant-a", ["embed"])
TENANT_B, TENANT_B_E = new_key_entry("tenant-b", ["embed"])
TIGHT, TIGHT_E = new_key_entry("tight", ["embed"])


def auth(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def _keys() -> list[dict[str, Any]]:
    return [
        ADMIN_E.model_dump(),
        TENANT_A_E.model_dump(),
        TENANT_B_E.model_dump(),
        {**TIGHT_E.model_dump(), "rate_limits": {"tokens_per_minute": 10}},
    ]


@pytest_asyncio.fixture(scope="module")
async def cached() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        [
            fake_model("fake", max_input_tokens=16),
            fake_model("slow", max_input_tokens=16, engine_options={"delay_s": 0.3}),
            fake_model("uncached", max_input_tokens=16, cache=False),
        ],
        auth={"keys": _keys()},
    )
    async with app_client(settings) as pair:
        yield pair


def sequences(app: FastAPI, model: str) -> int:
    """Sequences the model's engine has embedded so far."""
    stats = app.state.context.registry.handles[model].replicas[0].batcher.stats
    n: int = stats.sequences
    return n


def ids_of(app: FastAPI, model: str, text: str) -> list[int]:
    tok = app.state.context.registry.handles[model].tokenizer
    ids: list[int] = tok.encode_batch([text])[0]
    return ids


async def embed(
    client: httpx.AsyncClient, texts: list[str], model: str = "fake", **headers: str
) -> httpx.Response:
    body = {"texts": texts, "model": model, "normalize": False}
    r = await client.post("/embed", json=body, headers=auth(ADMIN, **headers))
    assert r.status_code == 200, r.text
    return r


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics", headers=auth(ADMIN))
    assert r.status_code == 200
    return parse(r.text)


def raw(r: httpx.Response) -> list[bytes]:
    return [np.asarray(v, dtype=np.float32).tobytes() for v in r.json()["embeddings"]]


async def test_hit_is_bit_identical_to_the_engines_vector(
    cached: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = cached
    text = "bit identical please"
    before = sequences(app, "fake")
    miss = await embed(client, [text])
    hit = await embed(client, [text])
    assert miss.headers["x-embedhost-cache"] == "miss"
    assert hit.headers["x-embedhost-cache"] == "hit"
    assert sequences(app, "fake") == before + 1
    engine = vector_for(ids_of(app, "fake", text)).tobytes()
    assert raw(miss) == raw(hit) == [engine]
    # One entry serves every `dimensions` (applied, with normalization, after the cache).
    r = await client.post(
        "/v1/embeddings",
        json={"input": text, "model": "fake", "dimensions": 8, "encoding_format": "base64"},
        headers=auth(ADMIN),
    )
    assert r.headers["x-embedhost-cache"] == "hit"
    assert r.json()["usage"]["prompt_tokens"] == len(ids_of(app, "fake", text))
    got = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    want = vector_for(ids_of(app, "fake", text))[:8]
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-6)
    assert sequences(app, "fake") == before + 1


async def test_partial_hit_keeps_input_order_with_duplicates(
    cached: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = cached
    a, b, c = "partial alpha", "partial beta", "partial gamma"
    await embed(client, [a, b])
    before = sequences(app, "fake")
    texts = [c, a, c, b, a, c]
    r = await embed(client, texts)
    assert r.headers["x-embedhost-cache"] == "partial"
    assert sequences(app, "fake") == before + 1  # gamma, once
    assert raw(r) == [vector_for(ids_of(app, "fake", t)).tobytes() for t in texts]
    assert r.json()["tokens"] == [len(ids_of(app, "fake", t)) for t in texts]
    r = await embed(client, [b, c, c])
    assert r.headers["x-embedhost-cache"] == "hit"
    assert sequences(app, "fake") == before + 1


async def test_concurrent_identical_requests_compute_once(
    cached: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = cached
    before = sequences(app, "slow")
    rs = await asyncio.gather(*(embed(client, ["everyone asks this"], "slow") for _ in range(8)))
    # One engine computation (the slow engine takes 0.3 s: all eight were in flight at once).
    assert sequences(app, "slow") == before + 1
    assert len({tuple(raw(r)) for r in rs}) == 1
    states = sorted(r.headers["x-embedhost-cache"] for r in rs)
    assert states == ["hit"] * 7 + ["miss"]


async def test_cache_control_and_per_model_switch(
    cached: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = cached
    text = "cache control"
    before = sequences(app, "fake")
    r = await embed(client, [text], **{"Cache-Control": "no-store"})
    assert r.headers["x-embedhost-cache"] == "miss"
    r = await embed(client, [text])
    assert r.headers["x-embedhost-cache"] == "miss"  # no-store wrote nothing
    r = await embed(client, [text], **{"Cache-Control": "no-cache"})
    assert r.headers["x-embedhost-cache"] == "miss"  # computed afresh
    assert sequences(app, "fake") == before + 3
    r = await embed(client, [text])
    assert r.headers["x-embedhost-cache"] == "hit"
    # `cache: false` on a model: every request computes, and no header is sent.
    before = sequences(app, "uncached")
    for _ in range(2):
        r = await embed(client, [text], "uncached")
        assert "x-embedhost-cache" not in r.headers
    assert sequences(app, "uncached") == before + 2


async def test_info_metrics_and_admin_clear(cached: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = cached
    m0 = await scrape(client)
    await embed(client, ["clear me"])
    await embed(client, ["clear me"])
    await embed(client, ["clear me too"], "slow")
    info = (await client.get("/info", headers=auth(ADMIN))).json()["cache"]
    assert info["enabled"] is True and info["scope"] == "shared"
    assert info["memory"]["max_bytes"] == 64 * 1024 * 1024
    assert info["memory"]["entries"] >= 2 and info["memory"]["hits"] >= 1
    assert info["redis"] is None
    m1 = await scrape(client)
    hits = value(m1, "embedhost_cache_requests_total", tier="memory", result="hit")
    assert hits - value(m0, "embedhost_cache_requests_total", tier="memory", result="hit") >= 1
    assert value(m1, "embedhost_cache_entries") == info["memory"]["entries"]
    assert value(m1, "embedhost_cache_bytes") == info["memory"]["bytes"] > 0
    assert value(m1, "embedhost_cache_lookup_seconds_count", tier="memory") > 0

    # One version, then everything.
    r = await client.delete("/admin/cache?model=slow&version=1", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["memory_entries_removed"] >= 1
    assert r.json()["redis_keys_removed"] is None
    assert (await embed(client, ["clear me"])).headers["x-embedhost-cache"] == "hit"
    assert (await embed(client, ["clear me too"], "slow")).headers["x-embedhost-cache"] == "miss"
    r = await client.delete("/admin/cache", headers=auth(ADMIN))
    assert r.status_code == 200 and r.json()["memory_entries_removed"] >= 2
    assert (await embed(client, ["clear me"])).headers["x-embedhost-cache"] == "miss"
    r = await client.delete("/admin/cache?version=1", headers=auth(ADMIN))
    assert r.status_code == 400 and r.json()["error"]["param"] == "version"
    r = await client.delete("/admin/cache", headers=auth(TENANT_A))
    assert r.status_code == 403


async def test_hits_are_charged_by_default(cached: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = cached
    body = {"input": "hello world", "model": "fake"}  # 4 tokens; the key may spend 10
    codes = [
        (await client.post("/v1/embeddings", json=body, headers=auth(TIGHT))).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 429]


async def test_per_key_scope_and_uncharged_hits() -> None:
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        auth={"keys": _keys()},
        cache={"scope": "per_key", "charge_hits": False},
    )
    async with app_client(settings) as (app, client):
        body = {"input": "whose text is this", "model": "fake"}

        async def state(key: str) -> str:
            r = await client.post("/v1/embeddings", json=body, headers=auth(key))
            assert r.status_code == 200, r.text
            return r.headers["x-embedhost-cache"]

        assert [await state(TENANT_A), await state(TENANT_A)] == ["miss", "hit"]
        # Another key does not see (or time) tenant A's entries.
        assert [await state(TENANT_B), await state(TENANT_B)] == ["miss", "hit"]
        assert sequences(app, "fake") == 2
        # charge_hits: false: only computed inputs spend the token budget (4 of 10).
        body = {"input": "hello world", "model": "fake"}
        codes = [
            (await client.post("/v1/embeddings", json=body, headers=auth(TIGHT))).status_code
            for _ in range(5)
        ]
        assert codes == [200] * 5


@pytest.mark.parametrize("header", ["no-cache, no-store", "NO-STORE,NO-CACHE"])
async def test_bypass_neither_reads_nor_writes(
    cached: tuple[FastAPI, httpx.AsyncClient], header: str
) -> None:
    app, client = cached
    # Not read: an input already cached is computed again, and no cache header is sent.
    text = f"bypass {header}"
    assert (await embed(client, [text])).headers["x-embedhost-cache"] == "miss"
    before = sequences(app, "fake")
    r = await embed(client, [text], **{"Cache-Control": header})
    assert "x-embedhost-cache" not in r.headers
    assert sequences(app, "fake") == before + 1
    # Not written: after a bypassed request, the next plain one is still a miss.
    fresh = f"never stored {header}"
    await embed(client, [fresh], **{"Cache-Control": header})
    r = await embed(client, [fresh])
    assert r.headers["x-embedhost-cache"] == "miss"
    assert sequences(app, "fake") == before + 3

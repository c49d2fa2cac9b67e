"""Rate limits in a real Redis shared by two app instances (replicas); Redis killed mid-test."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from embedhost.config import Settings
from embedhost.security.keys import new_key_entry
from tests.support.app import app_client, fake_model, make_settings
from tests.support.redis_server import RedisServer, start_redis

KEY, ENTRY = new_key_entry("tenant-a", ["embed"])
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"input": "hello world", "model": "fake"}


def redis_settings(server: RedisServer, prefix: str, **limits: Any) -> Settings:
    return make_settings(
        [fake_model("fake", max_input_tokens=16)],
        auth={"keys": [ENTRY.model_dump()]},
        rate_limits={
            "storage": "redis",
            "redis_url": server.url,
            "key_prefix": prefix,
            "redis_timeout_s": 0.5,
            **limits,
        },
    )


async def test_two_replicas_share_one_budget(redis_server: RedisServer) -> None:
    prefix = f"eh-test-{uuid.uuid4().hex[:8]}"
    settings = redis_settings(
        redis_server, prefix, per_key={"requests_per_minute": 6, "tokens_per_minute": 1000}
    )
    async with app_client(settings) as (_, a), app_client(settings) as (_, b):
        codes, remaining = [], []
        for i in range(8):
            r = await (a if i % 2 == 0 else b).post("/v1/embeddings", json=BODY, headers=AUTH)
            codes.append(r.status_code)
            remaining.append(r.headers.get("x-ratelimit-remaining"))
        # Six in all, not six per replica; both replicas refuse once it is spent.
        assert codes == [200] * 6 + [429, 429]
        assert remaining[:6] == ["5", "4", "3", "2", "1", "0"]
        r = await b.post("/v1/embeddings", json=BODY, headers=AUTH)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit"] == "6"
    # The budgets live in Redis, under the configured prefix.
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.keys(f"{prefix}*")
    finally:
        client.close()


async def test_tokens_budget_shared(redis_server: RedisServer) -> None:
    prefix = f"eh-test-{uuid.uuid4().hex[:8]}"
    settings = redis_settings(redis_server, prefix, per_key={"tokens_per_minute": 10})
    async with app_client(settings) as (_, a), app_client(settings) as (_, b):
        # "hello world" is 4 tokens: 4 + 4 fit in 10, the third does not, on either replica.
        assert (await a.post("/v1/embeddings", json=BODY, headers=AUTH)).status_code == 200
        assert (
            await b.post("/embed", json={"text": "hello world"}, headers=AUTH)
        ).status_code == 200
        r = await a.post("/v1/embeddings", json=BODY, headers=AUTH)
        assert r.status_code == 429
        assert "10 tokens per minute" in r.json()["error"]["message"]


async def test_redis_killed_fails_open(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="embedhost.security")
    settings = redis_settings(
        redis_server, f"eh-test-{uuid.uuid4().hex[:8]}", per_key={"requests_per_minute": 100}
    )
    async with app_client(settings) as (app, client):
        r = await client.post("/v1/embeddings", json=BODY, headers=AUTH)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining"] == "99"
        redis_server.kill()
        for path, body in (("/v1/embeddings", BODY), ("/embed", {"text": "hi"})) * 3:
            r = await client.post(path, json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            assert "x-ratelimit-remaining" not in r.headers
        limiter = app.state.context.security.limiter
        assert limiter.storage_errors >= 6
        warnings = [r for r in caplog.records if "rate-limit storage failed" in r.getMessage()]
        assert len(warnings) == 1  # logged once, not per request
        assert "allowing" in warnings[0].getMessage()
        # Auth still holds while the limiter is down.
        assert (await client.post("/v1/embeddings", json=BODY)).status_code == 401
        # Redis back on the same port: budgets apply again.
        revived = start_redis(tmp_path, redis_server.port)
        try:
            r = await client.post("/v1/embeddings", json=BODY, headers=AUTH)
            assert r.status_code == 200
            assert r.headers["x-ratelimit-limit"] == "100"
        finally:
            revived.kill()


async def test_redis_killed_fails_closed(redis_server: RedisServer) -> None:
    settings = redis_settings(
        redis_server,
        f"eh-test-{uuid.uuid4().hex[:8]}",
        per_key={"requests_per_minute": 100},
        per_address={"tokens_per_minute": 1000},
        on_storage_error="deny",
    )
    async with app_client(settings) as (app, client):
        assert (await client.post("/v1/embeddings", json=BODY, headers=AUTH)).status_code == 200
        redis_server.kill()
        for path, body in (
            ("/v1/embeddings", BODY),
            ("/embed", {"text": "hi"}),
            ("/v1/models", None),
        ):
            if body is None:
                r = await client.get(path, headers=AUTH)
            else:
                r = await client.post(path, json=body, headers=AUTH)
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "rate_limiter_unavailable"
            assert err["type"] == "server_error"
            assert r.headers["retry-after"] == "1"
        # Probes do not depend on the limiter.
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        assert app.state.context.security.limiter.storage_errors >= 3


async def test_unreachable_redis_from_the_start() -> None:
    """A Redis that never answered (nothing listens on the port): same policy, no 500."""
    from tests.support.servers import free_port

    dead = RedisServer(free_port(), None, Path("/dev/null"))  # type: ignore[arg-type]
    settings = redis_settings(dead, "eh-test-dead", per_key={"requests_per_minute": 1})
    async with app_client(settings) as (_, client):
        for _ in range(3):
            r = await client.post("/v1/embeddings", json=BODY, headers=AUTH)
            assert r.status_code == 200

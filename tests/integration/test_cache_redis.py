"""The embedding cache's Redis tier, in a real redis-server started by the test run: two
app instances sharing it, one round trip per request, TTL expiry, corrupt values, Redis
killed and restarted under load, a hot swap (promote, rollback) under repeated queries, and
``embedhost cache clear`` against a live server.

Engine computations are counted on the replica's batcher; Redis round trips on the server
itself (``INFO commandstats``)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi import FastAPI

from embedhost.config import Settings
from tests.fakes import vector_for
from tests.support import MINILM, ROOT
from tests.support.app import FAKE_ENGINE, app_client, fake_model, make_settings
from tests.support.redis_server import RedisServer, start_redis
from tests.support.servers import start_server, stop_server
from tests.support.wait import wait_until, wait_until_async


def cache_settings(
    server: RedisServer, prefix: str, models: list[dict[str, Any]] | None = None, **cache: Any
) -> Settings:
    return make_settings(
        models or [fake_model("fake", max_input_tokens=16)],
        # Timeouts generous for a loaded 2-core test machine; the defaults are tighter.
        cache={
            "redis_url": server.url,
            "key_prefix": prefix,
            "redis_timeout_s": 0.5,
            "redis_retry_s": 0.2,
            **cache,
        },
    )


def _prefix() -> str:
    return f"eh-test-{uuid.uuid4().hex[:8]}"


def sequences(app: FastAPI, model: str = "fake") -> int:
    n: int = app.state.context.registry.handles[model].replicas[0].batcher.stats.sequences
    return n


def ids_of(app: FastAPI, text: str, model: str = "fake") -> list[int]:
    ids: list[int] = app.state.context.registry.handles[model].tokenizer.encode_batch([text])[0]
    return ids


async def embed(client: httpx.AsyncClient, texts: list[str], model: str = "fake") -> httpx.Response:
    r = await client.post("/embed", json={"texts": texts, "model": model, "normalize": False})
    assert r.status_code == 200, r.text
    return r


def raw(r: httpx.Response) -> list[bytes]:
    return [np.asarray(v, dtype=np.float32).tobytes() for v in r.json()["embeddings"]]


async def until(
    cond: Callable[[], object], tasks: Sequence[asyncio.Task[None]] = (), timeout: float = 60
) -> None:
    """Wait for ``cond`` (a deadline, never a fixed sleep); a failed load task fails the test."""

    def met() -> bool:
        if cond():
            return True
        for t in tasks:
            if t.done():
                t.result()
        return False

    await wait_until_async(met, timeout=timeout, every=0.02)


def commands(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")  # type: ignore[assignment]
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def test_two_instances_share_one_redis_one_round_trip_per_request(
    redis_server: RedisServer,
) -> None:
    prefix = _prefix()
    settings = cache_settings(redis_server, prefix)
    rds = redis.Redis(port=redis_server.port)
    try:
        async with app_client(settings) as (a_app, a), app_client(settings) as (b_app, b):
            texts = [f"shared text number {i}" for i in range(8)]
            ra = await embed(a, texts)
            assert ra.headers["x-embedhost-cache"] == "miss"
            await a_app.state.context.cache.flush()
            keys = rds.keys(f"{prefix}:cache:fake@1:*")
            assert len(keys) == 8
            assert all(len(rds.get(k) or b"") == 32 * 4 for k in keys)  # raw float32
            assert 0 < rds.ttl(keys[0]) <= 86_400

            # The other instance computes nothing: one MGET answers its eight inputs.
            rds.config_resetstat()
            before, trips = sequences(b_app), b_app.state.context.cache.round_trips
            rb = await embed(b, texts)
            assert rb.headers["x-embedhost-cache"] == "hit"
            assert raw(rb) == raw(ra) == [vector_for(ids_of(b_app, t)).tobytes() for t in texts]
            assert sequences(b_app) == before
            calls = commands(rds)
            assert calls.get("mget") == 1 and "get" not in calls and "set" not in calls
            assert b_app.state.context.cache.round_trips == trips + 1

            # Its Redis hits filled its memory: the same request again never reaches Redis.
            rds.config_resetstat()
            assert (await embed(b, texts)).headers["x-embedhost-cache"] == "hit"
            assert "mget" not in commands(rds)

            # A partial hit: one MGET for the misses, one pipelined write of what was computed.
            rds.config_resetstat()
            more = [*texts[:3], "new one", "new two", "new one"]
            r = await embed(b, more)
            assert r.headers["x-embedhost-cache"] == "partial"
            await b_app.state.context.cache.flush()
            assert sequences(b_app) == before + 2
            calls = commands(rds)
            assert calls.get("mget") == 1 and calls.get("set") == 2
            assert b_app.state.context.cache.round_trips == trips + 3
            info = (await b.get("/info")).json()["cache"]["redis"]
            assert info["url"] == redis_server.url and info["hits"] == 8
    finally:
        rds.close()


async def test_ttl_expiry_and_corrupt_values(redis_server: RedisServer) -> None:
    prefix = _prefix()
    # Memory off: every lookup goes to Redis.
    settings = cache_settings(redis_server, prefix, memory_max_mb=0, ttl_s=60)
    rds = redis.Redis(port=redis_server.port)
    try:
        async with app_client(settings) as (app, client):
            text = "expires soon"
            assert (await embed(client, [text])).headers["x-embedhost-cache"] == "miss"
            await app.state.context.cache.flush()
            (key,) = rds.keys(f"{prefix}:cache:*")
            assert 0 < rds.pttl(key) <= 60_000  # written with the configured TTL
            assert (await embed(client, [text])).headers["x-embedhost-cache"] == "hit"
            # Its TTL runs out (brought forward rather than waited: no window to miss on a
            # busy machine); then it is computed again.
            rds.pexpire(key, 1)
            await until(lambda: not rds.exists(key), timeout=10)
            before = sequences(app)
            assert (await embed(client, [text])).headers["x-embedhost-cache"] == "miss"
            assert sequences(app) == before + 1

            # A value of the wrong size: ignored (recomputed) and overwritten.
            await app.state.context.cache.flush()
            rds.set(key, b"not a vector", ex=60)
            r = await embed(client, [text])
            assert r.headers["x-embedhost-cache"] == "miss"
            assert raw(r) == [vector_for(ids_of(app, text)).tobytes()]
            await app.state.context.cache.flush()
            assert rds.get(key) == vector_for(ids_of(app, text)).tobytes()
            assert app.state.context.cache.redis_corrupt == 1
            metrics = (await client.get("/metrics")).text
            assert 'embedhost_cache_requests_total{result="corrupt",tier="redis"} 1.0' in metrics
    finally:
        rds.close()


async def test_redis_killed_and_restarted_under_load(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="embedhost.cache")
    prefix = _prefix()
    settings = cache_settings(redis_server, prefix)
    statuses: list[int] = []
    killed_at: list[int] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            # Half repeated, half new: Redis is consulted on every other request.
            text = f"repeat {i % 5}" if i % 2 else f"client {n} text {i}"
            r = await client.post("/embed", json={"texts": [text], "model": "fake"})
            statuses.append(r.status_code)
            await asyncio.sleep(0)  # a memory hit never suspends in-process (no socket)

    async with app_client(settings) as (app, client):
        cache = app.state.context.cache
        tasks = [asyncio.create_task(client_loop(client, n)) for n in range(4)]
        try:
            await until(lambda: len(statuses) >= 40, tasks)
            redis_server.kill()
            killed_at.append(len(statuses))
            await until(lambda: cache.errors >= 1 and len(statuses) >= killed_at[0] + 80, tasks)
            # Redis back on the same port: the cache resumes (after redis_retry_s).
            revived = start_redis(tmp_path, redis_server.port)
            try:
                rds = redis.Redis(port=revived.port)
                await until(lambda: rds.keys(f"{prefix}:cache:*"), tasks, timeout=30)
                stored = rds.keys(f"{prefix}:cache:*")
                rds.close()
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            assert stored, "the cache did not write to the restarted Redis"
            # What is computed now is found by another instance.
            assert (await embed(client, ["after the restart"])).headers[
                "x-embedhost-cache"
            ] == "miss"
            await cache.flush()
            rds = redis.Redis(port=revived.port)
            assert len(rds.keys(f"{prefix}:cache:*")) > len(stored)
            rds.close()
            async with app_client(settings) as (_, b):
                r = await embed(b, ["after the restart"])
                assert r.headers["x-embedhost-cache"] == "hit"
            revived.kill()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    # Zero failures; answers kept coming while Redis was dead.
    assert set(statuses) == {200}, sorted(set(statuses))
    assert len(statuses) >= killed_at[0] + 80
    assert cache.errors >= 1
    warnings = [r for r in caplog.records if "cache: Redis" in r.getMessage()]
    assert 1 <= len(warnings) <= 3  # at most one per 10 s, not one per request


async def test_hot_swap_under_repeated_queries_never_serves_another_version(
    redis_server: RedisServer,
) -> None:
    """Versions 1 and 2 of one model give different vectors (the fake's salt); under a
    repeated-query load through promote, rollback and promote again, every answer is the
    exact vector of the version that its X-Embedhost-Model header names."""
    prefix = _prefix()
    v1 = fake_model("fake", max_input_tokens=16, engine_options={"salt": 1})
    settings = cache_settings(redis_server, prefix, models=[v1])
    settings.lifecycle.keep_previous = True
    salts = {"fake@1": 1, "fake@2": 2}
    texts = [f"popular query {i}" for i in range(6)]
    seen: list[tuple[str, int, bytes]] = []
    stop = asyncio.Event()
    async with app_client(settings) as (app, client):
        ids = {t: ids_of(app, t) for t in texts}

        async def load(n: int) -> None:
            i = n
            while not stop.is_set():
                i += 1
                r = await embed(client, [texts[i % len(texts)]])
                seen.append((r.headers["x-embedhost-model"], i % len(texts), raw(r)[0]))
                # A memory hit never suspends in-process (no socket): let the test run.
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(load(n)) for n in range(4)]
        try:
            await until(lambda: len(seen) >= 30, tasks)
            body = {
                "version": "2",
                "engine": FAKE_ENGINE,
                "path": MINILM,
                "max_input_tokens": 16,
                "engine_options": {"salt": 2},
                "wait": True,
            }
            r = await client.post("/admin/models/fake/versions", json=body)
            assert r.status_code == 201, r.text
            for step in ("promote", "rollback", "promote"):
                mark = len(seen)
                if step == "promote":
                    r = await client.post("/admin/models/fake/promote", json={"version": "2"})
                else:
                    r = await client.post("/admin/models/fake/rollback", json={})
                assert r.status_code == 200, r.text
                await until(lambda: len(seen) >= mark + 30, tasks)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    tags = {tag for tag, _, _ in seen}
    assert tags == {"fake@1", "fake@2"}
    for tag, t, vec in seen:
        assert vec == vector_for(ids[texts[t]], salt=salts[tag]).tobytes(), (tag, texts[t])


def test_cli_cache_clear(redis_server: RedisServer, tmp_path: Path) -> None:
    prefix = _prefix()
    server = start_server(
        tmp_path,
        {
            "models": [fake_model("fake", max_input_tokens=16), fake_model("other")],
            "cache": {"redis_url": redis_server.url, "key_prefix": prefix},
        },
    )
    rds = redis.Redis(port=redis_server.port)

    def cli(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "embedhost", "cache", "clear", "--url", server.url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=True,
        )
        return out.stdout

    try:
        for model in ("fake", "other"):
            r = httpx.post(
                f"{server.url}/embed", json={"texts": ["a", "b"], "model": model}, timeout=30
            )
            assert r.headers["x-embedhost-cache"] == "miss"
        wait_until(lambda: len(rds.keys(f"{prefix}:cache:*")) >= 4, "4 Redis keys", timeout=10)
        assert len(rds.keys(f"{prefix}:cache:*")) == 4
        assert cli("--model", "other", "--version", "1") == (
            "cleared 2 in-process entries and 2 Redis keys\n"
        )
        assert len(rds.keys(f"{prefix}:cache:fake@1:*")) == 2
        assert cli() == "cleared 2 in-process entries and 2 Redis keys\n"
        assert rds.keys(f"{prefix}:cache:*") == []
        r = httpx.post(f"{server.url}/embed", json={"texts": ["a"], "model": "fake"}, timeout=30)
        assert r.headers["x-embedhost-cache"] == "miss"
    finally:
        rds.close()
        stop_server(server)

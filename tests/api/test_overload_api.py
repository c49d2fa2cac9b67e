"""Overload through the real app: a full queue is refused before the body is read, with
Retry-After from the drain estimate and OpenAI's error shape."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fakes import CRASH, SLOW
from tests.support.app import app_client, fake_model, make_settings, wait_ready
from tests.support.wait import wait_until_async


async def _until(cond: Any, what: str) -> None:
    await wait_until_async(cond, what, timeout=30, every=0.01)


def _post_slow(client: Any) -> asyncio.Future[Any]:
    return asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [101, SLOW, 102]}))


async def _fill_queue(app: Any, client: Any) -> list[asyncio.Future[Any]]:
    """One slow batch in the engine, then two requests waiting: the queue (2) is full."""
    batcher = app.state.context.registry.default.replicas[0].batcher
    first = _post_slow(client)
    await _until(lambda: batcher.in_flight == 1, "the first request is in the engine")
    rest = [_post_slow(client) for _ in range(2)]
    await _until(lambda: batcher.queued == 2, "two requests are queued")
    return [first, *rest]


SETTINGS = {
    "engine_options": {"slow_s": 2.0},
    "batching": {"max_queue_items": 2, "max_batch_size": 1, "pipeline_depth": 1},
    # The identical slow requests must each queue: the vector cache would join them.
    "cache": False,
}


async def test_full_queue_is_refused_before_the_body_is_read() -> None:
    settings = make_settings([fake_model("f", **SETTINGS)])
    async with app_client(settings) as (app, client):
        tasks = await _fill_queue(app, client)

        reads = 0
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b'{"input": "x"}', "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/embeddings",
            "raw_path": b"/v1/embeddings",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"application/json"), (b"host", b"testserver")],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
            "state": {},
            "app": app,
        }
        await app(scope, receive, send)
        assert reads == 0, "the body was read before refusing"
        start = next(m for m in sent if m["type"] == "http.response.start")
        assert start["status"] == 429
        headers = dict(start["headers"])
        assert int(headers[b"retry-after"]) >= 1

        # The same refusal through an HTTP client: OpenAI's shape, on both routes.
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/embed", {"text": "x"})):
            r = await client.post(path, json=body)
            assert r.status_code == 429, r.text
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert r.json()["error"]["code"] == "queue_full"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.headers["x-request-id"]

        metrics = (await client.get("/metrics")).text
        assert 'code="queue_full"' in metrics

        # Probes and other routes are not gated.
        assert (await client.get("/health")).status_code == 200
        done = await asyncio.gather(*tasks)
        assert [d.status_code for d in done] == [200, 200, 200]
        # Drained: admitted again.
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 200


async def test_retry_after_follows_the_measured_drain_time() -> None:
    settings = make_settings([fake_model("f", **SETTINGS)])
    async with app_client(settings) as (app, client):
        batcher = app.state.context.registry.default.replicas[0].batcher
        tasks = await _fill_queue(app, client)
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 429
        # What the batcher estimates now (the rate is measured from the batches so far).
        expected = batcher.retry_after()
        assert abs(int(r.headers["retry-after"]) - expected) <= 1
        await asyncio.gather(*tasks)


async def test_no_model_ready_is_refused_before_the_body_is_read() -> None:
    # A restart that waits 2 s (backoff) before it even spawns the new worker.
    settings = make_settings([fake_model("f")], worker={"restart_backoff_initial_s": 2.0})
    async with app_client(settings) as (app, client):
        worker = app.state.context.registry.default.replicas[0].worker
        r = await client.post("/v1/embeddings", json={"input": [101, CRASH, 102]})
        assert r.status_code == 503
        assert worker.state.value == "restarting"
        # Not even JSON: parsed, it would be a 422. Refused before the body is read: 503.
        r = await client.post("/embed", content=b"not even json")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "model_not_ready"
        assert r.headers["retry-after"] == "2"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        await wait_ready(client)
        assert (await client.post("/embed", json={"text": "back"})).status_code == 200

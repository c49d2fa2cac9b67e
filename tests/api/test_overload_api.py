"""Overload through the real app: a full queue is refused before the body is read, with
Retry-After from the drain estimate and OpenAI's error shape."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from tests.fakes import CRASH, GATE
from tests.support.app import app_client, fake_model, make_settings, wait_ready
from tests.support.wait import wait_until_async


async def _until(cond: Any, what: str) -> None:
    await wait_until_async(cond, what, timeout=30, every=0.01)


def _post_gated(client: Any) -> asyncio.Future[Any]:
    return asyncio.ensure_future(client.post("/v1/embeddings", json={"input": [101, GATE, 102]}))


async def _fill_queue(app: Any, client: Any) -> list[asyncio.Future[Any]]:
    """One batch held in the engine (until the gate opens), then two requests waiting: the
    queue (2) is full for as long as the test needs, however busy the machine."""
    batcher = app.state.context.registry.default.replicas[0].batcher
    first = _post_gated(client)
    await _until(lambda: batcher.in_flight == 1, "the first request is in the engine")
    rest = [_post_gated(client) for _ in range(2)]
    await _until(lambda: batcher.queued == 2, "two requests are queued")
    return [first, *rest]


def _settings(gate: Path, **kw: Any) -> dict[str, Any]:
    return {
        "engine_options": {"gate": str(gate)},
        "batching": {"max_queue_items": 2, "max_batch_size": 1, "pipeline_depth": 1},
        # The identical gated requests must each queue: the vector cache would join them.
        "cache": False,
        **kw,
    }


async def test_full_queue_is_refused_before_the_body_is_read(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    settings = make_settings([fake_model("f", **_settings(gate))])
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
        gate.touch()
        done = await asyncio.gather(*tasks)
        assert [d.status_code for d in done] == [200, 200, 200]
        # Drained: admitted again.
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 200


# Every batch takes at least 0.5 s, so the measured rate is at most 2 sequences/s; the
# configured constant (worker.retry_after_s) is 30, far from any drain estimate here.
_MEASURED = {"delay_s": 0.5}
_CONSTANT = {"retry_after_s": 30}


async def _measure(client: Any, batcher: Any) -> None:
    """Two batches through the engine, so that its throughput has been measured."""
    for i in range(2):
        assert (await client.post("/v1/embeddings", json={"input": [101, 7 + i]})).is_success
    assert 0 < batcher.rate <= 2.0


async def test_retry_after_follows_the_measured_drain_time(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    options = {"gate": str(gate), **_MEASURED}
    settings = make_settings(
        [fake_model("f", **_settings(gate, engine_options=options))], worker=_CONSTANT
    )
    async with app_client(settings) as (app, client):
        batcher = app.state.context.registry.default.replicas[0].batcher
        await _measure(client, batcher)
        tasks = await _fill_queue(app, client)
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 429
        # Three sequences ahead (one in the engine, two queued) at <= 2/s: at least 1.5 s,
        # so at least 2 once rounded up; not the constant, and what the batcher says.
        retry_after = int(r.headers["retry-after"])
        assert 2 <= retry_after < 30
        assert abs(retry_after - math.ceil(batcher.retry_after())) <= 1
        gate.touch()
        await asyncio.gather(*tasks)


async def test_concurrency_limit_503_sends_the_drain_estimate(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    options = {"gate": str(gate), **_MEASURED}
    settings = make_settings(
        [fake_model("f", **_settings(gate, engine_options=options))],
        worker=_CONSTANT,
        limits={"max_concurrent_requests": 1},
    )
    async with app_client(settings) as (app, client):
        batcher = app.state.context.registry.default.replicas[0].batcher
        await _measure(client, batcher)
        held = _post_gated(client)  # holds the one slot until the gate opens
        await _until(lambda: batcher.in_flight == 1, "the first request is in the engine")
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "server_overloaded"
        retry_after = int(r.headers["retry-after"])
        assert retry_after < 30, "the constant, not the drain estimate"
        assert abs(retry_after - math.ceil(batcher.retry_after())) <= 1
        gate.touch()
        assert (await held).status_code == 200


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

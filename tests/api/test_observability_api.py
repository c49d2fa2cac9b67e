"""Metrics, request ids, timing headers and fault recovery, on the real app in-process
(fake engine in real worker processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from embedhost.security.keys import new_key_entry
from tests.fakes import HANG, RAISE
from tests.support.app import app_client, fake_model, make_settings
from tests.support.prom import Samples, parse, value
from tests.support.wait import wait_until_async


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


@pytest_asyncio.fixture(scope="module")
async def obs_client() -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [
            fake_model("fake", max_input_tokens=16),
            # One request per batch, so that a failing batch holds one request only.
            fake_model("single", batching={"max_batch_size": 1, "max_wait_ms": 0}),
            fake_model(
                "wedge", batching={"max_batch_size": 1, "max_wait_ms": 0, "batch_timeout_s": 1.0}
            ),
        ],
        limits={"max_body_bytes": 4096},
    )
    async with app_client(settings) as (_, client):
        yield client


async def test_request_id_is_echoed_or_generated(obs_client: httpx.AsyncClient) -> None:
    r = await obs_client.get("/health", headers={"X-Request-Id": "req-42.abc:def"})
    assert r.headers["x-request-id"] == "req-42.abc:def"
    for bad in ("has spaces", "x" * 129, "<script>", ""):
        r = await obs_client.get("/health", headers={"X-Request-Id": bad})
        rid = r.headers["x-request-id"]
        assert rid != bad
        assert len(rid) == 32
        int(rid, 16)
    generated = {(await obs_client.get("/health")).headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3


async def test_request_id_on_every_response(obs_client: httpx.AsyncClient) -> None:
    cases = [
        await obs_client.get("/no/such/route"),
        await obs_client.post("/v1/embeddings", content=b"{not json"),
        await obs_client.post("/v1/embeddings", json={"input": "x", "model": "nope"}),
        await obs_client.post("/v1/embeddings", json={"input": "x" * 5000}),  # body limit 413
        await obs_client.post("/v1/embeddings", json={"input": "ok", "model": "fake"}),
    ]
    assert [r.status_code for r in cases] == [404, 422, 404, 413, 200]
    for r in cases:
        assert len(r.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": ["one two", "three"], "model": "fake"}),
        ("/embed", {"texts": ["one two", "three"], "model": "fake"}),
    ],
)
async def test_timing_headers(obs_client: httpx.AsyncClient, path: str, body: dict) -> None:
    r = await obs_client.post(path, json=body)
    assert r.status_code == 200
    tok, queue, infer, total = (
        float(r.headers[f"x-{h}-time-ms"]) for h in ("tokenization", "queue", "inference", "total")
    )
    assert min(tok, queue, infer) >= 0
    # The parts are measured inside the total, on the same clock.
    assert tok + queue + infer <= total


async def test_metrics_move_with_requests(obs_client: httpx.AsyncClient) -> None:
    before = await scrape(obs_client)
    texts = ["hello world", "a b c", "embeddings"]
    tokens = 0
    # Past the embedding cache, so that every input reaches the batcher.
    fresh = {"Cache-Control": "no-cache"}
    for t in texts:
        r = await obs_client.post(
            "/v1/embeddings", json={"input": t, "model": "fake"}, headers=fresh
        )
        assert r.status_code == 200
        tokens += r.json()["usage"]["prompt_tokens"]
    r = await obs_client.post("/embed", json={"texts": texts, "model": "fake"}, headers=fresh)
    assert r.status_code == 200
    tokens += r.json()["usage"]["prompt_tokens"]
    assert (
        await obs_client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
    ).status_code == 404
    assert (await obs_client.post("/v1/embeddings", json={"input": ""})).status_code == 400
    after = await scrape(obs_client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": "/v1/embeddings", "method": "POST", "status": "200", "model": "fake"}
    assert delta("embedhost_requests_total", **ok, key_id="anonymous") == 3
    assert (
        delta(
            "embedhost_requests_total",
            route="/embed",
            method="POST",
            status="200",
            model="fake",
            key_id="anonymous",
        )
        == 1
    )
    # An unknown model is not a label value: a client cannot create series at will.
    assert (
        delta(
            "embedhost_requests_total",
            route="/v1/embeddings",
            method="POST",
            status="404",
            model="",
            key_id="anonymous",
        )
        == 1
    )
    assert delta("embedhost_errors_total", code="model_not_found", model="") == 1
    assert delta("embedhost_errors_total", code="invalid_request", model="fake") == 1
    assert delta("embedhost_input_texts_total", model="fake", key_id="anonymous") == 6
    assert delta("embedhost_input_tokens_total", model="fake", key_id="anonymous") == tokens
    assert (
        delta("embedhost_request_duration_seconds_count", route="/v1/embeddings", model="fake") == 4
    )
    assert delta("embedhost_queue_wait_seconds_count", model="fake") == 4
    assert delta("embedhost_tokenization_duration_seconds_count", model="fake") == 4
    # 3 single-text requests and one of 3 texts: 6 sequences in at least 4 batches.
    assert delta("embedhost_batch_size_sequences_sum", model="fake", version="1") == 6
    batches = delta("embedhost_batch_size_sequences_count", model="fake", version="1")
    assert 4 <= batches <= 6
    assert delta("embedhost_inference_duration_seconds_count", model="fake", version="1") == batches
    assert delta("embedhost_batch_tokens_count", model="fake", version="1") == batches
    # The histogram's buckets span 1 ms .. 30 s.
    assert (
        "embedhost_request_duration_seconds_bucket",
        frozenset({"route": "/v1/embeddings", "model": "fake", "le": "0.001"}.items()),
    ) in after
    assert (
        "embedhost_request_duration_seconds_bucket",
        frozenset({"route": "/v1/embeddings", "model": "fake", "le": "30.0"}.items()),
    ) in after
    assert (
        value(after, "embedhost_queue_depth_sequences", model="fake", version="1", replica="0") == 0
    )
    assert (
        value(after, "embedhost_queue_capacity_sequences", model="fake", version="1", replica="0")
        == 4096
    )
    assert value(after, "embedhost_requests_in_flight") == 1  # the scrape itself
    assert value(after, "embedhost_ready") == 1
    assert value(after, "embedhost_worker_up", model="fake", version="1", replica="0") == 1
    assert (
        value(
            after, "embedhost_worker_resident_memory_bytes", model="fake", version="1", replica="0"
        )
        > 0
    )
    assert value(after, "embedhost_model_load_seconds", model="fake", version="1", replica="0") > 0
    info = [k for k in after if k[0] == "embedhost_model_info" and ("model", "fake") in k[1]]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert labels["dimensions"] == "32"
    assert labels["version"] == "1"
    assert labels["engine"] == "plugin:tests.fakes:FakeEngine"
    build = [k for k in after if k[0] == "embedhost_build_info"]
    assert dict(build[0][1])["version"]


async def test_openmetrics_negotiation(obs_client: httpx.AsyncClient) -> None:
    r = await obs_client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    assert "# TYPE embedhost_model info" in r.text


async def test_batch_that_raises_fails_alone(obs_client: httpx.AsyncClient) -> None:
    info = (await obs_client.get("/info")).json()
    pid = next(m for m in info["models"] if m["name"] == "single")["replicas"][0]["pid"]
    before = await scrape(obs_client)

    async def good(i: int) -> httpx.Response:
        return await obs_client.post(
            "/v1/embeddings", json={"input": f"text {i}", "model": "single"}
        )

    bad = obs_client.post("/v1/embeddings", json={"input": [101, RAISE, 102], "model": "single"})
    results = await asyncio.gather(good(0), bad, good(1), good(2))
    statuses = [r.status_code for r in results]
    assert statuses == [200, 500, 200, 200]
    err = results[1].json()["error"]
    assert err["code"] == "engine_error"
    assert "RuntimeError" not in results[1].text
    assert "fake engine failure" not in results[1].text
    # The next batch runs on the same worker: nothing was restarted.
    assert (await good(3)).status_code == 200
    info = (await obs_client.get("/info")).json()
    replica = next(m for m in info["models"] if m["name"] == "single")["replicas"][0]
    assert replica["pid"] == pid
    assert replica["restarts"] == 0
    after = await scrape(obs_client)
    assert (
        value(after, "embedhost_errors_total", code="engine_error", model="single")
        - value(before, "embedhost_errors_total", code="engine_error", model="single")
        == 1
    )


async def test_wedged_worker_is_killed_and_replaced(obs_client: httpx.AsyncClient) -> None:
    def wedge_replica(info: dict) -> dict:
        return next(m for m in info["models"] if m["name"] == "wedge")["replicas"][0]

    old_pid = wedge_replica((await obs_client.get("/info")).json())["pid"]
    hung = obs_client.post("/v1/embeddings", json={"input": [101, HANG, 102], "model": "wedge"})
    behind = obs_client.post("/v1/embeddings", json={"input": "queued behind", "model": "wedge"})
    r_hung, r_behind = await asyncio.gather(hung, behind)
    assert r_hung.status_code == 504
    assert r_hung.json()["error"]["code"] == "worker_timeout"
    assert "retry-after" in r_hung.headers
    # The request behind the wedged batch is answered too, never left hanging: 504 when it
    # was already in the wedged worker's pipe, 503 when the kill took it down, 200 when it
    # ran on the replacement.
    assert r_behind.status_code in (200, 503, 504)
    # The kill is noticed when the pipe closes; then the replacement loads.

    async def replaced() -> dict | None:  # type: ignore[type-arg]
        replica = wedge_replica((await obs_client.get("/info")).json())
        return replica if replica["state"] == "ready" and replica["pid"] != old_pid else None

    replica = await wait_until_async(replaced, "the replacement worker", timeout=60, every=0.1)
    assert replica["state"] == "ready"
    assert replica["pid"] != old_pid
    assert replica["restarts"] == 1
    r = await obs_client.post("/v1/embeddings", json={"input": "after", "model": "wedge"})
    assert r.status_code == 200
    samples = await scrape(obs_client)
    assert value(samples, "embedhost_worker_restarts_total", model="wedge", version="1") == 1
    timeouts = 1 + (r_behind.status_code == 504)
    assert (
        value(samples, "embedhost_errors_total", code="worker_timeout", model="wedge") == timeouts
    )
    assert value(samples, "embedhost_worker_up", model="wedge", version="1", replica="0") == 1


async def test_metrics_disabled() -> None:
    settings = make_settings([fake_model("fake")], metrics={"enabled": False})
    async with app_client(settings) as (app, client):
        assert (await client.get("/metrics")).status_code == 404
        r = await client.post("/v1/embeddings", json={"input": "still works"})
        assert r.status_code == 200
        assert "x-request-id" in r.headers
        assert app.state.context.metrics is None


async def test_metrics_scope_key_labels_and_rate_limited_counter() -> None:
    """With API keys: /metrics needs the metrics scope; counters carry the key's id (never
    the key); a key over its budget is counted as rate limited under its own id."""
    prom, prom_entry = new_key_entry("prom", ["metrics"])
    team, team_entry = new_key_entry("team-a", ["embed"])
    settings = make_settings(
        [fake_model("fake")],
        auth={
            "keys": [
                prom_entry.model_dump(),
                {**team_entry.model_dump(), "rate_limits": {"requests_per_minute": 2}},
            ]
        },
    )
    async with app_client(settings) as (_, client):
        assert (await client.get("/metrics")).status_code == 401
        team_auth = {"Authorization": f"Bearer {team}"}
        assert (await client.get("/metrics", headers=team_auth)).status_code == 403
        statuses = [
            (
                await client.post("/v1/embeddings", json={"input": "hi"}, headers=team_auth)
            ).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {prom}"})
        assert r.status_code == 200
        assert team not in r.text and prom not in r.text
        samples = parse(r.text)
    embed = {"route": "/v1/embeddings", "method": "POST", "key_id": "team-a"}
    assert value(samples, "embedhost_requests_total", **embed, status="200", model="fake") == 2
    # Refused by the key's budget before the model was resolved.
    assert value(samples, "embedhost_requests_total", **embed, status="429", model="") == 1
    assert (
        value(
            samples,
            "embedhost_rate_limited_requests_total",
            key_id="team-a",
            limit="key-requests",
        )
        == 1
    )
    assert value(samples, "embedhost_errors_total", code="rate_limit_exceeded", model="") == 1
    assert value(samples, "embedhost_input_tokens_total", model="fake", key_id="team-a") == 6
    assert value(samples, "embedhost_overloaded_requests_total") == 0
    assert value(samples, "embedhost_rate_limit_storage_errors_total") == 0


async def test_unhandled_error_is_a_generic_500_with_request_id() -> None:
    settings = make_settings([fake_model("fake")])
    async with app_client(settings) as (app, client):

        async def broken() -> None:
            raise RuntimeError("internal detail /etc/secret-path")

        app.add_api_route("/t/broken", broken, methods=["GET"])
        r = await client.get("/t/broken", headers={"X-Request-Id": "boom-1"})
        assert r.status_code == 500
        assert r.headers["x-request-id"] == "boom-1"
        assert r.json()["error"]["code"] == "internal_error"
        assert "secret-path" not in r.text
        assert "RuntimeError" not in r.text
        samples = await scrape(client)
        assert value(samples, "embedhost_errors_total", code="internal_error", model="") == 1
        # The server goes on serving.
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200


async def test_request_line_fields_and_input_texts_only_when_asked(
    obs_client: httpx.AsyncClient,
) -> None:
    text = "private words 123"
    with capture_logs() as logs:
        r = await obs_client.post("/embed", json={"text": text, "model": "fake"})
    assert r.status_code == 200
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["route"] == "/embed"
    assert line["status"] == 200
    assert line["model"] == "fake"
    assert line["key_id"] == "anonymous"
    assert line["inputs"] == 1
    assert line["input_chars"] == len(text)
    assert line["tokens"] == r.json()["usage"]["prompt_tokens"]
    assert text not in repr(logs)

    settings = make_settings([fake_model("fake")], logs={"log_inputs": True})
    async with app_client(settings) as (_, client):
        with capture_logs() as logs:
            r = await client.post("/embed", json={"text": text})
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["input_texts"] == [text]

"""OpenAI's Batch API through the official ``openai`` SDK, against the real app in-process
(the fake engine): the walk-through, bad lines, cancel, expiry, scopes and models, and the
priority header."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from embedhost.config import RateLimit
from embedhost.jobs.store import SqliteStore
from embedhost.security.keys import new_key_entry
from tests.fakes import GATE
from tests.support.app import app_client, fake_model, make_settings
from tests.support.wait import wait_until_async

FULL, FULL_E = new_key_entry("full", ["embed", "admin", "metrics"])
ONLY_OTHER, ONLY_OTHER_E = new_key_entry("only-other", ["embed"], ["other"])
PROM, PROM_E = new_key_entry("prom", ["metrics"])
SMALL, SMALL_E = new_key_entry("small", ["embed", "metrics"])
SMALL_E = SMALL_E.model_copy(update={"rate_limits": RateLimit(tokens_per_minute=40)})


def _settings(tmp_path: Path, gate: Path | None = None, **jobs: Any) -> Any:
    opts = {"gate": str(gate)} if gate else {}
    return make_settings(
        [fake_model(engine_options=opts)],
        auth={"keys": [e.model_dump() for e in (FULL_E, ONLY_OTHER_E, PROM_E, SMALL_E)]},
        jobs={"data_dir": str(tmp_path / "data"), **jobs},
    )


def _sdk(app: FastAPI, key: str) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=60)
    return openai.AsyncOpenAI(api_key=key, base_url="http://testserver/v1", http_client=http)


def _line(cid: str, body: dict[str, Any], url: str = "/v1/embeddings") -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


async def _finished(sdk: openai.AsyncOpenAI, batch_id: str, want: str = "completed") -> Any:
    async def done() -> bool:
        b = await sdk.batches.retrieve(batch_id)
        assert b.status not in ("failed",) or want == "failed", b
        return b.status == want

    await wait_until_async(done, f"batch {batch_id} to be {want}", timeout=120)
    return await sdk.batches.retrieve(batch_id)


async def _lines(sdk: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await sdk.files.content(file_id)
    return [json.loads(x) for x in content.text.splitlines()]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with app_client(_settings(tmp_path, chunk_lines=100)) as pair:
        yield pair


async def test_sdk_walk_through_of_1000_lines(
    served: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = served
    sdk = _sdk(app, FULL)
    bodies = []
    for i in range(1000):
        if i % 10 == 3:
            body: dict[str, Any] = {"input": [f"doc {i} a", f"doc {i} b"], "model": "fake"}
        elif i % 10 == 7:
            body = {"input": f"doc {i}", "encoding_format": "base64"}
        else:
            body = {"input": f"document number {i}", "model": "fake"}
        bodies.append(body)
    jsonl = "\n".join(_line(f"req-{i}", b) for i, b in enumerate(bodies)) + "\n"
    f = await sdk.files.create(file=("in.jsonl", jsonl.encode()), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(jsonl.encode())
    assert (await sdk.files.retrieve(f.id)).id == f.id
    batch = await sdk.batches.create(
        input_file_id=f.id,
        endpoint="/v1/embeddings",
        completion_window="24h",
        metadata={"job": "walk-through"},
    )
    assert batch.status == "validating" and batch.metadata == {"job": "walk-through"}
    done = await _finished(sdk, batch.id)
    counts = done.request_counts
    assert counts is not None
    assert (counts.total, counts.completed, counts.failed) == (1000, 1000, 0)
    assert done.error_file_id is None and done.completed_at is not None
    out = await _lines(sdk, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(1000)]
    # Every line's body equals what /v1/embeddings answers for the same request.
    for i in range(1000):
        r = await client.post("/v1/embeddings", json=bodies[i], headers={"X-API-Key": FULL})
        assert r.status_code == 200
        line = out[i]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["response"]["body"] == r.json(), i
    # The list: newest first, with a cursor.
    second = await sdk.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    page = await sdk.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    rest = await client.get(
        "/v1/batches", params={"after": second.id, "limit": 5}, headers={"X-API-Key": FULL}
    )
    body = rest.json()
    assert [b["id"] for b in body["data"]] == [batch.id]
    assert body["first_id"] == body["last_id"] == batch.id and body["has_more"] is False
    await _finished(sdk, second.id)
    listed = [x.id async for x in sdk.files.list(purpose="batch")]
    assert listed == [f.id]
    outputs = [x.id async for x in sdk.files.list()]
    assert len(outputs) == 3 and outputs[-1] == f.id  # two outputs, newest first
    deleted = await sdk.files.delete(f.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await sdk.files.retrieve(f.id)
    metrics = (await client.get("/metrics", headers={"X-API-Key": FULL})).text
    assert 'embedhost_batch_jobs{status="completed"} 2.0' in metrics
    assert 'embedhost_batch_lines_total{result="completed"} 2000.0' in metrics
    share = [x for x in metrics.splitlines() if x.startswith("embedhost_batch_lane_share{")]
    assert share and float(share[0].split()[-1]) > 0.5


async def test_bad_lines_go_to_the_error_file(served: tuple[FastAPI, httpx.AsyncClient]) -> None:
    app, _ = served
    sdk = _sdk(app, FULL)
    jsonl = "\n".join(
        [
            _line("good-1", {"input": "hello"}),
            "{not json",
            json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}),
            _line("wrong-url", {"input": "x"}, url="/v1/chat/completions"),
            _line("no-input", {"model": "fake"}),
            _line("no-model", {"input": "x", "model": "nope"}),
            _line("empty", {"input": ""}),
            _line("good-2", {"input": "world"}),
        ]
    )
    f = await sdk.files.create(file=("in.jsonl", jsonl.encode()), purpose="batch")
    b = await sdk.batches.create(
        input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    done = await _finished(sdk, b.id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 6)
    assert [o["custom_id"] for o in await _lines(sdk, done.output_file_id)] == ["good-1", "good-2"]
    errors = {e["custom_id"]: e for e in await _lines(sdk, done.error_file_id)}
    assert errors[None]["error"]["code"] in ("invalid_json", "missing_custom_id")
    assert errors["wrong-url"]["error"]["code"] == "invalid_url"
    assert "body.input" in errors["no-input"]["error"]["message"]
    assert errors["no-model"]["response"]["status_code"] == 404
    assert errors["no-model"]["response"]["body"]["error"]["param"] == "model"
    assert errors["empty"]["response"]["status_code"] == 400


async def test_file_and_batch_refusals(tmp_path: Path) -> None:
    async with app_client(_settings(tmp_path, max_requests=2)) as (app, _):
        sdk = _sdk(app, FULL)
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
        jsonl = "\n".join(_line(f"r{i}", {"input": f"t{i}"}) for i in range(3))
        f = await sdk.files.create(file=("in.jsonl", jsonl.encode()), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="completion_window"):
            await sdk.batches.create(
                input_file_id=f.id, endpoint="/v1/embeddings", completion_window="1h"
            )
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            await sdk.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        failed = await _finished(sdk, b.id, "failed")
        assert failed.errors is not None and failed.errors.data
        assert failed.errors.data[0].code == "too_many_requests"
        # Another key sees none of it.
        other = _sdk(app, ONLY_OTHER)
        with pytest.raises(openai.NotFoundError):
            await other.batches.retrieve(b.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.content(f.id)


async def test_a_key_without_the_scope_or_the_model(tmp_path: Path) -> None:
    async with app_client(_settings(tmp_path)) as (app, _):
        with pytest.raises(openai.PermissionDeniedError):
            await _sdk(app, PROM).files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
        with pytest.raises(openai.PermissionDeniedError):
            await _sdk(app, PROM).batches.list()
        # A key limited to other models: each line is refused as /v1/embeddings would.
        sdk = _sdk(app, ONLY_OTHER)
        f = await sdk.files.create(
            file=("in.jsonl", _line("r", {"input": "x"}).encode()), purpose="batch"
        )
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        done = await _finished(sdk, b.id)
        err = (await _lines(sdk, done.error_file_id))[0]
        assert err["custom_id"] == "r" and err["response"]["status_code"] == 403


def _gated_file(n: int) -> bytes:
    # The first line holds the (fake) engine until the test opens the gate.
    first = _line("gated", {"input": [GATE, 5, 6]})
    return "\n".join([first, *(_line(f"r{i}", {"input": f"t{i}"}) for i in range(n))]).encode()


async def test_cancel_keeps_what_was_finished(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with app_client(_settings(tmp_path, gate, chunk_lines=1)) as (app, _):
        sdk = _sdk(app, FULL)
        f = await sdk.files.create(file=("in.jsonl", _gated_file(20)), purpose="batch")
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )

        async def running() -> bool:
            return (await sdk.batches.retrieve(b.id)).status == "in_progress"

        await wait_until_async(running, "the batch to run", timeout=60)
        cancelling = await sdk.batches.cancel(b.id)
        assert cancelling.status == "cancelling"
        gate.touch()
        done = await _finished(sdk, b.id, "cancelled")
        assert done.request_counts is not None and done.request_counts.completed == 1
        assert [o["custom_id"] for o in await _lines(sdk, done.output_file_id)] == ["gated"]
        with pytest.raises(openai.BadRequestError):
            await sdk.batches.cancel(b.id)


async def test_expiry_keeps_what_was_finished(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with app_client(_settings(tmp_path, gate, chunk_lines=1, completion_window_s=5)) as (
        app,
        _,
    ):
        sdk = _sdk(app, FULL)
        f = await sdk.files.create(file=("in.jsonl", _gated_file(5)), purpose="batch")
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )

        async def running() -> bool:
            return (await sdk.batches.retrieve(b.id)).status == "in_progress"

        # The job starts (its gated first line in the engine: a window of 5 s leaves a busy
        # machine time to get there), cannot finish while the gate holds it: wait past its
        # expiry, then open it.
        await wait_until_async(running, "the batch to run", timeout=60)
        await wait_until_async(lambda: time.time() > b.expires_at, "the expiry", timeout=30)
        gate.touch()
        done = await _finished(sdk, b.id, "expired")
        assert done.expired_at is not None
        assert done.request_counts is not None and done.request_counts.completed == 1


async def test_priority_header_and_key_default(tmp_path: Path) -> None:
    async with app_client(_settings(tmp_path)) as (_, client):
        h = {"X-API-Key": FULL}
        r = await client.post(
            "/v1/embeddings", json={"input": "x"}, headers={**h, "X-Embedhost-Priority": "batch"}
        )
        assert r.status_code == 200
        r = await client.post("/v1/embeddings", json={"input": "y"}, headers=h)
        assert r.status_code == 200
        r = await client.post(
            "/v1/embeddings", json={"input": "x"}, headers={**h, "X-Embedhost-Priority": "urgent"}
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "X-Embedhost-Priority"
        metrics = (await client.get("/metrics", headers=h)).text
        share = [x for x in metrics.splitlines() if x.startswith("embedhost_batch_lane_share{")]
        assert float(share[0].split()[-1]) == pytest.approx(0.5)


async def test_over_its_token_budget_a_job_pauses_and_fails_nothing(tmp_path: Path) -> None:
    async with app_client(_settings(tmp_path, chunk_lines=4)) as (app, client):
        sdk = _sdk(app, SMALL)
        jsonl = "\n".join(_line(f"r{i}", {"input": f"text {i}"}) for i in range(40))
        f = await sdk.files.create(file=("in.jsonl", jsonl.encode()), purpose="batch")
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )

        async def paused() -> bool:
            m = (await client.get("/metrics", headers={"X-API-Key": SMALL})).text
            return "embedhost_batch_lines_waiting 0.0" not in m

        await wait_until_async(paused, "the job to pause on its token budget", timeout=60)
        now = await sdk.batches.retrieve(b.id)
        assert now.status == "in_progress" and now.request_counts is not None
        assert now.request_counts.failed == 0 and now.request_counts.completed < 40
        await sdk.batches.cancel(b.id)
        done = await _finished(sdk, b.id, "cancelled")
        assert done.request_counts is not None and done.request_counts.failed == 0
        assert done.error_file_id is None


async def test_uploads_have_their_own_size_limit(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_file_bytes=8192)
    settings.limits.max_body_bytes = 2048
    async with app_client(settings) as (app, _):
        sdk = _sdk(app, FULL)
        line = _line("r", {"input": "x" * 50}) + "\n"
        ok = line * (5000 // len(line))
        f = await sdk.files.create(file=("in.jsonl", ok.encode()), purpose="batch")
        assert f.bytes == len(ok)
        with pytest.raises(openai.APIStatusError) as err:
            await sdk.files.create(file=("in.jsonl", (ok * 2).encode()), purpose="batch")
        assert err.value.status_code == 413


async def test_reads_never_create_the_data_directory(tmp_path: Path) -> None:
    async with app_client(_settings(tmp_path)) as (_, client):
        h = {"X-API-Key": FULL}
        listed = (await client.get("/v1/batches", headers=h)).json()
        assert listed == {
            "object": "list",
            "data": [],
            "first_id": None,
            "last_id": None,
            "has_more": False,
        }
        assert (await client.get("/v1/batches/batch_x", headers=h)).status_code == 404
        assert (await client.get("/v1/files/file_x/content", headers=h)).status_code == 404
        assert not (tmp_path / "data").exists()


def _lines_done(metrics: str) -> float:
    (line,) = [
        x
        for x in metrics.splitlines()
        if x.startswith('embedhost_batch_lines_total{result="completed"}')
    ]
    return float(line.split()[-1])


async def test_one_process_runs_a_data_directory(tmp_path: Path) -> None:
    """Two apps on one data directory: the runner lock's holder runs every job, whichever
    app took it; once it is gone, the other takes over."""
    h = {"X-API-Key": FULL}
    a = app_client(_settings(tmp_path))
    app_a, client_a = await a.__aenter__()
    try:
        sdk_a = _sdk(app_a, FULL)
        f = await sdk_a.files.create(
            file=("in.jsonl", _line("r", {"input": "x"}).encode()), purpose="batch"
        )
        make = {"input_file_id": f.id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
        await _finished(sdk_a, (await sdk_a.batches.create(**make)).id)
        async with app_client(_settings(tmp_path)) as (app_b, client_b):
            sdk_b = _sdk(app_b, FULL)
            await _finished(sdk_b, (await sdk_b.batches.create(**make)).id)
            assert _lines_done((await client_a.get("/metrics", headers=h)).text) == 2
            assert _lines_done((await client_b.get("/metrics", headers=h)).text) == 0
            await a.__aexit__(None, None, None)  # A stops: its lock is freed
            a = None
            await _finished(sdk_b, (await sdk_b.batches.create(**make)).id)
            assert _lines_done((await client_b.get("/metrics", headers=h)).text) == 1
    finally:
        if a is not None:
            await a.__aexit__(None, None, None)


async def test_a_restart_while_finalizing_keeps_the_output(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    async with app_client(settings) as (app, _):
        sdk = _sdk(app, FULL)
        jsonl = "\n".join(_line(f"r{i}", {"input": f"t{i}"}) for i in range(5))
        f = await sdk.files.create(file=("in.jsonl", jsonl.encode()), purpose="batch")
        b = await sdk.batches.create(
            input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"
        )
        before = await _lines(sdk, (await _finished(sdk, b.id)).output_file_id)
    # The state a crash leaves between recording the output file and moving it in place.
    store = SqliteStore(tmp_path / "data")
    rec = store.get_batch(b.id, "full")
    assert rec.output_file_id is not None
    store.file_path(rec.output_file_id).rename(store.work_paths(b.id)[0])
    rec.status, rec.output_file_id, rec.completed_at = "finalizing", None, None
    assert store.save(rec)
    store.close()
    async with app_client(settings) as (app, _):
        sdk = _sdk(app, FULL)
        done = await _finished(sdk, b.id)
        assert await _lines(sdk, done.output_file_id) == before

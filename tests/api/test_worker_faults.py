"""Worker failures through the real app, on the fake engine's fault tokens: a crash answers
503 + Retry-After and the worker comes back; repeated crashes mark the model failed with
the reason; a failing load is reported, never retried forever; a full queue is a 429."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from embedhost import modelfiles
from tests.fakes import CRASH, GATE
from tests.support.app import app_client, fake_model, make_settings
from tests.support.wait import wait_until_async


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for ``condition``, with a deadline."""
    await wait_until_async(condition, timeout=timeout, every=0.01)


async def wait_status(client, name: str, status: str, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def]
    model: dict = {}  # type: ignore[type-arg]

    async def became() -> dict | None:  # type: ignore[type-arg]
        nonlocal model
        info = (await client.get("/info")).json()
        model = next(m for m in info["models"] if m["name"] == name)
        return model if model["status"] == status else None

    return await wait_until_async(
        became, lambda: f"{name} to become {status}: {model}", timeout=timeout
    )


async def test_segfault_answers_503_and_worker_restarts() -> None:
    settings = make_settings([fake_model("f", engine_options={"delay_s": 0.05})])
    async with app_client(settings) as (_, client):
        pid_before = (await client.get("/info")).json()["models"][0]["replicas"][0]["pid"]
        normal = [client.post("/v1/embeddings", json={"input": f"text {i}"}) for i in range(6)]
        crash = client.post("/v1/embeddings", json={"input": [101, CRASH, 102]})
        results = await asyncio.gather(crash, *normal)
        statuses = [r.status_code for r in results]
        assert results[0].status_code == 503
        assert set(statuses) <= {200, 503}
        for r in results:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "2"
                assert r.json()["error"]["code"] == "worker_crashed"
        model = await wait_status(client, "f", "ready")
        assert model["replicas"][0]["restarts"] == 1
        assert model["replicas"][0]["pid"] != pid_before
        ok = await client.post("/v1/embeddings", json={"input": "after"})
        assert ok.status_code == 200


async def test_repeated_crashes_mark_model_failed_with_reason() -> None:
    settings = make_settings(
        [fake_model("f")], worker={"max_restarts": 1, "restart_backoff_initial_s": 0.05}
    )
    async with app_client(settings) as (_, client):
        for _ in range(2):
            await wait_status(client, "f", "ready")
            r = await client.post("/v1/embeddings", json={"input": [101, CRASH, 102]})
            assert r.status_code == 503
        model = await wait_status(client, "f", "failed")
        assert "2 crashes" in model["reason"]
        assert "SIGSEGV" in model["reason"]
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["models"]["f"]["status"] == "failed"
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_not_ready"
        assert "failed" in r.json()["error"]["message"]


async def test_load_failure_is_reported_not_looped() -> None:
    settings = make_settings(
        [fake_model("f", engine_options={"fail_load": True})],
        worker={"max_restarts": 2, "restart_backoff_initial_s": 0.05},
    )
    async with app_client(settings, ready=False) as (_, client):
        model = await wait_status(client, "f", "failed")
        assert "fake load failure" in model["reason"]
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 503


async def test_missing_engine_library_fails_at_once() -> None:
    settings = make_settings([fake_model("f", engine="plugin:no_such_module:Engine")])
    async with app_client(settings, ready=False) as (_, client):
        model = await wait_status(client, "f", "failed")
        assert "no_such_module" in model["reason"]
        assert model["replicas"][0]["restarts"] == 0


async def test_requests_while_loading_get_503_with_retry_after(tmp_path: Path) -> None:
    gate = tmp_path / "loaded"
    settings = make_settings([fake_model("f", engine_options={"load_gate": str(gate)})])
    async with app_client(settings, ready=False) as (_, client):
        await wait_status(client, "f", "loading")
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "model_not_ready"
        assert (await client.get("/ready")).status_code == 503
        gate.touch()
        await wait_status(client, "f", "ready")
        assert (await client.post("/v1/embeddings", json={"input": "x"})).status_code == 200


async def test_full_queue_answers_429_fast(tmp_path: Path) -> None:
    """A request that fits on its own is refused at once while other requests fill the
    queue: answered while every request ahead of it is still waiting."""
    gate = tmp_path / "gate"
    settings = make_settings(
        [
            fake_model(
                "f",
                engine_options={"gate": str(gate)},
                batching={"max_queue_items": 4, "max_batch_size": 1, "max_wait_ms": 0},
                # Without the vector cache: its single-flight would send the identical
                # blocked requests to the engine once, and leave pipeline slots free.
                cache=False,
            )
        ]
    )
    async with app_client(settings) as (app, client):
        batcher = app.state.context.registry.route("f").replicas[0].batcher

        def post(inp: object) -> asyncio.Future[httpx.Response]:
            return asyncio.ensure_future(client.post("/v1/embeddings", json={"input": inp}))

        # Every pipeline slot holds a batch that waits at the gate ...
        blocked = [post([101, GATE, 102]) for _ in range(batcher._depth)]
        await until(lambda: batcher.in_flight == batcher._depth and batcher.queued == 0)
        # ... so these four single-input requests fill the queue (4 items) ...
        queued = [post(f"queued {i}") for i in range(4)]
        await until(lambda: batcher.queued == 4)
        # ... and one more, which would fit in an empty queue, is refused.
        r = await client.post("/v1/embeddings", json={"input": "one more"})
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("rate_limit_error", "queue_full")
        # Fast: refused without waiting for anything ahead of it.
        assert batcher.queued == 4
        assert not any(t.done() for t in blocked + queued)
        gate.touch()
        done = await asyncio.gather(*blocked, *queued)
        assert [d.status_code for d in done] == [200] * len(done)


async def test_worker_runs_in_its_own_process() -> None:
    settings = make_settings([fake_model("f")])
    async with app_client(settings) as (_, client):
        pid = (await client.get("/info")).json()["models"][0]["replicas"][0]["pid"]
        assert pid != os.getpid()


MINILM_SHA256 = "sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


async def test_restart_logs_its_phases_and_skips_the_rehash(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forget what earlier tests in this process hashed: this server's first start hashes.
    monkeypatch.setattr(modelfiles, "_HASHED", {})
    settings = make_settings([fake_model("f", checksum=MINILM_SHA256)])
    with caplog.at_level(logging.INFO, logger="embedhost.worker.supervisor"):
        async with app_client(settings) as (_, client):
            first = [r.getMessage() for r in caplog.records if " ready (pid" in r.getMessage()]
            assert len(first) == 1
            for phase in ("start ", "verifying ", "loading ", "warming "):
                assert phase in first[0], first[0]
            assert "hashed 1 file(s)" in first[0]  # the first start hashes the weights
            pid = (await client.get("/info")).json()["models"][0]["replicas"][0]["pid"]
            r = await client.post("/v1/embeddings", json={"input": [101, CRASH, 102]})
            assert r.status_code == 503
            model = await wait_status(client, "f", "ready")
            assert model["replicas"][0]["pid"] != pid
            lines = [r.getMessage() for r in caplog.records if " ready (pid" in r.getMessage()]
            assert len(lines) == 2
            for phase in ("start ", "verifying ", "loading ", "warming "):
                assert phase in lines[1], lines[1]
            assert "re-hash skipped" in lines[1]  # the file is unchanged since

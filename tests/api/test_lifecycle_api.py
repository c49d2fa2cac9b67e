"""Model versions in-process, on the fake engine: admin API, A/B splits, shadow, rollback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from embedhost.api.app import create_app
from embedhost.security.keys import new_key_entry
from tests.support import MINILM
from tests.support.app import app_client, fake_model, make_settings, wait_ready
from tests.support.wait import wait_until_async

ADMIN, ADMIN_E = new_key_entry("ops", ["embed", "admin"])
USERS = [new_key_entry(f"team-{i}", ["embed"]) for i in range(6)]


@pytest_asyncio.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [fake_model("m", version="1"), fake_model("m", version="2"), fake_model("other")],
        auth={"keys": [ADMIN_E, *(e for _, e in USERS)]},
    )
    async with app_client(settings) as (_, c):
        c.headers["Authorization"] = f"Bearer {ADMIN}"
        await _wait_state(c, "m", "2", "ready")
        yield c


async def _wait_state(
    c: httpx.AsyncClient, name: str, version: str, *states: str
) -> dict[str, Any]:
    r: httpx.Response | None = None

    async def reached() -> dict[str, Any] | None:
        nonlocal r
        r = await c.get(f"/admin/models/{name}/versions/{version}")
        if r.status_code == 200 and r.json()["status"] in states:
            body: dict[str, Any] = r.json()
            return body
        return None

    return await wait_until_async(
        reached, lambda: f"{name}@{version} to reach {states}: {r and r.text}", timeout=30
    )


async def _served_by(c: httpx.AsyncClient, **body: Any) -> str:
    r = await c.post("/v1/embeddings", json={"input": "hello", "model": "m", **body})
    assert r.status_code == 200, r.text
    return r.headers["x-embedhost-model"]


async def test_versions_listed_and_current_serves(client: httpx.AsyncClient) -> None:
    r = await client.get("/admin/models")
    assert r.status_code == 200
    m = next(g for g in r.json()["models"] if g["name"] == "m")
    assert m["current"] == "1"
    assert {v["version"]: v["status"] for v in m["versions"]} == {"1": "ready", "2": "ready"}
    assert await _served_by(client) == "m@1"
    assert await _served_by(client, model="m@2") == "m@2"
    models = (await client.get("/v1/models")).json()["data"]
    ids = {d["id"]: d["version"] for d in models}
    assert ids["m"] == "1"
    assert ids["m@2"] == "2"
    info = (await client.get("/info")).json()
    entry = next(x for x in info["models"] if x["name"] == "m")
    assert entry["version"] == "1"
    assert [v["version"] for v in entry["versions"]] == ["1", "2"]


async def test_split_90_10_within_bounds_and_sticky(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/models/m/split", json={"weights": {"1": 90, "2": 10}})
    assert r.status_code == 200, r.text
    n = 3000
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> str:
        async with sem:
            return await _served_by(client, user=f"user-{i}")

    served = await asyncio.gather(*(one(i) for i in range(n)))
    k = served.count("m@2")
    # Binomial(n, 0.1): within 4.5 standard deviations.
    sigma = math.sqrt(n * 0.1 * 0.9)
    assert abs(k - n * 0.1) < 4.5 * sigma, k
    assert set(served) == {"m@1", "m@2"}
    # Pinned: the placement is sha256 of (model, routing key), the same in every process
    # and on every machine (Python's salted hash would pass the checks below within one
    # process and still move callers between restarts). The ops key's users 0..59 that
    # the 90/10 split sends to version 2:
    assert [i for i in range(60) if served[i] == "m@2"] == [4, 6, 14, 15, 29, 32, 38, 39, 43, 55]
    # Sticky: the same user keeps its version; so does the same API key whatever `user` says.
    for i in range(0, 200, 7):
        again = {await _served_by(client, user=f"user-{i}") for _ in range(3)}
        assert again == {served[i]}
    # A key without `user` keeps one version; with `user`, each of its users keeps one.
    for key, _ in USERS:
        auth = {"Authorization": f"Bearer {key}"}
        seen = set()
        for _ in range(4):
            r = await client.post("/v1/embeddings", json={"input": "x", "model": "m"}, headers=auth)
            assert r.status_code == 200, r.text
            seen.add(r.headers["x-embedhost-model"])
        assert len(seen) == 1
        for j in range(3):
            body = {"input": "x", "model": "m", "user": f"u{j}"}
            tags = set()
            for _ in range(3):
                r = await client.post("/v1/embeddings", json=body, headers=auth)
                tags.add(r.headers["x-embedhost-model"])
            assert len(tags) == 1
    # A pinned version ignores the split.
    assert await _served_by(client, model="m@1", user="user-0") == "m@1"
    listed = (await client.get("/admin/models/m")).json()
    assert listed["traffic"] == {"1": 90, "2": 10}
    stats = {v["version"]: v["stats"] for v in listed["versions"]}
    assert stats["2"]["requests"] >= k
    assert stats["2"]["latency"]["count"] >= k
    r = await client.put("/admin/models/m/split", json={"weights": {}})
    assert r.status_code == 200
    assert await _served_by(client, user=f"user-{served.index('m@2')}") == "m@1"


async def test_admin_routes_need_the_admin_scope(client: httpx.AsyncClient) -> None:
    embed_only = {"Authorization": f"Bearer {USERS[0][0]}"}
    r = await client.get("/admin/models", headers=embed_only)
    assert r.status_code == 403
    r = await client.put("/admin/models/m/split", json={"weights": {}}, headers=embed_only)
    assert r.status_code == 403
    r = await client.get("/admin/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


async def test_split_errors(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/models/m/split", json={"weights": {"1": 50, "9": 50}})
    assert r.status_code == 404
    r = await client.put("/admin/models/m/split", json={"weights": {"1": 0, "2": 0}})
    assert r.status_code == 400
    r = await client.put("/admin/models/nope/split", json={"weights": {"1": 1}})
    assert r.status_code == 404


async def test_shadow_records_agreement_without_changing_answers(
    client: httpx.AsyncClient,
) -> None:
    before = await client.post("/v1/embeddings", json={"input": ["a b c", "d e"], "model": "m"})
    served_before = (await client.get("/admin/models/m/versions/2")).json()["stats"]["requests"]
    r = await client.put("/admin/models/m/shadow", json={"version": "2"})
    assert r.status_code == 200, r.text
    assert r.json()["shadow"] == {"version": "2", "sample_rate": 1.0}
    for _ in range(20):
        after = await client.post("/v1/embeddings", json={"input": ["a b c", "d e"], "model": "m"})
        assert after.headers["x-embedhost-model"] == "m@1"
        assert after.json()["data"] == before.json()["data"]

    async def shadowed() -> dict[str, Any] | None:
        v2 = (await client.get("/admin/models/m/versions/2")).json()["stats"]
        done = v2.get("shadow", {}).get("requests", 0) + v2.get("shadow", {}).get("dropped", 0)
        return v2 if done >= 20 else None

    v2 = await wait_until_async(shadowed, "20 shadowed requests", timeout=30, every=0.02)
    shadow = v2["shadow"]
    assert shadow["requests"] >= 1
    assert shadow["errors"] == 0
    # Same fake engine, same ids: the candidate agrees exactly.
    assert shadow["agreement"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert shadow["agreement"]["count"] == 2 * shadow["requests"]
    assert shadow["latency"]["count"] == shadow["requests"]
    # A shadow is not counted as having served anyone.
    assert v2["requests"] == served_before
    r = await client.put("/admin/models/m/shadow", json={"version": "1"})
    assert r.status_code == 409  # the current version cannot shadow itself
    r = await client.put("/admin/models/m/shadow", json={"version": None})
    assert r.json()["shadow"] is None


async def test_load_promote_rollback_unload(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/admin/models/m/versions",
        json={"version": "3", "engine": "plugin:tests.fakes:FakeEngine", "path": MINILM},
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] in ("loading", "warming", "ready")
    # Not ready yet or just ready: promoting only once ready.
    await _wait_state(client, "m", "3", "ready")
    r = await client.post("/admin/models/m/promote", json={"version": "3", "wait": True})
    assert r.status_code == 200, r.text
    assert r.json()["current"] == "3"
    assert await _served_by(client) == "m@3"
    old = (await client.get("/admin/models/m/versions/1")).json()
    assert old["status"] == "stopped"
    r = await client.post("/v1/embeddings", json={"input": "x", "model": "m@1"})
    assert r.status_code == 404
    # Rollback reloads the stopped version and promotes it once ready.
    r = await client.post("/admin/models/m/rollback", json={"wait": True})
    assert r.status_code == 200, r.text
    assert r.json()["current"] == "1"
    assert await _served_by(client) == "m@1"
    await _wait_state(client, "m", "3", "stopped")
    # The current version cannot be unloaded; another can, and a stopped one is forgotten.
    assert (await client.delete("/admin/models/m/versions/1")).status_code == 409
    assert (await client.delete("/admin/models/m/versions/3")).status_code == 200
    listed = (await client.get("/admin/models/m")).json()
    assert "3" not in [v["version"] for v in listed["versions"]]
    r = await client.delete("/admin/models/m/versions/2?wait=true")
    assert r.status_code == 200
    assert r.json()["status"] == "stopped"


async def test_load_errors(client: httpx.AsyncClient) -> None:
    base = {"engine": "plugin:tests.fakes:FakeEngine", "path": MINILM}
    r = await client.post("/admin/models/m/versions", json={**base, "version": "1"})
    assert r.status_code == 409  # already loaded
    r = await client.post(
        "/admin/models/m/versions", json={**base, "version": "x", "path": "/nope"}
    )
    assert r.status_code == 400
    assert "/nope" in r.json()["error"]["message"]
    r = await client.post(
        "/admin/models/m/versions",
        json={**base, "version": "y", "checksum": "sha256:" + "0" * 64, "wait": True},
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "model_load_failed"
    assert "expected sha256:" + "0" * 64 in err["message"]
    assert "actual sha256:" in err["message"]
    assert "model.safetensors" in err["message"]
    r = await client.post(
        "/admin/models/m/versions",
        json={**base, "version": "z", "engine_options": {"fail_load": True}, "wait": True},
    )
    assert r.status_code == 422
    assert "fake load failure" in r.json()["error"]["message"]
    r = await client.post("/admin/models/m/versions", json={**base, "version": "t", "traffic": 5})
    assert r.status_code == 400
    r = await client.post(
        "/admin/models/m/versions", json={**base, "version": "h", "path": "~no-such-user-x/m"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "path"
    r = await client.post("/admin/models/bad%20name/versions", json={**base, "version": "n"})
    assert r.status_code == 400
    r = await client.get("/admin/models/m/promote")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    r = await client.post("/admin/models/m/promote", json={"version": "y"})
    assert r.status_code == 409
    assert await _served_by(client) == "m@1"


async def test_plugin_engines_need_permission(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/admin/models/m/versions",
        json={"version": "p", "engine": "plugin:os:system", "path": MINILM},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "engine"
    assert "allow_plugin_engines" in r.json()["error"]["message"]


async def test_new_name_at_run_time_and_unload(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/admin/models/extra/versions",
        json={
            "version": "1",
            "engine": "plugin:tests.fakes:FakeEngine",
            "path": MINILM,
            "wait": True,
        },
    )
    assert r.status_code == 201, r.text
    ok = await client.post("/v1/embeddings", json={"input": "x", "model": "extra"})
    assert ok.headers["x-embedhost-model"] == "extra@1"
    r = await client.delete("/admin/models/extra/versions/1?wait=true")
    assert r.status_code == 200
    assert (await client.get("/admin/models/extra")).status_code == 404
    gone = await client.post("/v1/embeddings", json={"input": "x", "model": "extra"})
    assert gone.status_code == 404
    assert (await client.get("/ready")).status_code == 200


async def test_memory_guard_refuses() -> None:
    settings = make_settings([fake_model("m")], lifecycle={"memory_headroom_mb": 1 << 30})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            await wait_ready(c)
            r = await c.post(
                "/admin/models/m/versions",
                json={"version": "2", "engine": "plugin:tests.fakes:FakeEngine", "path": MINILM},
            )
            assert r.status_code == 507
            err = r.json()["error"]
            assert err["code"] == "insufficient_memory"
            assert "MiB" in err["message"]
            assert (await c.get("/admin/models/m")).json()["versions"][0]["status"] == "ready"
            assert len((await c.get("/admin/models/m")).json()["versions"]) == 1
            ok = await c.post("/v1/embeddings", json={"input": "x"})
            assert ok.status_code == 200


def test_router_bucket_is_stable() -> None:
    from embedhost.models.router import bucket, choose

    assert bucket("m", "user:a") == bucket("m", "user:a")
    assert choose("m", "user:a", {}) is None
    assert choose("m", "user:a", {"1": 1, "2": 0}) == "1"
    points = np.array([bucket("m", f"k{i}") for i in range(2000)])
    assert points.min() >= 0
    assert points.max() < 1

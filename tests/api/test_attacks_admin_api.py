"""Issue 20's holes in what keys may see and do: /info and /console/stats filtered by the
key, admin model loads only from the model roots (and never a 500), OPTIONS with an
honest Allow."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from embedhost.api.app import create_app
from embedhost.config import load_settings
from embedhost.security.keys import new_key_entry
from tests.support import MINILM
from tests.support.app import FAKE_ENGINE, app_client, fake_model, make_settings, wait_ready

ADMIN, ADMIN_E = new_key_entry("admin", ["embed", "admin"])
ONLY_A, ONLY_A_E = new_key_entry("only-a", ["embed"], ["a"])
EVERY, EVERY_E = new_key_entry("every", ["embed"])
PROM, PROM_E = new_key_entry("prom", ["embed", "metrics"])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [fake_model("a"), fake_model("b")],
        auth={"keys": [k.model_dump() for k in (ADMIN_E, ONLY_A_E, EVERY_E, PROM_E)]},
        cache={"scope": "per_key"},
    )
    async with app_client(settings) as (_, c):
        yield c


async def test_info_shows_only_what_the_key_may_use(client: httpx.AsyncClient) -> None:
    one = (await client.get("/info", headers=bearer(ONLY_A))).json()
    assert [m["name"] for m in one["models"]] == ["a"]
    assert one["default_model"] == "a"
    every = (await client.get("/info", headers=bearer(EVERY))).json()
    assert [m["name"] for m in every["models"]] == ["a", "b"]
    # Cache counters are every tenant's traffic: only for the metrics or admin scope.
    for info in (one, every):
        assert set(info["cache"]) == {"enabled", "scope", "charge_hits"}
    for key in (PROM, ADMIN):
        full = (await client.get("/info", headers=bearer(key))).json()
        assert "memory" in full["cache"] and "hits" in full["cache"]["memory"]
        assert [m["name"] for m in full["models"]] == ["a", "b"]


async def test_console_stats_need_metrics_or_admin(client: httpx.AsyncClient) -> None:
    for key in (ONLY_A, EVERY):
        s = (await client.get("/console/stats", headers=bearer(key))).json()
        assert s["metrics"] is False
        assert "requests" not in s and "cache" not in s
    for key in (PROM, ADMIN):
        s = (await client.get("/console/stats", headers=bearer(key))).json()
        assert s["metrics"] is True and "requests" in s


def _load(client: httpx.AsyncClient, version: str, **fields: Any) -> Any:
    body = {"version": version, "engine": FAKE_ENGINE, "path": MINILM, **fields}
    return client.post("/admin/models/a/versions", json=body, headers=bearer(ADMIN))


@pytest.mark.parametrize(
    "path",
    ["/etc/shadow", "/etc", "/nope/nothing", "/proc/self", "../../etc", "~root", "/tmp/\x00x"],
)
async def test_admin_loads_outside_the_roots_get_one_answer(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await _load(client, "x", path=path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "path"
    message = err["message"]
    assert "not under the model roots" in message
    # Nothing about what exists there.
    for word in ("exist", "directory;", "is not a", "file;"):
        assert word not in message


@pytest.mark.parametrize(
    "path", ["pkg:../../etc", "pkg:os.path", "pkg:", "pkg:/etc", "pkg:no_such_package_x"]
)
async def test_pkg_takes_package_names_only(client: httpx.AsyncClient, path: str) -> None:
    r = await _load(client, "p", path=path)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "path"


async def test_other_paths_a_load_names_are_checked_too(client: httpx.AsyncClient) -> None:
    r = await _load(client, "t", engine_options={"tokenizer": "/etc"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "engine_options.tokenizer"
    r = await _load(client, "m", checksum="manifest:/etc/passwd")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "checksum"


async def test_loads_under_the_roots_work(tmp_path: Path) -> None:
    # The default root: the config file's directory (a copy of the packaged model there).
    from embedhost.modelfiles import resolve_model_path

    model = tmp_path / "models" / "m2"
    model.mkdir(parents=True)
    src = resolve_model_path(MINILM)
    for f in ("tokenizer.json", "config.json"):
        (model / f).write_bytes((src / f).read_bytes())
    config = tmp_path / "embedhost.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [fake_model("a")],
                "auth": {"keys": [ADMIN_E.model_dump()]},
                "worker": {"restart_backoff_initial_s": 0.1},
            }
        )
    )
    settings = load_settings(config)
    app = create_app(settings, config_path=config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            await wait_ready(c)
            r = await _load(c, "2", path=str(model), wait=True)
            assert r.status_code == 201, r.text
            outside = await _load(c, "3", path=str(tmp_path.parent))
            assert outside.status_code == 400


async def test_options_answers_with_the_methods_the_path_takes() -> None:
    async with app_client(make_settings([fake_model("a")])) as (_, c):
        for path, allow in (
            ("/v1/embeddings", "POST"),
            ("/health", "GET"),
            ("/admin/models/a/versions/1", "DELETE, GET"),
            # Not the GET of /admin/models/{name:path}, which also matches the path.
            ("/admin/models/a/versions", "POST"),
            ("/admin/models/a/split", "PUT"),
            ("/admin/models/a", "GET"),
        ):
            r = await c.options(path)
            assert r.status_code == 405
            assert r.headers["allow"] == allow, path
            assert json.loads(r.text)["error"]["code"] == "method_not_allowed"

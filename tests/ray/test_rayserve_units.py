"""The Ray Serve glue without a cluster: settings -> deployment options, the Serve config
file, the proxy's error shaping, the replica health rule and the admin API's answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from starlette.types import Receive, Scope, Send

from embedhost.config import load_settings
from embedhost.errors import ConfigError
from embedhost.rayserve import (
    RayErrorShapeMiddleware,
    app_builder,
    deployment_options,
    unhealthy_reason,
)
from tests.support import ROOT
from tests.support.app import app_client, fake_model, make_settings


def test_deployment_options_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDHOST_RAY__MAX_REPLICAS", "5")
    s = load_settings(None, {"ray": {"target_ongoing_requests": 3}, "worker": {"retry_after_s": 4}})
    opts = deployment_options(s)
    auto = opts["autoscaling_config"]
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 5, 3)
    assert opts["max_ongoing_requests"] == s.ray.max_ongoing_requests
    assert opts["max_queued_requests"] == s.ray.max_queued_requests
    assert opts["backpressure_config"].status_code == 503
    assert opts["backpressure_config"].retry_after_s == 4
    assert opts["graceful_shutdown_timeout_s"] == s.server.graceful_shutdown_s


@pytest.mark.parametrize(
    ("ray", "needle"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "ray.max_replicas (2) is below ray.min_replicas"),
        ({"target_ongoing_requests": 40, "max_ongoing_requests": 8}, "never reach"),
        ({"max_queued_requests": 0}, "ray.max_queued_requests"),
    ],
)
def test_ray_settings_validated(ray: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"ray": ray})
    assert needle in info.value.message


def test_serve_config_file_is_valid_and_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "embedhost.rayserve:app_builder"
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({"ray": {"max_replicas": 3}}))
    monkeypatch.setenv("EMBEDHOST_CONFIG", str(cfg))
    built = app_builder(app.args)
    d = built._bound_deployment
    assert d.name == "embedhost"
    assert d._deployment_config.autoscaling_config.max_replicas == 3
    assert d.init_args == (str(cfg.resolve()), None)
    with pytest.raises(ConfigError, match="unknown embedhost args"):
        app_builder({"conifg": "x"})


def _ray_like(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), *(headers or [])],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def _get(app: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=RayErrorShapeMiddleware(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://ray") as c:
        return await c.post("/v1/embeddings", json={})


async def test_proxy_backpressure_becomes_openai_error() -> None:
    text = b"Request dropped due to backpressure (num_queued_requests=8, max_queued_requests=8)."
    r = await _get(_ray_like(503, text, [(b"retry-after", b"4")]))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "4"
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["code"] == "overloaded" and err["type"] == "server_error"
    assert set(err) == {"message", "type", "param", "code"}
    r = await _get(_ray_like(429, text))
    assert (r.status_code, r.json()["error"]["code"], r.headers["retry-after"]) == (
        429,
        "overloaded",
        "2",
    )


async def test_proxy_lost_replica_is_retryable() -> None:
    r = await _get(_ray_like(500, b"ray.exceptions.ActorDiedError: Traceback ... secrets"))
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "replica_lost"
    assert "Traceback" not in r.text

    async def raising(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("actor died")

    r = await _get(raising)
    assert r.status_code == 503 and r.json()["error"]["code"] == "replica_lost"

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return  # Ray's proxy on an ActorDiedError: no answer at all

    r = await _get(silent)
    assert r.status_code == 503 and r.json()["error"]["code"] == "replica_lost"


async def test_proxy_leaves_embedhost_answers_alone() -> None:
    body = orjson.dumps({"error": {"message": "m", "type": "t", "param": None, "code": "c"}})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", b"7")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    r = await _get(app)
    assert (r.status_code, r.content, r.headers["retry-after"]) == (503, body, "7")


async def test_health_rule_and_admin_answer_under_ray() -> None:
    settings = make_settings([fake_model()], auth={"enabled": False})
    async with app_client(settings) as (app, client):
        assert unhealthy_reason(app.state.context) is None
        app.state.context.orchestrator = "ray-serve"
        r = await client.post("/admin/reload")
        assert r.status_code == 409
        assert "redeploy" in r.json()["error"]["message"]
        assert (await client.get("/admin/models")).status_code == 200
        app.state.context.draining = True
        assert unhealthy_reason(app.state.context) == "draining"
        app.state.context.draining = False

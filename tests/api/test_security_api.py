"""Authentication, scopes, rate limits and size limits through the real app in-process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import structlog.testing
from fastapi import Depends, FastAPI, Request

from embedhost.api.app import create_app
from embedhost.api.deps import require_scope
from embedhost.api.record import record_of
from embedhost.security.keys import new_key_entry
from tests.fakes import GATE
from tests.support.app import app_client, fake_model, make_settings, wait_ready
from tests.support.wait import wait_until_async

FULL, FULL_E = new_key_entry("full", ["embed", "admin", "metrics"])
ONLY_FAKE, ONLY_FAKE_E = new_key_entry("only-fake", ["embed"], ["fake"])
METRICS, METRICS_E = new_key_entry("prom", ["metrics"])
REVOKED, REVOKED_E = new_key_entry("old", ["embed"])
LIMITED, LIMITED_E = new_key_entry("limited", ["embed"])
SECRET_TEXT = "the-secret-input-text-7d1f"


def _entries() -> list[dict[str, Any]]:
    return [
        FULL_E.model_dump(),
        ONLY_FAKE_E.model_dump(),
        METRICS_E.model_dump(),
        {**REVOKED_E.model_dump(), "revoked": True},
        {**LIMITED_E.model_dump(), "rate_limits": {"requests_per_minute": 3}},
    ]


def add_probe_routes(app: FastAPI) -> None:
    """Routes as the admin and metrics branches declare them, and one that shows key_id."""

    async def whoami(request: Request) -> dict[str, Any]:
        return {"key_id": record_of(request).key_id}

    app.add_api_route("/t/admin", whoami, dependencies=[Depends(require_scope("admin"))])
    app.add_api_route("/t/metrics", whoami, dependencies=[Depends(require_scope("metrics"))])


@pytest_asyncio.fixture(scope="module")
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16), fake_model("other", max_input_tokens=16)],
        auth={"keys": _entries()},
        limits={"max_json_depth": 8},
    )
    async with app_client(settings, ready=False) as (app, client):
        add_probe_routes(app)
        await wait_ready(client)
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_error(r: httpx.Response, status: int, type_: str, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert (err["type"], err["code"]) == (type_, code), err
    assert set(err) == {"message", "type", "param", "code"}
    return err


EMBED = {"input": "hello", "model": "fake"}


async def test_probes_and_docs_stay_open(keyed: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/", "/openapi.json", "/docs"):
        r = await keyed.get(path)
        assert r.status_code == 200, path


@pytest.mark.parametrize(
    ("headers", "code", "phrase"),
    [
        ({}, "missing_api_key", "missing API key"),
        ({"Authorization": f"Basic {FULL}"}, "invalid_api_key", "unsupported authorization scheme"),
        ({"Authorization": "Bearer "}, "invalid_api_key", "empty bearer token"),
        ({"Authorization": "Bearer eh_wrong"}, "invalid_api_key", "invalid API key"),
        ({"X-API-Key": FULL + "x"}, "invalid_api_key", "invalid API key"),
        ({"Authorization": f"Bearer {REVOKED}"}, "api_key_revoked", "revoked"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/embeddings", "/embed", "/v1/models", "/info"])
async def test_401(
    keyed: httpx.AsyncClient, headers: dict[str, str], code: str, phrase: str, path: str
) -> None:
    if path in ("/v1/models", "/info"):
        r = await keyed.get(path, headers=headers)
    else:
        body = EMBED if path == "/v1/embeddings" else {"text": "hello", "model": "fake"}
        r = await keyed.post(path, json=body, headers=headers)
    err = assert_error(r, 401, "invalid_request_error", code)
    assert phrase in err["message"]
    assert r.headers["www-authenticate"] == 'Bearer realm="embedhost"'


async def test_401_comes_before_body_validation(keyed: httpx.AsyncClient) -> None:
    r = await keyed.post("/v1/embeddings", json={"bogus": 1})
    assert_error(r, 401, "invalid_request_error", "missing_api_key")


@pytest.mark.parametrize("param", ["api_key", "key", "token", "access_token", "API_KEY"])
async def test_key_in_query_string_refused(keyed: httpx.AsyncClient, param: str) -> None:
    # Refused even alongside a valid header: the key is already in someone's logs.
    r = await keyed.post(f"/v1/embeddings?{param}={FULL}", json=EMBED, headers=bearer(FULL))
    err = assert_error(r, 401, "invalid_request_error", "api_key_in_url")
    assert "not accepted in the URL" in err["message"]
    assert FULL not in r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_both_headers_work(keyed: httpx.AsyncClient) -> None:
    a = await keyed.post("/v1/embeddings", json=EMBED, headers=bearer(FULL))
    b = await keyed.post("/v1/embeddings", json=EMBED, headers={"X-API-Key": FULL})
    c = await keyed.post("/embed", json={"text": "hello"}, headers={"X-API-Key": FULL})
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.json()["data"] == b.json()["data"]


async def test_wrong_scope_is_403(keyed: httpx.AsyncClient) -> None:
    r = await keyed.post("/v1/embeddings", json=EMBED, headers=bearer(METRICS))
    err = assert_error(r, 403, "permission_error", "insufficient_permissions")
    assert "'embed' scope" in err["message"]
    assert "www-authenticate" not in r.headers
    r = await keyed.get("/t/admin", headers=bearer(ONLY_FAKE))
    assert (
        "'admin' scope"
        in assert_error(r, 403, "permission_error", "insufficient_permissions")["message"]
    )
    r = await keyed.get("/t/metrics", headers=bearer(METRICS))
    assert r.status_code == 200
    assert r.json() == {"key_id": "prom"}
    r = await keyed.get("/t/admin", headers=bearer(FULL))
    assert r.status_code == 200
    assert r.json() == {"key_id": "full"}
    r = await keyed.get("/t/metrics")
    assert_error(r, 401, "invalid_request_error", "missing_api_key")


async def test_model_not_allowed_is_403(keyed: httpx.AsyncClient) -> None:
    ok = await keyed.post("/v1/embeddings", json=EMBED, headers=bearer(ONLY_FAKE))
    assert ok.status_code == 200
    for path, body in (
        ("/v1/embeddings", {"input": "hello", "model": "other"}),
        ("/embed", {"text": "hello", "model": "other@1"}),
    ):
        r = await keyed.post(path, json=body, headers=bearer(ONLY_FAKE))
        err = assert_error(r, 403, "permission_error", "insufficient_permissions")
        assert err["param"] == "model"
        assert "'other'" in err["message"]
    # The same model for a key allowed every model.
    r = await keyed.post(
        "/v1/embeddings", json={"input": "hi", "model": "other"}, headers=bearer(FULL)
    )
    assert r.status_code == 200
    # An unknown model stays a 404.
    r = await keyed.post(
        "/v1/embeddings", json={"input": "hi", "model": "nope"}, headers=bearer(FULL)
    )
    assert r.status_code == 404


async def test_models_list_shows_what_the_key_may_use(keyed: httpx.AsyncClient) -> None:
    every = await keyed.get("/v1/models", headers=bearer(FULL))
    only = await keyed.get("/v1/models", headers=bearer(ONLY_FAKE))
    assert [m["id"] for m in every.json()["data"]] == ["fake", "other"]
    assert [m["id"] for m in only.json()["data"]] == ["fake"]


async def test_per_key_request_limit(keyed: httpx.AsyncClient) -> None:
    seen = []
    for _ in range(3):
        r = await keyed.post("/v1/embeddings", json=EMBED, headers=bearer(LIMITED))
        assert r.status_code == 200
        seen.append(int(r.headers["x-ratelimit-remaining"]))
        assert r.headers["x-ratelimit-limit"] == "3"
    assert seen == [2, 1, 0]
    r = await keyed.post("/v1/embeddings", json=EMBED, headers=bearer(LIMITED))
    err = assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert "3 requests per minute for this API key" in err["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit"] == "3"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(r.headers["x-ratelimit-reset"]) <= 60
    # Other keys have their own budgets (none configured here).
    r = await keyed.post("/v1/embeddings", json=EMBED, headers=bearer(FULL))
    assert r.status_code == 200
    assert "x-ratelimit-limit" not in r.headers


async def test_json_nesting_limit(keyed: httpx.AsyncClient) -> None:
    deep = '{"input": ' + "[" * 20 + "1" + "]" * 20 + "}"
    r = await keyed.post(
        "/v1/embeddings",
        content=deep,
        headers={**bearer(FULL), "Content-Type": "application/json"},
    )
    err = assert_error(r, 400, "invalid_request_error", "json_too_deep")
    assert "8 levels" in err["message"]


async def test_dimensions_range(keyed: httpx.AsyncClient) -> None:
    r = await keyed.post("/v1/embeddings", json={**EMBED, "dimensions": 0}, headers=bearer(FULL))
    assert r.status_code == 422
    r = await keyed.post(
        "/v1/embeddings", json={**EMBED, "dimensions": 10_000}, headers=bearer(FULL)
    )
    err = assert_error(r, 400, "invalid_request_error", "invalid_request")
    assert err["param"] == "dimensions"
    r = await keyed.post("/v1/embeddings", json={**EMBED, "dimensions": 8}, headers=bearer(FULL))
    assert r.status_code == 200
    assert len(r.json()["data"][0]["embedding"]) == 8


async def test_cors_off_by_default(keyed: httpx.AsyncClient) -> None:
    r = await keyed.options(
        "/v1/embeddings",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = await keyed.post(
        "/v1/embeddings", json=EMBED, headers={**bearer(FULL), "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in r.headers


async def test_no_key_and_no_input_text_in_logs(
    keyed: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The request line goes through structlog (not to ``caplog``): capture it there, and
    every stdlib record too, then check each request was logged and no secret was."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        await keyed.post("/v1/embeddings", json={"input": SECRET_TEXT}, headers=bearer(FULL))
        await keyed.post("/v1/embeddings", json={"input": SECRET_TEXT}, headers=bearer(FULL + "x"))
        await keyed.post(f"/v1/embeddings?api_key={FULL}", json={"input": SECRET_TEXT})
        await keyed.post("/v1/embeddings", json={"input": [SECRET_TEXT] * 2, "model": "nope"})
    lines = [e for e in events if e.get("event") == "request"]
    assert [(e["path"], e["status"]) for e in lines] == [
        ("/v1/embeddings", 200),
        ("/v1/embeddings", 401),
        ("/v1/embeddings", 401),
        ("/v1/embeddings", 401),
    ]
    assert lines[0]["inputs"] == 1 and lines[0]["input_chars"] == len(SECRET_TEXT)
    # The server's records (the test client's own httpx log shows the URL it was given).
    server = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = repr(events) + "".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in server)
    for secret in (FULL, FULL + "x", SECRET_TEXT, FULL_E.hash):
        assert secret not in text


# --- apps of their own -----------------------------------------------------------------------


async def test_open_on_loopback_without_keys() -> None:
    settings = make_settings([fake_model("fake", max_input_tokens=16)])
    async with app_client(settings, ready=False) as (app, client):
        add_probe_routes(app)
        await wait_ready(client)
        r = await client.post("/v1/embeddings", json=EMBED)
        assert r.status_code == 200
        r = await client.get("/t/admin")
        assert r.status_code == 200
        assert r.json() == {"key_id": None}


async def test_auth_disabled_explicitly() -> None:
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        auth={"enabled": False, "keys": [FULL_E.model_dump()]},
    )
    async with app_client(settings) as (_, client):
        r = await client.post("/v1/embeddings", json=EMBED)
        assert r.status_code == 200


async def test_metrics_open_when_configured() -> None:
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        auth={"keys": [ONLY_FAKE_E.model_dump()], "metrics_open": True},
    )
    async with app_client(settings, ready=False) as (app, client):
        add_probe_routes(app)
        await wait_ready(client)
        assert (await client.get("/t/metrics")).status_code == 200
        assert (await client.get("/t/admin")).status_code == 401


@pytest_asyncio.fixture(scope="module")
async def limited_app() -> AsyncIterator[FastAPI]:
    """Budgets per address (behind a trusted proxy) and tokens per key."""
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        auth={"keys": [FULL_E.model_dump(), ONLY_FAKE_E.model_dump()]},
        server={"trusted_proxies": ["10.0.0.0/8"]},
        rate_limits={
            "per_address": {"requests_per_minute": 2},
            "per_key": {"tokens_per_minute": 20},
        },
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with client_from(app, "127.0.0.1") as c:
            await wait_ready(c)
        yield app


def client_from(app: FastAPI, peer: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_per_address_limit_behind_trusted_proxy(limited_app: FastAPI) -> None:
    async with client_from(limited_app, "10.0.0.2") as proxy:

        async def from_(addr: str) -> httpx.Response:
            return await proxy.get(
                "/v1/models", headers={**bearer(FULL), "X-Forwarded-For": f"6.6.6.6, {addr}"}
            )

        assert [(await from_("198.51.100.1")).status_code for _ in range(3)] == [200, 200, 429]
        # Another client behind the same proxy has its own budget.
        r = await from_("198.51.100.2")
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining"] == "1"
        r = await from_("198.51.100.1")
        err = assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
        assert "this client address" in err["message"]
        # Failed key guesses spend the address's budget too: after one guess, a valid key
        # from that address has one request left of two, then none.
        r = await proxy.get(
            "/v1/models", headers={"X-Forwarded-For": "198.51.100.3", **bearer("eh_guess")}
        )
        assert r.status_code == 401
        r = await from_("198.51.100.3")
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert (await from_("198.51.100.3")).status_code == 429
    # An untrusted peer's X-Forwarded-For is ignored: it is limited as itself.
    async with client_from(limited_app, "203.0.113.5") as direct:
        codes = [
            (
                await direct.get(
                    "/v1/models",
                    headers={**bearer(FULL), "X-Forwarded-For": f"198.51.100.{i + 10}"},
                )
            ).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 429]


async def test_tokens_per_minute(limited_app: FastAPI) -> None:
    async with client_from(limited_app, "10.0.0.3") as c:
        hdr = {**bearer(ONLY_FAKE), "X-Forwarded-For": "198.51.100.50"}
        # 10 tokens each: [CLS] + 8 + [SEP]; the budget is 20 per minute.
        body = {"input": [101, *range(2000, 2008), 102], "model": "fake"}
        r = await c.post("/v1/embeddings", json=body, headers=hdr)
        assert r.status_code == 200
        assert r.json()["usage"]["total_tokens"] == 10
        r = await c.post(
            "/v1/embeddings", json=body, headers={**hdr, "X-Forwarded-For": "198.51.100.51"}
        )
        assert r.status_code == 200
        r = await c.post(
            "/v1/embeddings", json=body, headers={**hdr, "X-Forwarded-For": "198.51.100.52"}
        )
        err = assert_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
        assert "20 tokens per minute for this API key" in err["message"]
        assert r.headers["x-ratelimit-limit"] == "20"
        assert int(r.headers["retry-after"]) >= 1
        # A request that could never fit the budget says so (413: waiting would not help).
        big = {"input": [[101, *range(2000, 2010), 102]] * 2, "model": "fake"}
        r = await c.post(
            "/v1/embeddings", json=big, headers={**hdr, "X-Forwarded-For": "198.51.100.53"}
        )
        err = assert_error(r, 413, "invalid_request_error", "payload_too_large")
        assert "24 tokens, more than the budget of 20" in err["message"]


async def test_concurrency_limit_fast_503(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # the first request holds the one slot until the gate opens
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16, engine_options={"gate": str(gate)})],
        limits={"max_concurrent_requests": 1},
    )
    async with app_client(settings) as (app, client):
        held = asyncio.create_task(
            client.post("/v1/embeddings", json={"input": [GATE], "model": "fake"})
        )
        batcher = app.state.context.registry.default.replicas[0].batcher
        await wait_until_async(lambda: batcher.in_flight == 1, "the first request in the engine")
        r = await client.post("/v1/embeddings", json=EMBED)
        err = assert_error(r, 503, "server_error", "server_overloaded")
        assert "limit of 1 concurrent requests" in err["message"]
        # Nothing measured yet (the held batch is the first): the configured constant.
        assert r.headers["retry-after"] == "2"
        assert app.state.context.concurrency.overloaded >= 1
        assert app.state.context.concurrency.in_flight == 1
        # Probes still answer.
        assert (await client.get("/health")).status_code == 200
        gate.touch()
        assert (await held).status_code == 200
        assert (await client.post("/v1/embeddings", json=EMBED)).status_code == 200


async def test_cors_when_configured() -> None:
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        server={"cors_origins": ["https://app.example"]},
    )
    async with app_client(settings) as (_, client):
        r = await client.options(
            "/v1/embeddings",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await client.options(
            "/v1/embeddings",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in r.headers

"""The web console's HTTP side: content negotiation on /, the assets and their security
headers, the JSON of live numbers, the embed scope, and ``server.console: false``.

The page itself runs in a real browser in tests/integration/test_console_browser.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from embedhost.api.console import CSP, wants_html
from embedhost.api.console.stats import quantile
from embedhost.security.keys import new_key_entry
from tests.support.app import app_client, fake_model, make_settings

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
EMBED, EMBED_E = new_key_entry("console-user", ["embed"])
PROM, PROM_E = new_key_entry("prom", ["metrics"])
# The live figures are server-wide: they need the metrics (or admin) scope too (issue 20).
OPS, OPS_E = new_key_entry("console-ops", ["embed", "metrics"])


@pytest_asyncio.fixture(scope="module")
async def keyed() -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        auth={"keys": [EMBED_E.model_dump(), PROM_E.model_dump(), OPS_E.model_dump()]},
    )
    async with app_client(settings) as (app, client):
        yield app, client


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER, True),
        ("text/html", True),
        ("application/xhtml+xml", True),
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, text/html", False),  # a tie goes to JSON
        ("text/html;q=0.5, application/json", False),
        ("text/html, application/json;q=0.5", True),
        ("text/html;q=0", False),
        ("text/html;q=bogus", False),
    ],
)
def test_wants_html(accept: str | None, html: bool) -> None:
    assert wants_html(accept) is html


async def test_browser_gets_the_page_with_strict_csp(
    keyed: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = keyed
    # No key needed for the page: it holds no secret and calls nothing by itself.
    r = await client.get("/", headers={"Accept": BROWSER})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script src="console/app.js"' in r.text
    assert r.headers["content-security-policy"] == CSP
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in CSP
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["vary"] == "Accept"
    # Nothing inline for the CSP to have to allow.
    assert "<script>" not in r.text and "<style" not in r.text and " style=" not in r.text


@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
async def test_api_clients_still_get_json_at_root(
    keyed: tuple[FastAPI, httpx.AsyncClient], accept: str | None
) -> None:
    _, client = keyed
    request = client.build_request("GET", "/")
    if accept is None:
        del request.headers["accept"]  # httpx sends */* unless told otherwise
    else:
        request.headers["accept"] = accept
    r = await client.send(request)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["endpoints"]["embeddings"] == "POST /v1/embeddings"
    assert r.headers["vary"] == "Accept"


async def _raw_get(app: FastAPI, raw_path: bytes) -> tuple[int, bytes]:
    """GET ``raw_path`` straight into the app, as uvicorn would pass it (path decoded)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote(raw_path.decode()),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


async def test_assets(keyed: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = keyed
    js = await client.get("/console/app.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == CSP
    assert "sessionStorage" in js.text
    assert "localStorage" not in js.text  # the key stays in the tab
    css = await client.get("/console/style.css")
    assert css.headers["content-type"].startswith("text/css")
    # Sent as written: an HTTP client would normalize the dots away before sending.
    app, _ = keyed
    for raw in (b"/console/../pyproject.toml", b"/console/..%2Fpyproject.toml"):
        status, body = await _raw_get(app, raw)
        assert status == 404, (raw, status)
        assert b"[project]" not in body
    r = await client.get("/console/index.py")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_stats_need_the_embed_scope(keyed: tuple[FastAPI, httpx.AsyncClient]) -> None:
    _, client = keyed
    assert (await client.get("/console/stats")).status_code == 401
    r = await client.get("/console/stats", headers=_auth(PROM))
    assert r.status_code == 403
    assert "embed" in r.json()["error"]["message"]
    r = await client.get("/console/stats", headers=_auth(EMBED))
    assert r.status_code == 200
    # Without the metrics or admin scope: no server-wide figures, and the page says why.
    assert r.json()["metrics"] is False
    assert "metrics or admin scope" in r.json()["reason"]
    assert (await client.get("/console/stats", headers=_auth(OPS))).json()["metrics"] is True


async def test_stats_report_requests_latency_batches_workers(
    keyed: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = keyed
    before = (await client.get("/console/stats", headers=_auth(OPS))).json()
    for i in range(3):  # distinct texts: a cached one would not reach a batch
        r = await client.post(
            "/v1/embeddings", json={"input": [f"a{i}", f"b{i}"]}, headers=_auth(EMBED)
        )
        assert r.status_code == 200
    r = await client.post(
        "/v1/embeddings", json={"input": "x", "model": "nope"}, headers=_auth(EMBED)
    )
    assert r.status_code == 404
    s = (await client.get("/console/stats", headers=_auth(OPS))).json()
    assert s["metrics"] is True
    assert s["requests"]["total"] - before["requests"]["total"] == 4
    assert s["requests"]["ok"] - before["requests"]["ok"] == 3
    assert s["requests"]["errors"] - before["requests"]["errors"] == 1
    assert s["texts"] - before["texts"] == 6
    lat = s["latency_seconds"]
    assert lat["count"] == s["requests"]["total"]
    assert lat["buckets"][-1] == ["+Inf", lat["count"]]
    assert lat["p50"] is not None and 0 < lat["p50"] <= lat["p99"]
    assert s["batch_size"]["count"] >= 3 and s["batch_size"]["sum"] >= 6
    assert s["queue"]["capacity"] > 0 and s["queue"]["depth"] == 0
    (w,) = s["workers"]
    assert (w["model"], w["version"], w["replica"], w["up"]) == ("fake", "1", 0, True)
    assert w["rss_bytes"] > 0 and w["restarts"] == 0
    # The vector cache is on by default: the six new texts were six memory misses.
    assert s["cache"]["tiers"]["memory"]["lookups"] >= 6


async def test_stats_cache_hit_rate_when_the_cache_counts(
    keyed: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    _, client = keyed
    # The vector cache (issue 11) counts lookups in embedhost_cache_requests_total{tier,result}:
    # two new texts miss the memory tier, the same two again hit it.
    before = (await client.get("/console/stats", headers=_auth(OPS))).json()["cache"]
    for _ in range(2):
        r = await client.post(
            "/v1/embeddings", json={"input": ["cached p", "cached q"]}, headers=_auth(EMBED)
        )
        assert r.status_code == 200
    cache = (await client.get("/console/stats", headers=_auth(OPS))).json()["cache"]
    mem = cache["tiers"]["memory"]
    old = (before or {"tiers": {}})["tiers"].get("memory", {"hits": 0, "lookups": 0})
    assert (mem["hits"] - old["hits"], mem["lookups"] - old["lookups"]) == (2, 4)
    assert mem["hit_rate"] == pytest.approx(mem["hits"] / mem["lookups"])
    assert cache["hit_rate"] == pytest.approx(cache["hits"] / cache["lookups"])


def test_quantile_matches_prometheus() -> None:
    # histogram_quantile: linear inside the bucket the rank falls in.
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.15)
    assert quantile(buckets, 0.25) == pytest.approx(0.1)
    assert quantile(buckets, 1.0) == pytest.approx(0.4)
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile([(0.1, 1.0), (float("inf"), 5.0)], 0.99) == 0.1  # in +Inf: its lower bound


async def test_console_off() -> None:
    settings = make_settings([fake_model("fake")], server={"console": False})
    async with app_client(settings) as (_, client):
        r = await client.get("/", headers={"Accept": BROWSER})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json()["name"] == "embedhost"
        for path in ("/console/app.js", "/console/stats"):
            assert (await client.get(path)).status_code == 404


async def test_stats_without_metrics() -> None:
    settings = make_settings([fake_model("fake")], metrics={"enabled": False})
    async with app_client(settings) as (_, client):
        assert (await client.get("/console/stats")).json() == {"metrics": False}

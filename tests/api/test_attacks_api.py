"""The holes an attack run found (issue 20), each shut: one huge request must not stall
the event loop, a per-input character limit, UTF-8-only JSON, credential-looking query
names on every route, authentication before the body is read, one rate-limit budget per
address whatever its spelling."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from embedhost.security.keys import new_key_entry
from tests.support.app import app_client, fake_model, make_settings

KEY, KEY_E = new_key_entry("k", ["embed"])
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
# 10,000,012 bytes: one string of 5 million words, as in the attack run.
HUGE = orjson.dumps({"input": "a " * 4_999_997 + "a"})


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest_asyncio.fixture(scope="module")
async def keyed() -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = make_settings(
        [fake_model("fake")],
        auth={"keys": [KEY_E.model_dump()]},
        limits={"max_json_depth": 32},
        cache={"enabled": False},
    )
    async with app_client(settings) as (app, client):
        yield app, client


async def test_a_10mb_input_does_not_stall_health() -> None:
    # A character limit above the input, so that the request runs the whole way
    # (body, JSON parse, tokenization) instead of being refused up front.
    settings = make_settings(
        [fake_model("fake", max_input_chars=20_000_000)], limits={"max_body_bytes": 16_000_000}
    )
    async with app_client(settings) as (_, client):
        headers = {"Content-Type": "application/json"}
        big = asyncio.ensure_future(client.post("/v1/embeddings", content=HUGE, headers=headers))
        await asyncio.sleep(0)  # the big request starts
        latencies: list[float] = []
        while not big.done() or not latencies:
            start = time.monotonic()
            r = await client.get("/health")
            latencies.append(time.monotonic() - start)
            assert r.status_code == 200
            # The condition, by the test's own clock: every probe answers within 1 s
            # while the big request is served.
            assert latencies[-1] < 1.0, f"/health took {latencies[-1]:.2f} s"
            await asyncio.sleep(0.02)
        r = await big
        assert r.status_code == 200, r.text[:300]
        usage = r.json()["usage"]["prompt_tokens"]
        assert usage <= 512  # truncated to the window


async def test_a_huge_input_is_refused_naming_its_index(
    keyed: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = keyed
    body = {"input": ["fine", "a " * 600_000]}
    r = await client.post("/v1/embeddings", content=orjson.dumps(body), headers=HEADERS)
    err = assert_error(r, 413, "payload_too_large")
    assert err["param"] == "input[1]"
    assert "input 1 has 1200000 characters" in err["message"]
    assert "max_input_chars" in err["message"]


async def test_bounded_tokenization_counts_like_the_whole_text(
    keyed: tuple[Any, httpx.AsyncClient],
) -> None:
    _, client = keyed
    # Long, but within the default limit: cut by characters before tokenizing, the
    # answer is the same as for the window's worth of text.
    # (The fake engine's window is 64 tokens: the limit is 8192 characters, the cut
    # (64 + 128) x 19 = 3648.)
    long = "word " * 1_600
    short = "word " * 100
    a = await client.post("/embed", json={"texts": [long, short]}, headers=HEADERS)
    assert a.status_code == 200, a.text
    body = a.json()
    assert body["tokens"][0] == body["tokens"][1]
    assert body["truncated"] == [True, True]
    assert body["embeddings"][0] == body["embeddings"][1]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
async def test_a_utf16_or_utf32_body_is_refused(
    keyed: tuple[Any, httpx.AsyncClient], encoding: str
) -> None:
    _, client = keyed
    deep = "[" * 50 + "]" * 50
    text = '{"x":["a\\"",' + deep + '],"input":"hi"}'
    json.loads(text)  # valid JSON, 51 levels deep
    r = await client.post("/v1/embeddings", content=text.encode(encoding), headers=HEADERS)
    err = assert_error(r, 400, "invalid_encoding")
    assert "UTF-8" in err["message"]
    # The same in UTF-8 is caught by the depth limit.
    r = await client.post("/v1/embeddings", content=text.encode(), headers=HEADERS)
    assert_error(r, 400, "json_too_deep")


NAMES = [
    "x-api-key",
    "X-Api-Key",
    "auth",
    "bearer",
    "Authorization",
    "api_key[]",
    "apiKey",
    "api.key",
    "access-token",
    "openai_api_key",
    "key",
    "token",
]


@pytest.mark.parametrize("name", NAMES)
async def test_credential_query_names_are_refused_everywhere(
    keyed: tuple[Any, httpx.AsyncClient], name: str
) -> None:
    _, client = keyed
    q = httpx.QueryParams({name: KEY})
    r = await client.post(f"/v1/embeddings?{q}", json={"input": "hi"}, headers=HEADERS)
    err = assert_error(r, 401, "api_key_in_url")
    assert KEY not in r.text
    assert "not accepted in the URL" in err["message"]
    for path in ("/health", "/docs", "/openapi.json", "/ready", "/nowhere"):
        r = await client.get(f"{path}?{q}")
        assert_error(r, 401, "api_key_in_url")
        assert r.headers["www-authenticate"].startswith("Bearer")
    # A name with no value counts too; ordinary names do not.
    assert_error(
        await client.get(f"/health?{httpx.QueryParams({name: ''})}"), 401, "api_key_in_url"
    )
    assert (await client.get("/health?model=x&version=1&wait=true")).status_code == 200


def _scope(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
        "app": app,
    }


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([], "missing_api_key"),
        ([(b"authorization", b"Bearer eh_wrong")], "invalid_api_key"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/embeddings", "/embed", "/admin/reload"])
async def test_401_before_the_body_is_read(
    keyed: tuple[Any, httpx.AsyncClient],
    headers: list[tuple[bytes, bytes]],
    code: str,
    path: str,
) -> None:
    app, _ = keyed
    reads = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"not even json", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(app, path, headers), receive, send)
    assert reads == 0, "the body was read before the key was checked"
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 401
    body = json.loads(next(m for m in sent if m["type"] == "http.response.body")["body"])
    assert body["error"]["code"] == code


async def test_one_budget_per_address_across_spellings() -> None:
    settings = make_settings(
        [fake_model("fake")], rate_limits={"per_address": {"requests_per_minute": 2}}
    )
    async with app_client(settings) as (app, _):
        statuses = []
        for client in ("127.0.0.1", "::ffff:127.0.0.1", "::FFFF:7f00:1"):
            transport = httpx.ASGITransport(app=app, client=(client, 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                r = await c.post("/v1/embeddings", json={"input": "hi"})
                statuses.append(r.status_code)
        assert statuses == [200, 200, 429]


async def _raw_request(port: int, header_value: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + header_value)
        writer.write(b"\r\n\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server may close before it has read everything
        return await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()


async def test_oversized_headers_are_refused() -> None:
    import uvicorn

    from embedhost.server import header_timeout_protocol
    from tests.support.servers import free_port

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    config = uvicorn.Config(
        app,
        port=port,
        log_config=None,
        lifespan="off",
        http=header_timeout_protocol(10.0, 32 * 1024),
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.01)
        ok = await _raw_request(port, b"x" * 1000)
        assert ok.startswith(b"HTTP/1.1 200"), ok[:100]
        refused = await _raw_request(port, b"x" * 1_000_000)
        assert refused.startswith(b"HTTP/1.1 431"), refused[:100]
        # Just over the cap, in one piece: refused by the parser's count.
        over = await _raw_request(port, b"x" * 40_000)
        assert over.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), over[:100]
    finally:
        server.should_exit = True
        await task


async def test_a_body_of_millions_of_elements_is_refused_before_parsing() -> None:
    # Parsing and validating 2.4 million token ids takes seconds of CPU (the validation on
    # the event loop): the elements are counted on the raw bytes first. The limit's
    # default is what the largest acceptable request holds.
    settings = make_settings(
        [fake_model("fake")], limits={"max_request_tokens": 2000, "max_inputs_per_request": 16}
    )
    async with app_client(settings) as (app, client):
        limit = app.state.context.settings.limits.json_elements
        assert limit == 2000 + 16 + 4096
        headers = {"Content-Type": "application/json"}
        ids = orjson.dumps({"input": [[7] * (limit + 10)]})
        err = assert_error(
            await client.post("/v1/embeddings", content=ids, headers=headers),
            413,
            "payload_too_large",
        )
        assert "max_json_elements" in err["message"]
        # Commas inside strings are text, not elements: such a body is served.
        text = orjson.dumps({"input": ["a," * (limit // 16 + 10)] * 16})
        assert text.count(b",") > limit
        r = await client.post("/v1/embeddings", content=text, headers=headers)
        assert r.status_code == 200, r.text[:300]

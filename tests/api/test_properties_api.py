"""Property-based tests of the embedding routes (hypothesis): whatever JSON a client sends,
the answer is a 2xx or a 4xx in OpenAI's error shape, never a 5xx.

The strategies send what JSON allows and careless clients produce: strings with lone UTF-16
surrogates (a UTF-16 string cut in half), lists of mixed types, token ids outside any
vocabulary, numbers where strings belong, unknown keys. schemathesis generates from the
OpenAPI schema, which says what is accepted, so it never tried a lone surrogate; these do.

In-process app on the fake engine with MiniLM's real tokenizer (the GGUF tokenizer has its
own property test in tests/engines/test_gguf_unicode.py). Example counts are bounded and
there is no per-example deadline, so a loaded machine makes the run slower, never flaky.
Cost: about 10 s on a quiet 2-core machine.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from embedhost.tokenization import _SURROGATE
from tests.support import strategies
from tests.support.strategies import json_text

PROPERTY = settings(strategies.PROPERTY, max_examples=120)

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and Infinity too: Python's json reads them
    json_text,
)
json_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(json_text, inner, max_size=4)
    ),
    max_leaves=12,
)

token_id = st.one_of(
    st.integers(min_value=0, max_value=30521),  # in MiniLM's vocabulary
    st.integers(min_value=-5, max_value=2**64),  # negative, outside, overflowing int64
)
inputs = st.one_of(
    json_text,
    st.lists(json_text, max_size=6),
    st.lists(token_id, max_size=6),
    st.lists(st.lists(token_id, max_size=6), max_size=4),
    st.lists(st.one_of(json_text, token_id), max_size=4),  # mixed
    json_value,
)
model = st.one_of(st.sampled_from(["fake", "fake-refuse", "fake@1", "fake@2"]), json_value)
truncate = st.one_of(st.sampled_from([True, False, "left", "right"]), json_value)
dimensions = st.one_of(st.integers(min_value=-2, max_value=64), json_value)


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with any subset of ``fields``, plus arbitrary unknown keys."""
    return st.tuples(
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(json_text, json_value, max_size=2),
    ).map(lambda pair: {**pair[1], **pair[0]})


openai_bodies = st.tuples(
    inputs,
    _optional(
        model=model,
        encoding_format=st.one_of(st.sampled_from(["float", "base64"]), json_value),
        dimensions=dimensions,
        user=json_value,
        truncate=truncate,
    ),
).map(lambda pair: {"input": pair[0], **pair[1]})

native_bodies = _optional(
    text=st.one_of(json_text, json_value),
    texts=st.one_of(st.lists(json_text, max_size=6), json_value),
    model=model,
    normalize=json_value,
    truncate=truncate,
    dimensions=dimensions,
)


async def _post(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    # ensure_ascii writes a lone surrogate as the escape "\ud800", which is what JSON allows
    # and what a client library sends; allow_nan: Python clients send NaN and Infinity.
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    return await client.post(path, content=raw, headers={"content-type": "application/json"})


def _assert_answer(r: httpx.Response) -> None:
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
        assert err["type"] in ("invalid_request_error", "rate_limit_error", "permission_error")
        assert err["param"] is None or isinstance(err["param"], str)
        assert isinstance(err["code"], str)


def _first_surrogate(texts: list[str]) -> int | None:
    return next((i for i, t in enumerate(texts) if _SURROGATE.search(t)), None)


@PROPERTY
@given(body=openai_bodies)
async def test_openai_route_answers_2xx_or_openai_4xx(
    fake_client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await _post(fake_client, "/v1/embeddings", body)
    _assert_answer(r)
    if r.status_code == 200:
        inp = body["input"]
        single = isinstance(inp, str) or isinstance(inp[0], int)
        assert len(r.json()["data"]) == (1 if single else len(inp))


@PROPERTY
@given(body=native_bodies)
async def test_native_route_answers_2xx_or_openai_4xx(
    fake_client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await _post(fake_client, "/embed", body)
    _assert_answer(r)


@PROPERTY
@given(texts=st.lists(json_text, min_size=1, max_size=5))
async def test_text_with_a_lone_surrogate_is_400_naming_its_index(
    fake_client: httpx.AsyncClient, texts: list[str]
) -> None:
    """Every text list, on both routes: a lone surrogate anywhere is a 400 naming the
    first input that has one; otherwise the texts are embedded (or refused as empty)."""
    # What the server decodes: a high surrogate followed by a low one, two code points here,
    # travels as two escapes that JSON joins into one valid character.
    bad = _first_surrogate(json.loads(json.dumps(texts)))
    for path, body in (
        ("/v1/embeddings", {"input": texts, "model": "fake"}),
        ("/embed", {"texts": texts, "model": "fake"}),
    ):
        r = await _post(fake_client, path, body)
        _assert_answer(r)
        if bad is not None and all(texts):  # an empty text is refused first
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == f"input[{bad}]"
            assert err["code"] == "invalid_request"
            assert f"input {bad} " in err["message"]
        elif bad is None and all(texts):
            assert r.status_code == 200, r.text


async def test_the_reported_surrogate_requests_are_400(fake_client: httpx.AsyncClient) -> None:
    """The three requests from the report (issue 15), byte for byte."""
    cases = [
        ("/v1/embeddings", b'{"input": "\\ud800"}', "input[0]"),
        ("/v1/embeddings", b'{"input": ["ok", "\\ud800x"]}', "input[1]"),
        ("/embed", b'{"text": "\\udfff"}', "input[0]"),
    ]
    for path, raw, param in cases:
        r = await fake_client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["param"] == param
    # A surrogate pair is one real character (U+1F600) and is embedded.
    r = await fake_client.post(
        "/v1/embeddings",
        content=b'{"input": "smile \\ud83d\\ude00"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text

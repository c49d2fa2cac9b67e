"""Property tests (hypothesis) of compact vectors: whatever JSON a client sends to
``POST /v2/embed``, or as ``embedding_types`` to ``/embed`` and ``/v1/embeddings``, the
answer is a 2xx of the right shape or a 4xx in OpenAI's error shape, never a 5xx.

In-process app on the fake engine (32 dimensions, MiniLM's tokenizer), its calibration in a
temporary directory on 16 texts. Example counts are bounded, no per-example deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.support import strategies
from tests.support.app import app_client, fake_model, make_settings
from tests.support.strategies import json_text

PROPERTY = settings(strategies.PROPERTY, max_examples=100)
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]

_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    json_text,
)
json_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(json_text, inner, max_size=3)
    ),
    max_leaves=8,
)
embedding_types = st.one_of(
    st.lists(st.sampled_from(TYPES), min_size=1, max_size=7),
    st.lists(json_value, max_size=3),
    json_value,
)
# Mostly well-formed bodies (so that the 200 path and its shapes are exercised), and
# careless ones: any field any JSON.
input_types = st.sampled_from(["search_document", "search_query", "classification", "clustering"])
well_formed = st.fixed_dictionaries(
    {
        "model": st.just("fake"),
        "texts": st.lists(
            st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60),
            min_size=1,
            max_size=4,
        ),
        "input_type": input_types,
    },
    optional={
        "embedding_types": st.lists(st.sampled_from(TYPES), min_size=1, max_size=7),
        "truncate": st.sampled_from(["NONE", "START", "END"]),
        "output_dimension": st.integers(min_value=1, max_value=40),
        "max_tokens": st.integers(min_value=1, max_value=40),
    },
)
careless = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["fake", "fake@1", "nope"]), json_value),
        "texts": st.one_of(st.lists(json_text, max_size=5), json_value),
        "input_type": st.one_of(input_types, json_value),
        "embedding_types": embedding_types,
        "truncate": st.one_of(st.sampled_from(["NONE", "START", "END"]), json_value),
        "output_dimension": st.one_of(st.integers(min_value=-1, max_value=40), json_value),
        "max_tokens": st.one_of(st.integers(min_value=-1, max_value=40), json_value),
        "images": json_value,
        "priority": json_value,
    },
)
cohere_bodies = st.one_of(well_formed, well_formed, careless)


@pytest_asyncio.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    quant = tmp_path_factory.mktemp("calibration")
    settings = make_settings(
        [fake_model("fake", max_input_tokens=16)],
        quantization={"dir": str(quant), "max_texts": 16},
    )
    async with app_client(settings) as (_, c):
        yield c


async def _post(client: httpx.AsyncClient, path: str, body: Any) -> httpx.Response:
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    return await client.post(path, content=raw, headers={"content-type": "application/json"})


def _assert_answer(r: httpx.Response) -> None:
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]


@PROPERTY
@given(body=cohere_bodies)
async def test_v2_embed_answers_2xx_or_openai_4xx(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await _post(client, "/v2/embed", body)
    _assert_answer(r)
    event(f"status {r.status_code}")
    if r.status_code == 200:
        out = r.json()
        asked = body.get("embedding_types") or ["float"]
        assert set(out["embeddings"]) == set(asked)
        dims = body.get("output_dimension") or 32
        for t, rows in out["embeddings"].items():
            assert len(rows) == len(body["texts"])
            if t in ("float", "int8", "uint8"):
                assert all(len(row) == dims for row in rows)
            elif t in ("binary", "ubinary"):
                assert all(len(row) == (dims + 7) // 8 for row in rows)


@PROPERTY
@given(types=embedding_types, texts=st.lists(json_text, min_size=1, max_size=3))
async def test_embedding_types_on_the_other_routes_answer_2xx_or_openai_4xx(
    client: httpx.AsyncClient, types: Any, texts: list[str]
) -> None:
    for path, body in (
        ("/embed", {"texts": texts, "embedding_types": types}),
        ("/v1/embeddings", {"input": texts, "embedding_types": types}),
    ):
        _assert_answer(await _post(client, path, body))

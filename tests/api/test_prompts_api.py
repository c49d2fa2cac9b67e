"""Query/document prompts over the API, on the fake engine with MiniLM's real tokenizer:
the prompt is in the token ids (so in the vectors, usage and limits), truncation never
cuts it, and unknown names are refused naming the ones that exist. The real engines'
vectors against sentence-transformers are in tests/engines/test_prompts_engines.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio

from embedhost.tokenization import HFTokenizer
from tests.fakes import vector_for
from tests.support.app import app_client, fake_model, make_settings

PROMPTS = {"query": "query: ", "passage": "passage: ", "huge": "word " * 20}
LONG = "the quick brown fox jumps over the lazy dog and keeps running far away"


@pytest_asyncio.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [
            fake_model("p", max_input_tokens=16, prompts=PROMPTS, normalize=False),
            fake_model(
                "pd",
                max_input_tokens=16,
                prompts=PROMPTS,
                default_prompt="passage",
                normalize=False,
            ),
            fake_model(
                "p-refuse",
                max_input_tokens=16,
                prompts=PROMPTS,
                truncation="refuse",
                normalize=False,
            ),
            fake_model("plain", max_input_tokens=16, normalize=False),
        ]
    )
    async with app_client(settings) as (_, c):
        yield c


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


def ids_of(tok: HFTokenizer, text: str) -> list[int]:
    return tok.encode_batch([text])[0]


async def embed(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    return await client.post("/v1/embeddings", json=body)


async def test_models_and_info_list_prompts(client: httpx.AsyncClient) -> None:
    cards = {c["id"]: c for c in (await client.get("/v1/models")).json()["data"]}
    assert cards["p"]["prompts"] == PROMPTS
    assert cards["p"]["default_prompt"] is None
    assert cards["pd"]["default_prompt"] == "passage"
    # The packaged MiniLM's config_sentence_transformers.json declares no prompts.
    assert cards["plain"]["prompts"] == {}
    info = {m["name"]: m for m in (await client.get("/info")).json()["models"]}
    assert info["pd"]["prompts"] == PROMPTS
    assert info["pd"]["default_prompt"] == "passage"


async def test_input_type_prepends_the_prompt(client: httpx.AsyncClient, tok: HFTokenizer) -> None:
    r = await embed(client, model="p", input=["hello world"], input_type="query")
    assert r.status_code == 200, r.text
    expected = ids_of(tok, "query: hello world")
    # The prompt is in the ids the engine saw (the fake's vector is a function of them)
    # and in usage.
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], vector_for(expected), rtol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == len(expected)
    plain = await embed(client, model="p", input=["hello world"])
    assert plain.json()["usage"]["prompt_tokens"] == len(ids_of(tok, "hello world"))


async def test_query_and_document_map_to_the_models_names(
    client: httpx.AsyncClient, tok: HFTokenizer
) -> None:
    # "document" maps to the model's "passage" prompt (E5's naming); on /embed too, and
    # prompt_name (TEI's spelling) names it directly.
    a = await client.post("/embed", json={"model": "p", "text": "hi", "input_type": "document"})
    b = await client.post("/embed", json={"model": "p", "text": "hi", "prompt_name": "passage"})
    c = await client.post("/embed", json={"model": "p", "text": "passage: hi"})
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.json()["embeddings"] == b.json()["embeddings"] == c.json()["embeddings"]
    assert a.json()["tokens"] == [len(ids_of(tok, "passage: hi"))]
    # A model with no prompts embeds queries and documents as they are.
    q = await embed(client, model="plain", input="hi", input_type="query")
    n = await embed(client, model="plain", input="hi")
    assert q.status_code == 200
    assert q.json()["data"] == n.json()["data"]


async def test_default_prompt(client: httpx.AsyncClient) -> None:
    d = await embed(client, model="pd", input="hi")
    explicit = await embed(client, model="pd", input="hi", prompt_name="passage")
    other = await embed(client, model="pd", input="hi", input_type="query")
    assert d.json()["data"] == explicit.json()["data"]
    assert d.json()["data"] != other.json()["data"]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        (
            {"input_type": "search"},
            "input_type",
            "prompts: huge, passage, query (input_type also takes query and document)",
        ),
        ({"prompt_name": "document"}, "prompt_name", "huge, passage, query"),
        ({"input_type": "query", "prompt_name": "query"}, "prompt_name", "not both"),
        ({"input": [[101, 7592, 102]], "input_type": "query"}, "input_type", "token ids"),
    ],
)
async def test_bad_prompt_names_are_400(
    client: httpx.AsyncClient, body: dict[str, object], param: str, needle: str
) -> None:
    r = await embed(client, **{"model": "p", "input": "hi", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert needle in err["message"]
    assert err["type"] == "invalid_request_error"


async def test_unknown_prompt_on_a_model_without_prompts(client: httpx.AsyncClient) -> None:
    r = await client.post("/embed", json={"model": "plain", "text": "hi", "prompt_name": "query"})
    assert r.status_code == 400
    assert "this model's prompts: none" in r.json()["error"]["message"]


@pytest.mark.parametrize("side", ["right", "left"])
async def test_truncation_never_cuts_the_prompt(
    client: httpx.AsyncClient, tok: HFTokenizer, side: str
) -> None:
    r = await client.post(
        "/embed",
        json={
            "model": "p",
            "text": LONG,
            "input_type": "query",
            "truncate": side,
            "normalize": False,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == [16] and body["truncated"] == [True]
    full = ids_of(tok, "query: " + LONG)
    n_prompt = len(ids_of(tok, "query: ")) - 2
    head = full[: 1 + n_prompt]
    keep = 16 - len(head) - 1
    content = full[1 + n_prompt : -1]
    content = content[:keep] if side == "right" else content[-keep:]
    expected = [*head, *content, full[-1]]
    assert head[1:] == ids_of(tok, "query:")[1:-1]
    np.testing.assert_allclose(body["embeddings"][0], vector_for(expected), rtol=1e-6)


async def test_refuse_counts_the_prompt(client: httpx.AsyncClient, tok: HFTokenizer) -> None:
    # Fits alone (15 tokens), not with the prompt (17).
    text = "one two three four five six seven eight nine ten eleven twelve thirteen"
    assert len(ids_of(tok, text)) <= 16 < len(ids_of(tok, "passage: " + text))
    ok = await embed(client, model="p-refuse", input=text)
    assert ok.status_code == 200
    r = await embed(client, model="p-refuse", input=text, input_type="document")
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded"
    assert "for the prompt" in err["message"]


async def test_a_prompt_longer_than_the_limit_is_413(client: httpx.AsyncClient) -> None:
    r = await embed(client, model="p", input="hi", prompt_name="huge")
    assert r.status_code == 413
    err = r.json()["error"]
    assert "the prompt 'huge' takes 20 tokens" in err["message"]
    assert err["param"] == "input_type"

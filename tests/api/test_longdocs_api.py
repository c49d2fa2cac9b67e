"""Long documents and tokenize/decode through the real app on the fake engine (vectors a
function of the token ids, so pooling is checked exactly): chunk-and-pool against the
windows embedded alone, usage and window counts, the 413 beyond max_chunks_per_input,
per-window vectors and spans, /tokenize and /decode, and no 5xx whatever the chunking
request (hypothesis). The real engines: tests/engines/test_longdocs_engines.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from embedhost.tokenization import HFTokenizer
from tests.support import strategies
from tests.support.app import app_client, fake_model, make_settings
from tests.support.strategies import json_text

DOC = (
    "Embeddings map text to points in a space where similar meanings are close. "
    "A vector database stores them and finds the nearest neighbours of a query. "
    "Long documents exceed a model's window, so they are cut into windows. "
    "Each window is embedded, and the vectors are pooled into one."
)


@pytest_asyncio.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [
            fake_model("chunky", max_input_tokens=24, truncation="chunk", chunk_overlap_tokens=4),
            fake_model("plain", max_input_tokens=24),
        ],
        limits={"max_chunks_per_input": 6},
    )
    async with app_client(settings) as (_, c):
        yield c


async def _vectors(client: httpx.AsyncClient, model: str, inputs: Any) -> np.ndarray:
    r = await client.post("/v1/embeddings", json={"model": model, "input": inputs})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


async def test_chunk_and_pool_is_the_weighted_mean_of_the_windows_alone(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/embed", json={"model": "chunky", "texts": [DOC], "chunking": {}})
    assert r.status_code == 200, r.text
    windows = r.json()["chunk_embeddings"][0]
    assert len(windows) >= 3

    r = await client.post("/v1/embeddings", json={"model": "chunky", "input": [DOC, "short"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Embedhost-Chunks"] == f"{len(windows)},1"
    # usage counts every token embedded: each window's, specials included.
    assert body["usage"]["prompt_tokens"] == sum(w["tokens"] for w in windows) + 3
    pooled = np.array(body["data"][0]["embedding"], dtype=np.float32)

    # The reference: each window's text embedded alone on a model that does not chunk.
    texts = [DOC[w["start"] : w["end"]] for w in windows]
    alone = await _vectors(client, "plain", texts)
    counts = np.array([w["tokens"] for w in windows], dtype=np.float64)[:, None]
    ref = (alone * counts).sum(axis=0) / counts.sum()
    ref /= np.linalg.norm(ref)
    assert float(pooled @ ref) >= 0.9999
    np.testing.assert_allclose(np.array([w["embedding"] for w in windows]), alone, atol=1e-6)

    # A request asks for chunking on a model that truncates (its own overlap, 32, is cut to
    # under half a window); /embed says the window counts and each input's tokens.
    r = await client.post(
        "/embed", json={"model": "plain", "texts": [DOC, "hi"], "truncate": "chunk"}
    )
    assert r.status_code == 200, r.text
    per = await client.post("/embed", json={"model": "plain", "text": DOC, "chunking": {}})
    plain_windows = per.json()["chunk_embeddings"][0]
    assert r.json()["chunks"] == [len(plain_windows), 1]
    assert r.json()["tokens"] == [sum(w["tokens"] for w in plain_windows), 3]
    np.testing.assert_allclose(r.json()["embeddings"][0], per.json()["embeddings"][0], atol=1e-6)


async def test_windows_spans_slice_and_each_vector_is_its_text_alone(
    client: httpx.AsyncClient,
) -> None:
    doc = "Déjà vu 🙂 — naïve cafés. " * 5
    r = await client.post(
        "/embed",
        json={
            "model": "plain",
            "texts": [doc],
            "chunking": {"max_tokens": 16, "overlap_tokens": 3},
        },
    )
    assert r.status_code == 200, r.text
    windows = r.json()["chunk_embeddings"][0]
    assert all(w["tokens"] <= 16 for w in windows)
    assert [w["start"] for w in windows] == sorted(w["start"] for w in windows)
    alone = await _vectors(client, "plain", [doc[w["start"] : w["end"]] for w in windows])
    np.testing.assert_allclose(np.array([w["embedding"] for w in windows]), alone, atol=1e-6)


async def test_windows_are_cached_one_entry_each(client: httpx.AsyncClient) -> None:
    doc = "Caching works per window. " * 12
    r = await client.post("/embed", json={"model": "chunky", "text": doc, "chunking": {}})
    windows = r.json()["chunk_embeddings"][0]
    assert len(windows) >= 2 and r.headers["X-Embedhost-Cache"] == "miss"
    # The same document again: every window from the cache.
    r = await client.post("/v1/embeddings", json={"model": "chunky", "input": doc})
    assert r.headers["X-Embedhost-Cache"] == "hit"
    # One window's text alone is that window's token ids: the same entry.
    w = windows[1]
    r = await client.post(
        "/v1/embeddings", json={"model": "chunky", "input": doc[w["start"] : w["end"]]}
    )
    assert r.headers["X-Embedhost-Cache"] == "hit"


async def test_too_many_windows_is_413_naming_the_input(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"model": "chunky", "input": ["ok", DOC * 4]})
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["param"] == "input[1]"
    assert "max_chunks_per_input" in err["message"]


async def test_a_chunked_input_has_the_character_limit_of_its_windows(
    client: httpx.AsyncClient,
) -> None:
    # 128 characters per token of max_chunks_per_input (6) windows of 24 tokens: refused
    # before it is tokenized, naming the input (issue 20's limit on the chunking path).
    limit = 128 * 24 * 6
    r = await client.post(
        "/v1/embeddings", json={"model": "chunky", "input": ["ok", "a" * (limit + 1)]}
    )
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["param"] == "input[1]"
    assert "max_input_chars" in err["message"]


async def test_late_chunking_on_an_engine_without_token_states_is_400(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/embed", json={"model": "plain", "text": "a b", "chunking": {"mode": "late"}}
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "chunking.mode"


async def test_tokenize_and_decode_in_teis_shapes(
    client: httpx.AsyncClient, minilm_dir: Path
) -> None:
    tok = HFTokenizer(minilm_dir)
    texts = ["Résumé 🙂 of a café", "plain ascii"]
    r = await client.post("/tokenize", json={"model": "plain", "inputs": texts})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [[t["id"] for t in seq] for seq in out] == tok.encode_batch(texts)
    assert set(out[0][0]) == {"id", "text", "special", "start", "stop"}
    assert out[0][0] == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    for text, seq in zip(texts, out, strict=True):
        for t in seq:
            if not t["special"]:
                assert text.encode()[t["start"] : t["stop"]].decode() == t["text"]

    r = await client.post(
        "/tokenize",
        json={
            "model": "plain",
            "inputs": "naïve",
            "add_special_tokens": False,
            "char_offsets": True,
        },
    )
    (seq,) = r.json()
    assert not any(t["special"] for t in seq)
    assert ["naïve"[t["char_start"] : t["char_stop"]] for t in seq] == [t["text"] for t in seq]

    ids = [[t["id"] for t in s] for s in out]
    r = await client.post("/decode", json={"model": "plain", "ids": ids})
    assert r.status_code == 200
    assert r.json() == tok.decode(ids)
    assert r.json()[1] == "plain ascii"
    r = await client.post("/decode", json={"ids": ids[1], "skip_special_tokens": False})
    assert r.json() == ["[CLS] plain ascii [SEP]"]

    for path, body, param in (
        ("/tokenize", {"inputs": ""}, "inputs"),
        ("/tokenize", {"inputs": []}, "inputs"),
        ("/decode", {"ids": [99_999_999]}, "ids"),
    ):
        r = await client.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["param"] == param


_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), json_text)
chunking_bodies = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.one_of(st.sampled_from(["windows", "late"]), _value),
        "max_tokens": _value,
        "overlap_tokens": _value,
        "spans": st.one_of(
            st.lists(st.lists(st.lists(st.integers(-2, 80), max_size=3), max_size=3), max_size=2),
            _value,
        ),
    },
)


@settings(strategies.PROPERTY, max_examples=60)
@given(
    texts=st.lists(json_text, min_size=1, max_size=3),
    chunk=st.one_of(st.none(), chunking_bodies),
    truncate=st.sampled_from([None, "chunk", True]),
    repeat=st.integers(1, 30),
)
async def test_chunking_requests_answer_2xx_or_4xx(
    client: httpx.AsyncClient,
    texts: list[str],
    chunk: dict[str, Any] | None,
    truncate: str | None,
    repeat: int,
) -> None:
    body: dict[str, Any] = {"model": "chunky", "texts": [t * repeat for t in texts]}
    if chunk is not None:
        body["chunking"] = chunk
    if truncate is not None:
        body["truncate"] = truncate
    raw = json.dumps(body, ensure_ascii=True).encode()
    r = await client.post("/embed", content=raw, headers={"content-type": "application/json"})
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code == 200 and chunk is not None:
        for text, chunks in zip(body["texts"], r.json()["chunk_embeddings"], strict=True):
            for c in chunks:
                assert c["start"] is None or 0 <= c["start"] <= c["end"] <= len(text)
    r = await client.post("/tokenize", content=json.dumps({"inputs": texts}, ensure_ascii=True))
    assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, (r.status_code, r.text)

"""The rerank and score routes on the real app (in-process), a transformers cross-encoder
(the seeded MiniLM fixture) beside the MiniLM embedding model: the shapes of Cohere v2,
Jina / Cohere v1, TEI and vLLM, parity with sentence-transformers' CrossEncoder, the
task on /v1/models and /info, the other task's route refused, bad input refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from tests.support import MINILM
from tests.support.app import app_client, make_settings
from tests.support.engines import SENTENCES

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUERY = "What is the capital of France?"
DOCS = [
    *SENTENCES,
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
    "France is a country in western Europe.",
    "Rome was not built in a day.",
    "London has a population of about nine million.",
    "Lyon is a city in France known for its food.",
    "The Louvre is the world's most visited museum.",
    "Madrid is the capital of Spain.",
]
assert len(DOCS) == 20


@pytest.fixture(scope="module")
def reference(cross_encoder_dir: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(cross_encoder_dir), device="cpu")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(cross_encoder_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        [
            {"name": "minilm", "path": MINILM, "dtype": "float32"},
            {"name": "ce", "path": str(cross_encoder_dir), "dtype": "float32"},
            {
                "name": "ce-short",
                "path": str(cross_encoder_dir),
                "dtype": "float32",
                "max_input_tokens": 48,
            },
            {
                "name": "ce-refuse",
                "path": str(cross_encoder_dir),
                "dtype": "float32",
                "max_input_tokens": 48,
                "rerank_windows": False,
                "truncation": "refuse",
            },
        ],
        limits={"max_documents": 25},
    )
    async with app_client(settings) as (_, c):
        yield c


async def test_models_and_info_say_each_task(client: httpx.AsyncClient) -> None:
    cards = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
    assert cards["minilm"]["task"] == "embed"
    assert cards["ce"]["task"] == "rerank"
    info = (await client.get("/info")).json()
    tasks = {m["name"]: m["task"] for m in info["models"]}
    assert tasks["ce"] == "rerank" and tasks["minilm"] == "embed"


async def test_v2_rerank_matches_cross_encoder(client: httpx.AsyncClient, reference: Any) -> None:
    expected = reference.predict([(QUERY, d) for d in DOCS])
    r = await client.post("/v2/rerank", json={"model": "ce", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] and body["meta"]["api_version"]["version"] == "2"
    results = body["results"]
    assert [x["index"] for x in results] == list(np.argsort(-expected, kind="stable"))
    got = np.array([x["relevance_score"] for x in sorted(results, key=lambda x: x["index"])])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    top = await client.post(
        "/v2/rerank", json={"model": "ce", "query": QUERY, "documents": DOCS, "top_n": 3}
    )
    assert [x["index"] for x in top.json()["results"]] == [x["index"] for x in results[:3]]


async def test_v1_rerank_jina_shape(client: httpx.AsyncClient, reference: Any) -> None:
    docs = [{"text": DOCS[0]}, DOCS[1], {"text": DOCS[3]}]
    r = await client.post(
        "/v1/rerank",
        json={"model": "ce", "query": QUERY, "documents": docs, "return_documents": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    texts = [DOCS[0], DOCS[1], DOCS[3]]
    expected = reference.predict([(QUERY, d) for d in texts])
    for item in body["results"]:
        assert item["document"] == {"text": texts[item["index"]]}
        assert abs(item["relevance_score"] - expected[item["index"]]) < 1e-4
    assert body["usage"]["total_tokens"] > 0 and body["model"] == "ce"


async def test_tei_rerank_shape(client: httpx.AsyncClient, reference: Any) -> None:
    texts = DOCS[:5]
    r = await client.post(
        "/rerank",
        json={"query": QUERY, "texts": texts, "raw_scores": True, "return_text": True},
    )
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert isinstance(ranks, list) and len(ranks) == 5
    import torch

    logits = reference.predict([(QUERY, t) for t in texts], activation_fn=torch.nn.Identity())
    assert [x["index"] for x in ranks] == list(np.argsort(-logits, kind="stable"))
    for x in ranks:
        assert x["text"] == texts[x["index"]]
        assert abs(x["score"] - logits[x["index"]]) < 1e-4


async def test_score_vllm_shape_both_tasks(client: httpx.AsyncClient, reference: Any) -> None:
    one_to_many = await client.post(
        "/score", json={"model": "ce", "text_1": QUERY, "text_2": DOCS[:3]}
    )
    assert one_to_many.status_code == 200, one_to_many.text
    body = one_to_many.json()
    assert body["object"] == "list" and [d["object"] for d in body["data"]] == ["score"] * 3
    expected = reference.predict([(QUERY, d) for d in DOCS[:3]])
    np.testing.assert_allclose([d["score"] for d in body["data"]], expected, atol=1e-4)
    pairwise = await client.post(
        "/score", json={"model": "ce", "queries": [QUERY, "fox"], "documents": DOCS[:2]}
    )
    expected = reference.predict([(QUERY, DOCS[0]), ("fox", DOCS[1])])
    np.testing.assert_allclose([d["score"] for d in pairwise.json()["data"]], expected, atol=1e-4)
    cos = await client.post(
        "/score", json={"model": "minilm", "text_1": "a cat", "text_2": DOCS[:2]}
    )
    assert cos.status_code == 200, cos.text
    vecs = (
        await client.post("/v1/embeddings", json={"model": "minilm", "input": ["a cat", *DOCS[:2]]})
    ).json()["data"]
    v = np.array([d["embedding"] for d in vecs])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose([d["score"] for d in cos.json()["data"]], v[1:] @ v[0], atol=1e-5)


async def test_the_other_tasks_route_is_a_400_naming_the_task(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/embeddings", json={"model": "ce", "input": "hello"})
    assert r.status_code == 400
    assert "task rerank" in r.json()["error"]["message"] and r.json()["error"]["param"] == "model"
    r = await client.post("/v2/rerank", json={"model": "minilm", "query": "q", "documents": ["d"]})
    assert r.status_code == 400
    assert "task embed" in r.json()["error"]["message"] and r.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v2/rerank", {"model": "ce", "query": "", "documents": ["d"]}, "query"),
        ("/v2/rerank", {"model": "ce", "query": "q", "documents": []}, "documents"),
        ("/v2/rerank", {"model": "ce", "query": "q", "documents": ["d"] * 26}, "documents"),
        ("/v2/rerank", {"model": "ce", "query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
        ("/rerank", {"model": "ce", "query": "q", "texts": []}, "texts"),
        ("/score", {"model": "ce", "text_1": "q", "text_2": []}, "text_2"),
        ("/score", {"model": "ce", "text_1": ["a", "b"], "text_2": ["x", "y", "z"]}, "text_1"),
        (
            "/v1/rerank",
            {"model": "ce-refuse", "query": "q", "documents": ["ok", "word " * 100]},
            "documents[1]",
        ),
        (
            "/rerank",
            {"model": "ce-short", "query": "q", "texts": ["word " * 100], "truncate": False},
            "texts[0]",
        ),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_field(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    r = await client.post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param, r.text


async def test_long_document_scored_by_its_best_window(
    client: httpx.AsyncClient, reference: Any, cross_encoder_dir: Path
) -> None:
    from tokenizers import Tokenizer

    from embedhost.pairs import window_starts

    # With a 48-token window, filler fills the first window; the passage that scores best
    # (on this seeded head) comes after it. The reference scores each window's text.
    scores = reference.predict([(QUERY, d) for d in DOCS])
    best, worst = DOCS[int(np.argmax(scores))], DOCS[int(np.argmin(scores))]
    long_doc = " ".join([worst] * 3 + [best] * 3)
    tok = Tokenizer.from_file(str(cross_encoder_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    q = tok.encode(QUERY, add_special_tokens=False).ids
    d = tok.encode(long_doc, add_special_tokens=False).ids
    room = 48 - 3 - len(q)
    windows = [tok.decode(d[s : s + room]) for s in window_starts(len(d), room)]
    by_window = reference.predict([(QUERY, w) for w in windows])
    assert len(windows) > 1 and int(np.argmax(by_window)) > 0
    # The other documents: each below the best window, one above the first window.
    others = [x for x, s in zip(DOCS, scores, strict=True) if s < by_window.max() - 1e-3]
    assert any(s > by_window[0] for s in reference.predict([(QUERY, x) for x in others]))
    docs = [*others, long_doc]
    windowed = await client.post(
        "/v1/rerank", json={"model": "ce-short", "query": QUERY, "documents": docs}
    )
    assert windowed.status_code == 200, windowed.text
    first = windowed.json()["results"][0]
    assert first["index"] == len(docs) - 1
    assert abs(first["relevance_score"] - by_window.max()) < 1e-3
    cut = await client.post(
        "/v1/rerank",
        json={"model": "ce-short", "query": QUERY, "documents": docs, "truncate": True},
    )
    assert cut.json()["results"][0]["index"] != len(docs) - 1
    # usage counts every window's tokens: more than the cut request's
    assert windowed.json()["usage"]["total_tokens"] > cut.json()["usage"]["total_tokens"]


async def test_readme_examples_run(client: httpx.AsyncClient, cross_encoder_dir: Path) -> None:
    import json
    import re

    import yaml

    from embedhost.config import load_settings
    from tests.support import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Rerank\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    config = yaml.safe_load(block.replace("/models/ms-marco-MiniLM-L-6-v2", str(cross_encoder_dir)))
    settings = load_settings(None, config)
    assert [m.task for m in settings.models] == [None, "rerank"]
    calls = re.findall(r"curl -s localhost:8008(\S+) .*?-d '(\{.*?\})'", section)
    assert len(calls) == 5
    for path, body in calls:
        r = await client.post(path, json=json.loads(body.replace('"reranker"', '"ce"')))
        assert r.status_code == 200, (path, r.text)


async def test_metrics_count_scored_documents_by_task(client: httpx.AsyncClient) -> None:
    r = await client.post("/rerank", json={"model": "ce", "query": "q", "texts": ["a", "b", "c"]})
    assert r.status_code == 200
    text = (await client.get("/metrics")).text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("embedhost_scored_documents_total{") and 'model="ce"' in ln
    )
    assert 'task="rerank"' in line and float(line.rsplit(" ", 1)[1]) >= 3

"""The cross-encoder fixture as a GGUF (llama.cpp's converter), served by the llama_cpp
engine, against llama.cpp's own computation: ``llama-server --reranking`` on the same
file (its /rerank), and a torch reference that does what llama.cpp does (the classifier
on the [CLS] state, no pooler, token types all zero). Scores within 1e-4 of llama-server's,
within 1e-2 of torch's (ggml's GELU is an f16 table), the same order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from embedhost.config import ModelConfig
from embedhost.engines import create_engine
from embedhost.pairs import build, content_ids, load_template
from embedhost.tokenization import GGUFTokenizer
from tests.engines.gguf_build import convert
from tests.support.crossencoder import NAME
from tests.support.engines import SENTENCES
from tests.support.llama_server import start_reranking
from tests.support.servers import stop_process

pytestmark = pytest.mark.slow

QUERY = "Where do plants store the energy they take from light?"
DOCS = SENTENCES


@pytest.fixture(scope="module", params=["f32", "f16"])
def gguf(request: pytest.FixtureRequest, cross_encoder_dir: Path) -> Path:
    return convert(cross_encoder_dir, request.param, f"{NAME}-{request.param}.gguf")


@pytest.fixture(scope="module")
def scored(gguf: Path) -> tuple[np.ndarray, list[list[int]]]:
    """The engine's logits of (QUERY, doc) pairs, and the pairs' token ids."""
    config = ModelConfig(name="ce", engine="llama_cpp", path=str(gguf), warmup=False, threads=1)
    engine = create_engine(config)
    info = engine.load()
    try:
        assert info.task == "rerank" and info.dims == 1
        tok = GGUFTokenizer(gguf)
        pairs = build(
            load_template(config),
            content_ids(tok, [QUERY], "query"),
            content_ids(tok, DOCS, "documents"),
            info.max_tokens,
            "refuse",
        )
        out = np.asarray(engine.embed(pairs.seqs))[:, 0]
    finally:
        engine.close()
    return out, pairs.seqs


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, proc = start_reranking(gguf, tmp_path_factory.mktemp("llama-server") / "log")
    yield url
    stop_process(proc)


def _alone(gguf: Path, seqs: list[list[int]]) -> np.ndarray:
    """Each pair in a decode of its own."""
    config = ModelConfig(name="ce", engine="llama_cpp", path=str(gguf), warmup=False, threads=1)
    engine = create_engine(config)
    engine.load()
    try:
        return np.array([float(engine.embed([s])[0, 0]) for s in seqs])
    finally:
        engine.close()


def test_each_pair_matches_llama_server(scored: Any, gguf: Path, llama_server: str) -> None:
    _, seqs = scored
    got = _alone(gguf, seqs)
    theirs = []
    for doc in DOCS:
        r = httpx.post(
            f"{llama_server}/rerank", json={"query": QUERY, "documents": [doc]}, timeout=60
        )
        assert r.status_code == 200, r.text
        theirs.append(r.json()["results"][0]["relevance_score"])
    np.testing.assert_allclose(got, theirs, atol=1e-4)


def test_matches_llama_server_rerank(scored: Any, llama_server: str) -> None:
    """Batched: several pairs per decode, as the server runs them (ggml's kernels differ
    with the batch's size, so the last digits do)."""
    got, _ = scored
    r = httpx.post(
        f"{llama_server}/rerank",
        json={"query": QUERY, "documents": DOCS, "top_n": len(DOCS)},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    theirs = np.zeros(len(DOCS))
    for item in r.json()["results"]:
        theirs[item["index"]] = item["relevance_score"]
    np.testing.assert_allclose(got, theirs, atol=1e-3)
    assert list(np.argsort(-got)) == list(np.argsort(-theirs))


def test_matches_torch_as_llama_cpp_computes(
    scored: Any, cross_encoder_dir: Path, gguf: Path
) -> None:
    from transformers import BertForSequenceClassification

    got, seqs = scored
    model = BertForSequenceClassification.from_pretrained(cross_encoder_dir, dtype=torch.float32)
    ref = []
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([s])
            hidden = model.bert(
                input_ids=ids, token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
            ref.append(float(model.classifier(hidden[:, 0])[0, 0]))
    # ggml computes GELU through an f16 table (and f16 weights round): close, not exact.
    np.testing.assert_allclose(got, ref, atol=1e-2)
    assert list(np.argsort(-got)) == list(np.argsort(-np.asarray(ref)))

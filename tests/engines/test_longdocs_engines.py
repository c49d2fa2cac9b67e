"""Long documents on the three real engines (transformers, ONNX Runtime, llama.cpp), served
side by side through the real app with a window of 48 tokens:

- chunk-and-pool equals the token-weighted mean of each window embedded alone;
- each window's vector equals its text (``text[start:end]``) embedded alone;
- late chunks (transformers, ONNX) equal a reference pooled in the test from the model's
  token states with torch, and differ from the vectors of the chunks embedded alone;
  llama.cpp's token states (pooling none) give the same chunks;
- /tokenize ids are the Hugging Face tokenizer's (llama.cpp's for the GGUF) and /decode
  inverts them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from embedhost.tokenization import GGUFTokenizer, HFTokenizer
from tests.support.app import app_client, make_settings

DOC = (
    "Embeddings map text to points in a space where similar meanings are close together. "
    "A vector database stores them and finds the nearest neighbours of a query quickly. "
    "Long documents exceed the window of a model, so a server cuts them into windows. "
    "Each window is embedded on its own, and the vectors are pooled into a single one. "
    "Late chunking instead runs the whole text once and pools the states of each chunk."
)
LATE = (
    "Berlin is the capital of Germany. It has about 3.8 million inhabitants. "
    "The city is known for its museums."
)
NAMES = ("minilm-pt", "minilm-onnx", "minilm-gguf")
_COMMON: dict[str, Any] = {
    "max_input_tokens": 48,
    "truncation": "chunk",
    "chunk_overlap_tokens": 8,
    "threads": 1,
    "warmup": False,
}


@pytest_asyncio.fixture(scope="module")
async def client(gguf_f16: Path, onnx_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    from tests.support import MINILM

    settings = make_settings(
        [
            {
                "name": NAMES[0],
                "engine": "transformers",
                "path": MINILM,
                "dtype": "float32",
                **_COMMON,
            },
            {"name": NAMES[1], "engine": "onnx", "path": str(onnx_dir), **_COMMON},
            {"name": NAMES[2], "engine": "llama_cpp", "path": str(gguf_f16), **_COMMON},
        ]
    )
    async with app_client(settings) as (_, c):
        yield c


@pytest.fixture(scope="module")
def torch_states(minilm_dir: Path) -> Any:
    """The model's token states for a text, with torch (float32): the late reference."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    tok = HFTokenizer(minilm_dir)

    def states(text: str) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
        (enc,) = tok.encode_offsets([text])
        with torch.inference_mode():
            ids = torch.tensor([enc.ids])
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        return out.numpy(), enc.offsets

    return states


async def _embed(client: httpx.AsyncClient, model: str, inputs: list[str]) -> httpx.Response:
    r = await client.post("/v1/embeddings", json={"model": model, "input": inputs})
    assert r.status_code == 200, r.text
    return r


def _rows(r: httpx.Response) -> np.ndarray:
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("name", NAMES)
async def test_chunk_and_pool_is_the_weighted_mean_of_windows_embedded_alone(
    client: httpx.AsyncClient, name: str
) -> None:
    r = await client.post("/embed", json={"model": name, "text": DOC, "chunking": {}})
    assert r.status_code == 200, r.text
    windows = r.json()["chunk_embeddings"][0]
    assert len(windows) >= 3
    assert all(w["tokens"] <= 48 for w in windows)

    r = await _embed(client, name, [DOC])
    assert r.headers["X-Embedhost-Chunks"] == str(len(windows))
    assert r.json()["usage"]["prompt_tokens"] == sum(w["tokens"] for w in windows)
    pooled = _rows(r)[0]

    # Each window's text, alone (with the model's special tokens): it fits the window.
    texts = [DOC[w["start"] : w["end"]] for w in windows]
    alone = _rows(await _embed(client, name, texts))
    got = np.array([w["embedding"] for w in windows], dtype=np.float32)
    assert (_unit(got) * _unit(alone)).sum(axis=1).min() >= 0.9999, name
    counts = np.array([w["tokens"] for w in windows], dtype=np.float64)[:, None]
    ref = _unit((alone * counts).sum(axis=0) / counts.sum())
    assert float(_unit(pooled) @ ref) >= 0.9999, name


@pytest.mark.parametrize("name", NAMES)
async def test_late_chunks_agree_with_torch_token_states(
    client: httpx.AsyncClient, torch_states: Any, name: str
) -> None:
    states, offsets = torch_states(LATE)
    floor = 0.999 if name == "minilm-gguf" else 0.9999  # f16 weights
    for chunking in ({"mode": "late"}, {"mode": "late", "spans": [[[0, 20], [20, len(LATE)]]]}):
        r = await client.post("/embed", json={"model": name, "text": LATE, "chunking": chunking})
        assert r.status_code == 200, r.text
        chunks = r.json()["chunk_embeddings"][0]
        if "spans" not in chunking:
            # Sentences: the three of them fit in one chunk of the model's window.
            assert [(c["start"], c["end"]) for c in chunks] == [(0, len(LATE))]
            r = await client.post(
                "/embed",
                json={"model": name, "text": LATE, "chunking": {"mode": "late", "max_tokens": 10}},
            )
            chunks = r.json()["chunk_embeddings"][0]
            assert [LATE[c["start"] : c["end"]] for c in chunks] == [
                "Berlin is the capital of Germany.",
                "It has about 3.8 million inhabitants.",
                "The city is known for its museums.",
            ]
        got = np.array([c["embedding"] for c in chunks], dtype=np.float32)
        ref = []
        for c in chunks:
            idx = [
                i
                for i, o in enumerate(offsets)
                if o is not None and o[0] < c["end"] and o[1] > c["start"]
            ]
            assert c["tokens"] == len(idx)
            ref.append(states[idx].mean(axis=0))
        cos = (_unit(got) * _unit(np.array(ref))).sum(axis=1)
        assert cos.min() >= floor, (name, cos)
        # They carry the context: not the vectors of the chunks' texts alone.
        alone = _rows(await _embed(client, name, [LATE[c["start"] : c["end"]] for c in chunks]))
        assert ((_unit(got) * _unit(alone)).sum(axis=1) < 0.999).all(), name

    r = await client.post("/embed", json={"model": name, "text": DOC, "chunking": {"mode": "late"}})
    assert r.status_code == 413
    assert r.json()["error"]["param"] == "input[0]"


async def test_tokenize_is_the_models_tokenizer_and_decode_inverts_it(
    client: httpx.AsyncClient, minilm_dir: Path, gguf_f16: Path
) -> None:
    texts = ["the quick brown fox jumps over the lazy dog", "Résumé of a naïve café 🙂 HELLO"]
    hf = HFTokenizer(minilm_dir).encode_batch(texts)
    gguf = GGUFTokenizer(gguf_f16).encode_batch(texts)
    for name, want in ((NAMES[0], hf), (NAMES[1], hf), (NAMES[2], gguf)):
        r = await client.post("/tokenize", json={"model": name, "inputs": texts})
        assert r.status_code == 200, r.text
        out = r.json()
        assert [[t["id"] for t in seq] for seq in out] == want, name
        for text, seq in zip(texts, out, strict=True):
            data = text.encode()
            for t in seq:
                if t["start"] is not None:
                    assert data[t["start"] : t["stop"]].decode() == t["text"], name
            assert sum(t["start"] is not None for t in seq) >= len(seq) - 2, name
        r = await client.post("/decode", json={"model": name, "ids": want})
        assert r.status_code == 200
        assert r.json()[0] == texts[0], name
        assert r.json()[1].strip().startswith("resume of a naive cafe"), name

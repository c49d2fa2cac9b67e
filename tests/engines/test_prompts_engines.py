"""Prompts on the three real engines against sentence-transformers' own
``encode(..., prompt_name=...)``, on a model directory whose
``config_sentence_transformers.json`` declares the prompts (made here from the packaged
MiniLM). The transformers engine reads the prompts from that file; the GGUF and ONNX
conversions declare the same prompts in their config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embedhost.tokenization import GGUFTokenizer, HFTokenizer
from tests.support.app import app_client, make_settings
from tests.support.engines import SENTENCES, cosine_rows

PROMPTS = {
    "query": "query: ",
    "passage": "passage: ",
    "retrieval": "Represent this sentence for searching relevant passages: ",
}


@pytest.fixture(scope="module")
def prompted_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged MiniLM (files linked, not copied) plus a sentence-transformers config
    that declares prompts and a default one."""
    out = tmp_path_factory.mktemp("prompted") / "minilm-prompted"
    out.mkdir()
    for f in minilm_dir.iterdir():
        if f.name != "config_sentence_transformers.json":
            (out / f.name).symlink_to(f)
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "passage"})
    )
    return out


async def test_prompts_match_sentence_transformers_on_every_engine(
    prompted_dir: Path, gguf_f16: Path, onnx_dir: Path
) -> None:
    st = SentenceTransformer(str(prompted_dir), device="cpu")
    # (recent sentence-transformers add an empty "document" prompt of their own)
    assert st.prompts.items() >= PROMPTS.items() and st.default_prompt_name == "passage"
    expected = {
        name: st.encode(SENTENCES, prompt_name=name, normalize_embeddings=True) for name in PROMPTS
    }
    settings = make_settings(
        [
            {"name": "st", "path": str(prompted_dir), "dtype": "float32", "threads": 1},
            {
                "name": "gguf",
                "engine": "llama_cpp",
                "path": str(gguf_f16),
                "quantization": "f16",
                "prompts": PROMPTS,
                "default_prompt": "passage",
            },
            {
                "name": "onnx",
                "engine": "onnx",
                "path": str(onnx_dir),
                "threads": 1,
                "prompts": PROMPTS,
                "default_prompt": "passage",
            },
        ]
    )
    hf = HFTokenizer(prompted_dir)
    gg = GGUFTokenizer(gguf_f16)
    async with app_client(settings) as (_, client):
        cards = {c["id"]: c for c in (await client.get("/v1/models")).json()["data"]}
        # Read from the model directory's config_sentence_transformers.json.
        assert cards["st"]["prompts"] == PROMPTS
        assert cards["st"]["default_prompt"] == "passage"
        for model, tok in (("st", hf), ("gguf", gg), ("onnx", hf)):
            # (request field, value, the prompt sentence-transformers applies)
            asks = [
                ({"input_type": "query"}, "query"),
                ({"input_type": "document"}, "passage"),  # document -> the model's "passage"
                ({"prompt_name": "retrieval"}, "retrieval"),
                ({}, "passage"),  # the default prompt
            ]
            for extra, name in asks:
                r = await client.post(
                    "/v1/embeddings", json={"model": model, "input": SENTENCES, **extra}
                )
                assert r.status_code == 200, r.text
                body = r.json()
                vecs = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
                cos = cosine_rows(vecs, expected[name])
                assert cos.min() >= 0.999, (model, name, cos.min())
                # usage counts the prompt's tokens, in the model's own tokenizer
                ids = tok.encode_batch([PROMPTS[name] + s for s in SENTENCES])
                assert body["usage"]["prompt_tokens"] == sum(len(i) for i in ids), (model, name)

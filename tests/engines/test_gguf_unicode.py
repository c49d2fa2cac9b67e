"""Lone UTF-16 surrogates and arbitrary text with the GGUF (llama.cpp) tokenizer: the same
property as the transformers tokenizer's, and the reported requests against a served GGUF
model (a real llama.cpp worker), which answer 400 naming the input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedhost.tokenization import GGUFTokenizer, Policy
from tests.support.app import app_client, make_settings
from tests.support.strategies import PROPERTY, json_text, policies
from tests.support.tokenization import check_prepare_texts


@pytest.fixture(scope="module")
def gguf_tok(gguf_f16: Path) -> GGUFTokenizer:
    return GGUFTokenizer(gguf_f16)


@PROPERTY
@given(
    texts=st.lists(json_text, min_size=1, max_size=6),
    max_tokens=st.integers(min_value=1, max_value=24),
    policy=policies,
)
def test_gguf_prepare_texts_returns_or_refuses_cleanly(
    gguf_tok: GGUFTokenizer, texts: list[str], max_tokens: int, policy: Policy
) -> None:
    check_prepare_texts(gguf_tok, texts, max_tokens, policy)


async def test_served_gguf_model_answers_400_to_lone_surrogates(gguf_f16: Path) -> None:
    settings = make_settings(
        [{"name": "minilm-gguf", "engine": "llama_cpp", "path": str(gguf_f16), "threads": 1}]
    )
    cases = [
        ("/v1/embeddings", b'{"input": "\\ud800"}', "input[0]"),
        ("/v1/embeddings", b'{"input": ["ok", "\\ud800x"]}', "input[1]"),
        ("/embed", b'{"text": "\\udfff"}', "input[0]"),
        ("/embed", b'{"texts": ["ok", "fine", "\\udbff\\udbff"]}', "input[2]"),
    ]
    async with app_client(settings) as (_, client):
        for path, raw, param in cases:
            r = await client.post(path, content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert (err["type"], err["code"], err["param"]) == (
                "invalid_request_error",
                "invalid_request",
                param,
            )
        # The same texts made whole (a surrogate pair) are embedded.
        r = await client.post(
            "/v1/embeddings",
            content=b'{"input": ["ok", "\\ud83d\\ude00x"]}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][1]["embedding"]) == 384

"""Property-based tests of the tokenization path with MiniLM's tokenizer (hypothesis):
for any texts (lone surrogates included) and any token ids, preparing either returns
sequences within the limit or raises a client error (4xx) naming the input; never anything
else. The GGUF tokenizer has the same test in tests/engines/test_gguf_unicode.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedhost.errors import status_for
from embedhost.tokenization import (
    HFTokenizer,
    Policy,
    prepare_ids,
)
from tests.support.strategies import PROPERTY, json_text, policies
from tests.support.tokenization import attempt, check_prepare_texts


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


@PROPERTY
@given(
    texts=st.lists(json_text, min_size=1, max_size=6),
    max_tokens=st.integers(min_value=1, max_value=24),
    policy=policies,
)
def test_prepare_texts_returns_or_refuses_cleanly(
    tok: HFTokenizer, texts: list[str], max_tokens: int, policy: Policy
) -> None:
    check_prepare_texts(tok, texts, max_tokens, policy)


@PROPERTY
@given(
    seqs=st.lists(
        st.lists(st.integers(min_value=0, max_value=2**64), min_size=1, max_size=8),
        min_size=1,
        max_size=4,
    ),
    max_tokens=st.integers(min_value=1, max_value=8),
    policy=policies,
)
def test_prepare_ids_returns_or_refuses_cleanly(
    tok: HFTokenizer, seqs: list[list[int]], max_tokens: int, policy: Policy
) -> None:
    out, error = attempt(prepare_ids, tok, seqs, max_tokens, policy)
    if error is not None:
        assert 400 <= status_for(error) < 500, error
        return
    assert out is not None
    assert all(0 <= t < tok.vocab_size for s in out.ids for t in s)
    assert all(len(s) <= max_tokens for s in out.ids)

"""Property-based tests of the tokenization path with MiniLM's tokenizer (hypothesis):
for any texts (lone surrogates included) and any token ids, preparing either returns
sequences within the limit or raises a client error (4xx) naming the input; never anything
else. The GGUF tokenizer has the same test in tests/engines/test_gguf_unicode.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedhost.errors import EmbedhostError, InvalidRequest, status_for
from embedhost.tokenization import (
    HFTokenizer,
    Policy,
    Tokenized,
    Tokenizer,
    prepare_ids,
    prepare_texts,
)
from tests.api.test_properties_api import json_text

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
policies = st.sampled_from(["right", "left", "refuse"])


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


def _attempt(
    fn: Callable[..., Tokenized], *args: Any
) -> tuple[Tokenized | None, EmbedhostError | None]:
    """``fn(*args)``, or the client error it raised (anything else propagates)."""
    try:
        return fn(*args), None
    except EmbedhostError as exc:
        return None, exc


def check_prepare_texts(tok: Tokenizer, texts: list[str], max_tokens: int, policy: Policy) -> None:
    bad = next((i for i, t in enumerate(texts) if any(0xD800 <= ord(c) <= 0xDFFF for c in t)), None)
    out, error = _attempt(prepare_texts, tok, texts, max_tokens, policy)
    if error is not None:
        assert 400 <= status_for(error) < 500, error
        if bad is not None:
            assert isinstance(error, InvalidRequest)
            assert error.param == f"input[{bad}]"
        return
    assert out is not None
    assert bad is None, "a text with a lone surrogate was tokenized"
    assert len(out.ids) == len(texts) == len(out.counts) == len(out.truncated)
    assert all(len(s) == n <= max_tokens for s, n in zip(out.ids, out.counts, strict=True))
    assert all(0 <= t < tok.vocab_size for s in out.ids for t in s)


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
    out, error = _attempt(prepare_ids, tok, seqs, max_tokens, policy)
    if error is not None:
        assert 400 <= status_for(error) < 500, error
        return
    assert out is not None
    assert all(0 <= t < tok.vocab_size for s in out.ids for t in s)
    assert all(len(s) <= max_tokens for s in out.ids)

"""The tokenization property, for any tokenizer: preparing texts either returns sequences
within the limit or raises a client error (4xx) naming the input; never anything else.
tests/unit/test_tokenization_properties.py runs it on MiniLM's tokenizer,
tests/engines/test_gguf_unicode.py on the GGUF one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embedhost.errors import EmbedhostError, InvalidRequest, status_for
from embedhost.tokenization import Policy, Tokenized, Tokenizer, prepare_texts


def attempt(
    fn: Callable[..., Tokenized], *args: Any
) -> tuple[Tokenized | None, EmbedhostError | None]:
    """``fn(*args)``, or the client error it raised (anything else propagates)."""
    try:
        return fn(*args), None
    except EmbedhostError as exc:
        return None, exc


def check_prepare_texts(tok: Tokenizer, texts: list[str], max_tokens: int, policy: Policy) -> None:
    bad = next((i for i, t in enumerate(texts) if any(0xD800 <= ord(c) <= 0xDFFF for c in t)), None)
    out, error = attempt(prepare_texts, tok, texts, max_tokens, policy)
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

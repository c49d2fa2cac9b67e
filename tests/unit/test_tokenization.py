"""Counting and truncation with the model's own tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from embedhost.errors import InputTooLong, InvalidRequest
from embedhost.tokenization import HFTokenizer, fit, prepare_ids, prepare_texts

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors that capture meaning.",
    "short",
    "A longer sentence, with punctuation; numbers like 3.14159 and unicode: café, naïve, 東京.",
]


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


def test_matches_transformers_tokenizer(tok: HFTokenizer, minilm_dir: Path) -> None:
    ref = AutoTokenizer.from_pretrained(str(minilm_dir))
    assert tok.encode_batch(TEXTS) == [ref(t)["input_ids"] for t in TEXTS]
    assert tok.prefix_specials == 1
    assert tok.suffix_specials == 1
    assert tok.vocab_size == 30522


def test_right_truncation_keeps_specials_like_transformers(
    tok: HFTokenizer, minilm_dir: Path
) -> None:
    ref = AutoTokenizer.from_pretrained(str(minilm_dir))
    long = " ".join(TEXTS * 5)
    out = prepare_texts(tok, [long], 16, "right")
    assert out.ids[0] == ref(long, truncation=True, max_length=16)["input_ids"]
    assert out.counts == [16]
    assert out.truncated == [True]


def test_left_truncation_keeps_the_end(tok: HFTokenizer) -> None:
    full = tok.encode_batch(["one two three four five six seven"])[0]
    cut, was = fit(full, 5, "left", 1, 1, 0)
    assert was
    assert cut == [full[0], *full[-4:-1], full[-1]]


def test_refuse_names_limit_and_length(tok: HFTokenizer) -> None:
    with pytest.raises(InputTooLong) as info:
        prepare_texts(tok, ["short", " ".join(["word"] * 30)], 10, "refuse")
    assert "input 1 has 32 tokens" in info.value.message
    assert "limit of 10" in info.value.message


def test_under_limit_untouched(tok: HFTokenizer) -> None:
    out = prepare_texts(tok, TEXTS, 256, "refuse")
    assert out.truncated == [False] * len(TEXTS)
    assert out.total == sum(len(i) for i in tok.encode_batch(TEXTS))


def test_token_ids_used_as_given_and_checked(tok: HFTokenizer) -> None:
    out = prepare_ids(tok, [[5, 6, 7]], 16, "right")
    assert out.ids == [[5, 6, 7]]
    with pytest.raises(InvalidRequest, match="outside this model's vocabulary"):
        prepare_ids(tok, [[5, 30522]], 16, "right")
    cut = prepare_ids(tok, [list(range(1, 21))], 16, "left")
    assert cut.ids == [list(range(5, 21))]

"""The GGUF tokenizer's character offsets (llama.cpp gives none: each token's printed text
is found in the input) over Unicode texts (hypothesis): the ids are llama.cpp's, every
span slices the text in order, and chunk windows planned on them slice it too."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedhost import longdocs
from embedhost.tokenization import GGUFTokenizer
from tests.support.strategies import PROPERTY

_alphabet = st.characters(blacklist_categories=("Cs",))
texts = st.lists(
    st.one_of(
        st.text(_alphabet, min_size=1, max_size=8),
        st.sampled_from([" ", ". ", "Déjà", "🙂", "日本語", "NAÏVE", "don't", "3.14"]),
    ),
    min_size=1,
    max_size=40,
).map("".join)


@pytest.fixture(scope="module")
def gguf_tok(gguf_f16: Path) -> GGUFTokenizer:
    return GGUFTokenizer(gguf_f16)


@PROPERTY
@given(text=texts, room=st.integers(2, 30), overlap=st.integers(0, 10))
def test_gguf_offsets_slice_the_text_in_order(
    gguf_tok: GGUFTokenizer, text: str, room: int, overlap: int
) -> None:
    (enc,) = gguf_tok.encode_offsets([text])
    assert enc.ids == gguf_tok.encode_batch([text])[0]
    assert enc.special[0] and enc.special[-1] and not any(enc.special[1:-1])
    last = 0
    for off in enc.offsets:
        if off is None:
            continue
        a, b = off
        assert last <= a < b <= len(text)
        assert text[a:b].strip() == text[a:b]
        last = a
    plan = longdocs.plan(gguf_tok, [text], room + 2, None, overlap, 10_000)
    for w, ids in zip(plan.spans, plan.windows.ids, strict=True):
        assert len(ids) <= room + 2
        if w.start is not None and w.end is not None:
            assert 0 <= w.start <= w.end <= len(text)

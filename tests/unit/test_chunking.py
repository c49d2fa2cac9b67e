"""Long documents, the pure part (embedhost.chunking) and the service's window plan
(embedhost.longdocs.plan) on MiniLM's real tokenizer: property tests over window sizes,
overlaps and Unicode texts (spans slice the text, no token lost, none doubled beyond the
overlap), sentence chunks, the llama.cpp offset alignment, and the /tokenize byte offsets."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedhost import chunking, longdocs, tokenizing
from embedhost.errors import EmbedhostError, PayloadTooLarge, status_for
from embedhost.tokenization import HFTokenizer, Prompt
from tests.support.strategies import PROPERTY

# Unicode text without lone surrogates (refused before chunking, tested elsewhere), with
# plenty of spaces, punctuation and sentence ends so that boundaries vary.
_alphabet = st.characters(blacklist_categories=("Cs",))
words = st.lists(
    st.one_of(
        st.text(_alphabet, min_size=1, max_size=8),
        st.sampled_from([" ", "  ", ". ", "! ", "\n", "déjà", "🙂", "日本語", "naïve", "?"]),
    ),
    min_size=1,
    max_size=60,
).map("".join)


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


def _offsets(draw_gaps: list[bool]) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    pos = 0
    for gap in draw_gaps:
        pos += 1 if gap else 0
        out.append((pos, pos + 2))
        pos += 2
    return out


def _check_cover(windows: list[chunking.Window], n: int, capacity: int, overlap: int) -> None:
    assert windows[0].first == 0 and windows[-1].stop == n
    used = min(overlap, (capacity - 1) // 2)
    for w in windows:
        assert 0 < w.size <= capacity or n == 0
    for a, b in itertools.pairwise(windows):
        assert a.first < b.first  # moving on
        assert b.first <= a.stop  # no token lost between them
        assert a.stop - b.first <= used  # none doubled beyond the overlap


@PROPERTY
@given(
    gaps=st.lists(st.booleans(), max_size=400),
    capacity=st.integers(1, 80),
    overlap=st.integers(0, 100),
)
def test_windows_cover_every_token_and_overlap_at_most_as_asked(
    gaps: list[bool], capacity: int, overlap: int
) -> None:
    n = len(gaps)
    offsets = _offsets(gaps)
    windows = chunking.plan_windows(n, capacity, overlap, offsets)
    _check_cover(windows, n, capacity, overlap)
    for w in windows:
        if w.size:
            assert (w.start, w.end) == (offsets[w.first][0], offsets[w.stop - 1][1])  # type: ignore[index]


def test_windows_end_before_a_word_start_when_one_is_near() -> None:
    # Tokens 4 and 5 are one word (no gap between them): the first window of 5 tokens ends
    # before token 4 instead of between 4 and 5, and the next one starts there.
    gaps = [True] * 10
    gaps[5] = False
    windows = chunking.plan_windows(10, 5, 0, _offsets(gaps))
    assert [(w.first, w.stop) for w in windows] == [(0, 4), (4, 9), (9, 10)]


@PROPERTY
@given(text=words, room=st.integers(4, 40), overlap=st.integers(0, 30), prompt=st.booleans())
def test_plan_on_real_tokens_slices_and_loses_nothing(
    tok: HFTokenizer, text: str, room: int, overlap: int, prompt: bool
) -> None:
    p = Prompt("query", "query: ") if prompt else None
    max_tokens = room + 2 + (2 if prompt else 0)  # [CLS] [SEP] and "query :"
    plan = longdocs.plan(tok, [text], max_tokens, p, overlap, 10_000)
    (content,) = tok.encode_offsets([(p.text if p else "") + text])
    head = 1 + (2 if prompt else 0)
    body = content.ids[head:-1]
    windows = plan.spans
    _check_cover(windows, len(body), room, overlap) if body else None
    for w, ids in zip(windows, plan.windows.ids, strict=True):
        assert len(ids) <= max_tokens
        assert ids[:head] == content.ids[:head] and ids[-1] == content.ids[-1]
        assert ids[head:-1] == body[w.first : w.stop]
        if w.start is not None and w.end is not None:
            assert 0 <= w.start <= w.end <= len(text)
            assert text[w.start : w.end].strip() == text[w.start : w.end]  # no stray space
    assert plan.windows.counts == [len(s) for s in plan.windows.ids]


def test_plan_refuses_more_windows_than_the_limit_naming_the_input(tok: HFTokenizer) -> None:
    long = "word " * 200
    with pytest.raises(PayloadTooLarge) as err:
        longdocs.plan(tok, ["short", long], 32, None, 4, 5)
    assert err.value.param == "input[1]"
    assert "limits.max_chunks_per_input" in err.value.message


def test_pool_is_the_token_weighted_mean_renormalized() -> None:
    v = np.array([[1, 0], [0, 1]], dtype=np.float32)
    out = chunking.pool(v, [3, 1], normalize=False)
    np.testing.assert_allclose(out, [0.75, 0.25])
    out = chunking.pool(v, [3, 1], normalize=True)
    np.testing.assert_allclose(out, np.array([0.75, 0.25]) / np.hypot(0.75, 0.25), rtol=1e-6)


@PROPERTY
@given(text=words, max_tokens=st.integers(1, 30))
def test_sentence_chunks_slice_in_order_within_the_budget(
    tok: HFTokenizer, text: str, max_tokens: int
) -> None:
    (enc,) = tok.encode_offsets([text])
    offsets = enc.offsets[1:-1]
    chunks = chunking.sentence_chunks(text, offsets, max_tokens)
    last = 0
    for a, b in chunks:
        assert last <= a < b <= len(text)
        assert len(chunking.tokens_in(offsets, (a, b))) <= max_tokens
        last = b
    # Every token is in some chunk.
    covered = {i for c in chunks for i in chunking.tokens_in(offsets, c)}
    assert covered == {i for i, o in enumerate(offsets) if o is not None}


def test_sentences_split_at_ends_and_line_breaks() -> None:
    text = "One two. Three four!\nFive six? Seven"
    assert [text[a:b] for a, b in chunking.sentence_spans(text)] == [
        "One two.",
        "Three four!",
        "Five six?",
        "Seven",
    ]


def test_align_finds_folded_pieces_and_gives_unknowns_the_gap() -> None:
    text = "Résumé of a naïve café, embeddings! 🙂 HELLO"
    pieces: list[str | None] = [None, " resume", " of", " a", " naive", " cafe", " ,", " em"]
    pieces += ["bed", "ding", "s", " !", "[UNK]", " hello", None]
    offsets = chunking.align(text, pieces)
    got = [text[o[0] : o[1]] if o else None for o in offsets]
    want = [None, "Résumé", "of", "a", "naïve", "café", ",", "em", "bed", "ding", "s", "!"]
    assert got == [*want, "🙂", "HELLO", None]


@PROPERTY
@given(text=words)
def test_tokenize_byte_offsets_slice_the_utf8_text(tok: HFTokenizer, text: str) -> None:
    (tokens,) = tokenizing.tokenize_texts(tok, [text], True, None, True, 10**6)
    data = text.encode("utf-8")
    assert [t["id"] for t in tokens] == tok.encode_batch([text])[0]
    for t in tokens:
        if t["special"]:
            assert t["start"] is None and t["char_start"] is None
            continue
        assert data[t["start"] : t["stop"]].decode("utf-8") == t["text"]
        assert text[t["char_start"] : t["char_stop"]] == t["text"]


@PROPERTY
@given(
    text=words,
    max_tokens=st.one_of(st.none(), st.integers(1, 40)),
    spans=st.one_of(
        st.none(), st.lists(st.tuples(st.integers(-2, 300), st.integers(-2, 300)), max_size=4)
    ),
)
def test_late_plans_slice_or_refuse_with_a_4xx(
    tok: HFTokenizer, text: str, max_tokens: int | None, spans: list[tuple[int, int]] | None
) -> None:
    spec = longdocs.ChunkingSpec("late", max_tokens, None, [spans] if spans is not None else None)
    try:
        late = longdocs.plan_late(tok, [text], 512, None, spec)
    except EmbedhostError as exc:
        refused = status_for(exc)
        late = None
    if late is None:
        assert 400 <= refused < 500
        return
    (ids,) = late.ids
    assert ids == tok.encode_batch([text])[0]
    for (a, b), index in zip(late.chunks[0], late.index[0], strict=True):
        assert 0 <= a < b <= len(text)
        assert index and all(0 < i < len(ids) - 1 for i in index)  # never a special token


def test_token_id_inputs_chunk_into_plain_windows(tok: HFTokenizer) -> None:
    seq = list(range(1000, 1100))
    plan = longdocs.plan(tok, [seq], 30, None, 5, 64)
    assert all(len(s) <= 30 for s in plan.windows.ids)
    assert plan.windows.ids[0] == seq[:30] and plan.windows.ids[1][:5] == seq[25:30]
    assert all(w.start is None for w in plan.spans)

"""Bounded tokenization (issue 20): a text far longer than the window is cut by characters
before tokenizing, and the answer is the same as tokenizing it whole; the GIL is let go
while a long text is tokenized; max_input_chars refuses naming the input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedhost.errors import InputTooLong, PayloadTooLarge
from embedhost.tokenization import (
    GUARD_TOKENS,
    HFTokenizer,
    Policy,
    Prompt,
    _fit_all,
    check_input_chars,
    encode_bounded,
    input_char_limit,
    prepare_texts,
)


class Counting:
    """A tokenizer that records how many characters it was asked to tokenize."""

    def __init__(self, inner: HFTokenizer) -> None:
        self.inner = inner
        self.vocab_size = inner.vocab_size
        self.prefix_specials = inner.prefix_specials
        self.suffix_specials = inner.suffix_specials
        self.max_token_chars = inner.max_token_chars
        self.chars = 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.chars += sum(len(t) for t in texts)
        return self.inner.encode_batch(texts)


@pytest.fixture(scope="module")
def tok(minilm_dir: Path) -> HFTokenizer:
    return HFTokenizer(minilm_dir)


def _whole(tok: HFTokenizer, texts: list[str], max_tokens: int, policy: Policy) -> list[list[int]]:
    raw = tok.encode_batch(texts)
    return _fit_all(raw, max_tokens, policy, tok.prefix_specials, tok.suffix_specials).ids


LONG = [
    "word " * 50_000,
    "a" * 30_000 + " tail",  # one long word: a single [UNK]
    " " * 40_000 + "after the spaces " * 10,  # whitespace yields no tokens
    "東京 café naïve " * 10_000,
    "x " * 3 + "\n" * 50_000 + "y " * 2_000,
]


@pytest.mark.parametrize("policy", ["right", "left"])
@pytest.mark.parametrize("text", LONG, ids=range(len(LONG)))
def test_cut_first_same_answer(tok: HFTokenizer, text: str, policy: Policy) -> None:
    counting = Counting(tok)
    out = prepare_texts(counting, [text], 128, policy)
    assert out.ids == _whole(tok, [text], 128, policy)


def test_a_long_text_costs_its_window(tok: HFTokenizer) -> None:
    counting = Counting(tok)
    prepare_texts(counting, ["word " * 1_000_000], 256, "right")
    # Tokenized: the cut, not the 5 million characters.
    assert counting.chars <= (256 + GUARD_TOKENS) * tok.max_token_chars


def test_with_a_prompt(tok: HFTokenizer) -> None:
    prompt = Prompt("query", "query: ")
    text = "word " * 20_000
    out = prepare_texts(tok, [text], 64, "right", prompt)
    whole = tok.encode_batch([prompt.text + text])[0]
    assert out.ids[0] == whole[:63] + whole[-1:]


def test_refuse_says_at_least(tok: HFTokenizer) -> None:
    with pytest.raises(InputTooLong) as info:
        prepare_texts(tok, ["fine", "word " * 100_000], 64, "refuse")
    assert "input 1 has at least" in info.value.message


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "é", "#", ".", "東"]), max_size=3000),
    st.sampled_from(["right", "left"]),
)
def test_property_same_as_whole(tok: HFTokenizer, text: str, policy: Policy) -> None:
    text = text.strip() or "x"
    # A tiny window, so that the cut applies to texts of a few hundred characters.
    got = encode_bounded(tok, [text], 8, policy)
    assert _fit_all(got, 8, policy, 1, 1).ids == _whole(tok, [text], 8, policy)


def test_long_text_lets_the_gil_go(tok: HFTokenizer) -> None:
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    th = threading.Thread(target=spin)
    th.start()
    try:
        time.sleep(0.05)
        ticks = 0
        tok.encode_batch(["word " * 400_000])
        during = ticks
    finally:
        stop.set()
        th.join()
    # The other thread ran while the 2 MB text was tokenized (held, it would not run).
    assert during >= 20


def test_max_input_chars() -> None:
    assert input_char_limit(None, 512) == 512 * 128
    assert input_char_limit(1000, 512) == 1000
    check_input_chars(["a" * 100], 100)
    with pytest.raises(PayloadTooLarge) as info:
        check_input_chars(["ok", "a" * 101], 100)
    assert info.value.param == "input[1]"
    assert "input 1 has 101 characters" in info.value.message

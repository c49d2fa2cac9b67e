"""Pair layout and long-document rules (embedhost.pairs, engines/rerank.py), without a model."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from embedhost.engines.rerank import PairTemplate, pair_template, token_types
from embedhost.errors import InputTooLong
from embedhost.pairs import build, window_starts

BERT = PairTemplate((101,), (102,), (102,), 1)


def test_window_starts_overlap_and_end_at_the_end() -> None:
    assert window_starts(10, 20) == [0]
    starts = window_starts(100, 40)
    assert starts[0] == 0 and starts[-1] == 60
    assert all(b - a <= 30 for a, b in itertools.pairwise(starts))  # overlap >= 10


@pytest.mark.parametrize(
    ("mode", "windows", "truncated"), [("window", 3, False), ("right", 1, True), ("left", 1, True)]
)
def test_modes(mode: str, windows: int, truncated: bool) -> None:
    doc = list(range(1000, 1030))
    pairs = build(BERT, [[7, 8]], [doc, [5]], 20, mode)  # type: ignore[arg-type]
    assert pairs.windows == [windows, 1] and pairs.truncated == [truncated, False]
    assert all(len(s) <= 20 for s in pairs.seqs)
    assert pairs.seqs[-1] == [101, 7, 8, 102, 5, 102]
    assert pairs.tokens == sum(len(s) for s in pairs.seqs)
    if mode == "left":
        assert pairs.seqs[0][-2] == 1029


def test_refuse_names_the_document_and_a_long_query() -> None:
    with pytest.raises(InputTooLong) as info:
        build(BERT, [[7]], [[1], list(range(50))], 20, "refuse", doc_param="texts")
    assert info.value.param == "texts[1]"
    with pytest.raises(InputTooLong) as info:
        build(BERT, [list(range(15))], [[1]], 20, "refuse")
    assert info.value.param == "query"
    cut = build(BERT, [list(range(15))], [[1]], 20, "window")
    assert len(cut.seqs[0]) <= 20 and cut.truncated == [True]


def test_max_doc_tokens_cuts_first() -> None:
    pairs = build(BERT, [[7]], [list(range(100, 110))], 512, "window", max_doc_tokens=4)
    assert pairs.seqs == [[101, 7, 102, 100, 101, 102, 103, 102]]


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        ({"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}, BERT),
        (
            {"type": "RobertaProcessing", "sep": ["</s>", 2], "cls": ["<s>", 0]},
            PairTemplate((0,), (2, 2), (2,), 0),
        ),
    ],
)
def test_template_from_tokenizer_json(
    tmp_path: Path, processor: dict[str, object], expected: PairTemplate
) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"post_processor": processor}))
    assert pair_template(tmp_path / "tokenizer.json") == expected


def test_token_types_start_after_the_first_separator() -> None:
    batch = [[101, 7, 102, 5, 6, 102], [101, 7, 102, 5, 102]]
    types = token_types(batch, 6, BERT, 2)
    assert types.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 0]]
    assert not np.any(token_types(batch, 6, BERT, 1))

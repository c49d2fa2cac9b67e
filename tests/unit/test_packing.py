"""The packing planner of the transformers engine: rows hold every sequence, bounded shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from embedhost.engines.packing import ROW_COUNTS, ROW_LENGTHS, chunks, pack, round_rows


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(min_value=1, max_value=256), min_size=1, max_size=64))
def test_every_sequence_lies_whole_in_one_row(lengths: list[int]) -> None:
    batch = [[1000 + i] * n for i, n in enumerate(lengths)]
    p = pack(batch, 256, 384)
    rows, width = p.shape
    assert width in ROW_LENGTHS or width == 256
    assert rows in ROW_COUNTS or rows % ROW_COUNTS[-1] == 0
    flat_ids, flat_seg, flat_pos = (
        p.ids.reshape(-1),
        p.segments.reshape(-1),
        p.positions.reshape(-1),
    )
    for i, n in enumerate(lengths):
        s = int(p.starts[i])
        assert s // width == (s + n - 1) // width  # one row
        assert (flat_ids[s : s + n] == 1000 + i).all()
        assert (flat_seg[s : s + n] == i).all()
        assert flat_pos[s : s + n].tolist() == list(range(n))
    assert int((flat_seg >= 0).sum()) == sum(lengths)


def test_short_texts_share_rows_and_passages_do_not_grow_attention() -> None:
    short = pack([[5] * 12] * 12, 256, 384)
    assert short.shape[0] * short.shape[1] <= 256  # 144 tokens in at most 256 slots
    passages = pack([[5] * 100] * 16, 256, 384)
    assert passages.shape[1] <= 256  # rows stay bounded: attention grows with the row


def test_shapes_are_few() -> None:
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(500):
        n = int(rng.integers(1, 33))
        lengths = rng.integers(1, 257, size=n).tolist()
        shapes.add(pack([[1] * k for k in lengths], 256, 384).shape)
    assert len(shapes) <= len(ROW_LENGTHS) * len(ROW_COUNTS)
    assert round_rows(5) == 6 and round_rows(65) == 128


@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(min_value=1, max_value=512), min_size=1, max_size=64))
def test_forward_chunks_cover_the_batch_within_the_budget(lengths: list[int]) -> None:
    parts = chunks(lengths, 1024)
    assert [i for r in parts for i in r] == list(range(len(lengths)))
    for r in parts:
        assert len(r) == 1 or sum(lengths[i] for i in r) <= 1024

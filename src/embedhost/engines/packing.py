"""Padding-free execution for encoder models: several sequences packed into one row.

A batch of mixed lengths padded to its longest member wastes compute on pad tokens, and
every new (batch size, longest) pair is a new shape for the kernels (oneDNN builds and
caches a primitive per shape, and the allocator keeps a differently sized set of buffers
for each). Packing puts several sequences into one row of a fixed length, each with its own
position ids (restarting at 0) and a block-diagonal attention mask, so that a sequence only
attends to itself: the math is that of the sequence alone.

Rows come in a few fixed lengths (``ROW_LENGTHS``) and their count is rounded up to a few
fixed values (``ROW_COUNTS``), so the shapes the model ever sees are bounded (a few dozen)
and can be warmed at start-up. Rows are bounded because attention grows with the row: a
cost model (linear layers per token, attention per token pair) picks the row length.

This module is pure numpy (no torch), so the planner is unit-testable and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ROW_LENGTHS = (32, 64, 128, 256, 512)
"""Row lengths a packed batch may use (the model's maximum caps them)."""

ROW_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
"""Row counts a packed batch is rounded up to (beyond the last: multiples of it)."""

FORWARD_TOKENS = 2048
"""Real tokens per forward pass: a bigger batch runs as several (see :func:`chunks`).

It bounds the activations of one pass (attention scores grow with rows x width^2) and with
them the worker's peak memory; beyond ~2k tokens a pass is no faster per token on CPU."""


def chunks(lengths: list[int], budget: int = FORWARD_TOKENS) -> list[range]:
    """Consecutive index ranges of at most ``budget`` real tokens (one sequence at least)."""
    out: list[range] = []
    start, tokens = 0, 0
    for i, n in enumerate(lengths):
        if i > start and tokens + n > budget:
            out.append(range(start, i))
            start, tokens = i, 0
        tokens += n
    out.append(range(start, len(lengths)))
    return out


@dataclass(slots=True)
class Packed:
    """One packed batch: ``[rows, width]`` arrays and where each sequence lies."""

    ids: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int64]
    segments: npt.NDArray[np.int64]
    """Per token: the index of its sequence in the batch, or -1 for padding."""
    starts: npt.NDArray[np.int64]
    """Per sequence: its first token's index in the flattened ``[rows * width]`` tokens."""
    lengths: npt.NDArray[np.int64]

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.ids.shape[0]), int(self.ids.shape[1]))


def round_rows(n: int) -> int:
    for c in ROW_COUNTS:
        if n <= c:
            return c
    last = ROW_COUNTS[-1]
    return -(-n // last) * last


def _first_fit(lengths: list[int], order: list[int], width: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row (``order`` is longest first)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(width - n)
    return rows


def plan(
    lengths: list[int], max_width: int, hidden: int, widths: tuple[int, ...] = ROW_LENGTHS
) -> tuple[int, list[list[int]]]:
    """The row width and the rows (sequence indices) for sequences of ``lengths``.

    Cost of a candidate: rows x width x (6 x hidden + width), i.e. the linear layers per
    token (about 12 hidden^2 multiply-adds) plus attention per token pair (2 hidden), with
    the row count rounded as the model will see it.
    """
    longest = max(lengths)
    cands = [w for w in widths if longest <= w <= max_width]
    if not cands:
        cands = [max(longest, min(max_width, widths[-1]))]
        if cands[0] < longest:
            cands = [longest]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best: tuple[float, int, list[list[int]]] | None = None
    for w in cands:
        rows = _first_fit(lengths, order, w)
        cost = round_rows(len(rows)) * w * (6 * hidden + w)
        if best is None or cost < best[0]:
            best = (cost, w, rows)
    assert best is not None
    return best[1], best[2]


def pack(batch: list[list[int]], max_width: int, hidden: int) -> Packed:
    """Pack ``batch`` (token ids per sequence) into rows; see :func:`plan`."""
    lengths = [len(s) for s in batch]
    width, rows = plan(lengths, max_width, hidden)
    n_rows = round_rows(len(rows))
    ids = np.zeros((n_rows, width), dtype=np.int64)
    positions = np.zeros((n_rows, width), dtype=np.int64)
    segments = np.full((n_rows, width), -1, dtype=np.int64)
    starts = np.zeros(len(batch), dtype=np.int64)
    for r, members in enumerate(rows):
        col = 0
        for i in members:
            n = lengths[i]
            ids[r, col : col + n] = batch[i]
            positions[r, col : col + n] = np.arange(n)
            segments[r, col : col + n] = i
            starts[i] = r * width + col
            col += n
    return Packed(ids, positions, segments, starts, np.asarray(lengths, dtype=np.int64))

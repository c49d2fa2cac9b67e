"""Long documents, the pure part: token windows with overlap, their character spans,
sentence chunks, and the pooling of window vectors and of token states.

Everything here is plain Python and numpy on token ids and character offsets, so that it
is unit- and property-testable without a model. The service (``longdocs.py``) calls it
with what a tokenizer returned (:class:`Encoding`) and what an engine computed.

Window boundaries prefer *clean* token positions: a token that starts after a gap
(whitespace) from the one before it. Cutting there, the text of a window
(``text[start:end]``) tokenizes to the window's own tokens again, so a window's vector is
the vector of its text; a run with no gap longer than half a window (a URL, CJK) is cut
wherever it must.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Offset = tuple[int, int]


@dataclass(slots=True)
class Encoding:
    """One text tokenized with offsets: every token's id, its string, whether the model
    added it (special), and its character span in the text (None for special tokens and
    for a token no character span could be found for)."""

    ids: list[int]
    tokens: list[str]
    special: list[bool]
    offsets: list[Offset | None]


@dataclass(frozen=True, slots=True)
class Window:
    """Content tokens ``[first, stop)`` of one input, and their character span (None when
    the tokens have no offsets, as for token-id input)."""

    first: int
    stop: int
    start: int | None
    end: int | None

    @property
    def size(self) -> int:
        return self.stop - self.first


def clean_starts(offsets: list[Offset | None]) -> list[bool]:
    """Per content token: may a window start here (it follows a gap, or is the first)."""
    out = [True] * len(offsets)
    for i in range(1, len(offsets)):
        a, b = offsets[i - 1], offsets[i]
        out[i] = a is None or b is None or b[0] > a[1]
    return out


def plan_windows(
    n: int, capacity: int, overlap: int, offsets: list[Offset | None] | None = None
) -> list[Window]:
    """Windows of at most ``capacity`` content tokens over ``n`` tokens, consecutive ones
    sharing at most ``overlap`` tokens (clamped below half a window, so that each window
    moves on by at least half of one). Every token is in some window."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    overlap = max(0, min(overlap, (capacity - 1) // 2))
    clean = clean_starts(offsets) if offsets is not None else [True] * n
    half = capacity // 2
    out: list[tuple[int, int]] = []
    first = 0
    while True:
        stop = min(first + capacity, n)
        if stop < n:
            # End before a clean token, no earlier than half a window in.
            cut = next((b for b in range(stop, first + half, -1) if clean[b]), stop)
            stop = cut
        out.append((first, stop))
        if stop >= n:
            break
        nxt = stop - overlap
        # Start at the first clean token from there (never past the end just made).
        nxt = next((b for b in range(nxt, stop + 1) if b == stop or clean[b]), stop)
        first = max(nxt, first + 1)
    return [_window(a, b, offsets) for a, b in out]


def _window(first: int, stop: int, offsets: list[Offset | None] | None) -> Window:
    if offsets is None:
        return Window(first, stop, None, None)
    spans = [o for o in offsets[first:stop] if o is not None]
    if not spans:
        return Window(first, stop, None, None)
    return Window(first, stop, spans[0][0], spans[-1][1])


def pool(
    vectors: npt.NDArray[np.float32], counts: list[int], normalize: bool
) -> npt.NDArray[np.float32]:
    """The token-count-weighted mean of window vectors (rows), re-normalized if asked."""
    w = np.asarray(counts, dtype=np.float64)[:, None]
    mean = (vectors.astype(np.float64) * w).sum(axis=0) / max(float(w.sum()), 1.0)
    if normalize:
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    out: npt.NDArray[np.float32] = mean.astype(np.float32)
    return out


# -- late chunking --------------------------------------------------------------------------

# A sentence ends at . ! ? (or their full-width forms, or an ellipsis) followed by space,
# or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f\u2026])\s+|\n\s*")


def sentence_spans(text: str) -> list[Offset]:
    """Character spans of the sentences of ``text`` (whitespace between them left out)."""
    spans: list[Offset] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > pos:
            spans.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        spans.append((pos, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def tokens_in(offsets: list[Offset | None], span: Offset) -> list[int]:
    """Indices of the tokens whose characters overlap ``span``."""
    s, e = span
    return [i for i, o in enumerate(offsets) if o is not None and o[0] < e and o[1] > s]


def sentence_chunks(text: str, offsets: list[Offset | None], max_tokens: int) -> list[Offset]:
    """Chunks of whole sentences of at most ``max_tokens`` tokens each (a longer sentence
    is cut into token windows); spans slice ``text``."""
    out: list[Offset] = []
    cur: Offset | None = None
    cur_n = 0
    for span in sentence_spans(text):
        idx = tokens_in(offsets, span)
        n = len(idx)
        if n > max_tokens:
            if cur is not None:
                out.append(cur)
                cur, cur_n = None, 0
            sub = [offsets[i] for i in idx]
            for w in plan_windows(n, max_tokens, 0, sub):
                if w.start is not None and w.end is not None:
                    out.append((w.start, w.end))
            continue
        if cur is not None and cur_n + n <= max_tokens:
            cur, cur_n = (cur[0], span[1]), cur_n + n
        else:
            if cur is not None:
                out.append(cur)
            cur, cur_n = span, n
    if cur is not None:
        out.append(cur)
    return out


def late_pool(
    states: npt.NDArray[np.float32], token_index: list[list[int]]
) -> npt.NDArray[np.float32]:
    """One vector per chunk: the mean of the token states (rows of ``states``) that
    ``token_index`` names for it."""
    out = np.empty((len(token_index), states.shape[1]), dtype=np.float32)
    for j, idx in enumerate(token_index):
        out[j] = states[idx].astype(np.float64).mean(axis=0)
    return out


# -- offsets for tokenizers that give none (llama.cpp) --------------------------------------


def _fold(text: str) -> tuple[str, list[int]]:
    """``text`` lowercased with accents stripped (as WordPiece and llama.cpp normalize),
    and for each folded character the index of the character it came from."""
    import unicodedata

    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        for c in unicodedata.normalize("NFD", ch.lower()):
            if unicodedata.category(c) != "Mn":
                out.append(c)
                where.append(i)
    return "".join(out), where


def align(text: str, pieces: list[str | None]) -> list[Offset | None]:
    """Character spans of token ``pieces`` (their text as the tokenizer prints it; None for
    special tokens) found in order in ``text``. A piece that cannot be found (an unknown
    token) takes the characters up to the next piece found, trimmed of whitespace."""
    folded, where = _fold(text)
    out: list[Offset | None] = [None] * len(pieces)
    cursor = 0  # in folded characters
    pending: list[int] = []

    def settle(until: int) -> None:
        # Unmatched pieces share the characters between the cursor and ``until``.
        seg = folded[cursor:until]
        lead = len(seg) - len(seg.lstrip())
        trail = len(seg.rstrip())
        if pending and trail > lead:
            a, b = where[cursor + lead], where[cursor + trail - 1] + 1
            for k in pending:
                out[k] = (a, b)
        pending.clear()

    for k, piece in enumerate(pieces):
        if piece is None:
            continue
        p = piece.strip().removeprefix("##").lower()
        p = _fold(p)[0]
        hit = folded.find(p, cursor) if p else -1
        # A piece found only far beyond a short unknown gap is not this one.
        if hit < 0 or (not pending and folded[cursor:hit].strip()):
            pending.append(k)
            continue
        settle(hit)
        end = hit + len(p)
        out[k] = (where[hit], where[end - 1] + 1)
        cursor = end
    settle(len(folded))
    return out

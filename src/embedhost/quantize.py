"""Compact vectors: the embedding types a request may ask for (``float``, ``int8``,
``uint8``, ``binary``, ``ubinary``, ``base64``) and how each is computed from float32 rows.

The definitions are sentence-transformers' ``quantize_embeddings``:

* ``ubinary``: the sign bits (``x > 0``) packed eight to a byte, most significant first
  (``np.packbits``), ``ceil(dims / 8)`` bytes; ``binary`` is the same bytes minus 128, as
  int8. Bit-exact with it.
* ``uint8``: per dimension, ``floor((x - min) / step)`` with ``step = (max - min) / 255``
  (256 levels), clipped to 0..255; ``int8`` is ``uint8 - 128``. ``min``/``max`` (the
  *ranges*) come from calibration embeddings (see :mod:`embedhost.calibration`), never
  from the request's own rows, so the same text gives the same bytes in any batch.
  Inside the ranges ``uint8`` equals sentence-transformers' ``astype(np.uint8)``
  (truncation is the floor of a non-negative number); outside, where it wraps, this clips.
* ``base64``: the float32 row, little-endian, base64-encoded (what Cohere and OpenAI call it).

:func:`postprocess` is the service's last step (Matryoshka ``dimensions``, then
normalization), so calibration embeddings can be shaped as a request's vectors are.

This module imports nothing from the package.
"""

from __future__ import annotations

import base64
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
EMBEDDING_TYPES: tuple[str, ...] = get_args(EmbeddingType)
CALIBRATED: frozenset[str] = frozenset({"int8", "uint8"})
"""The types that need calibration ranges."""

Floats = npt.NDArray[np.float32]
Ranges = npt.NDArray[np.float32]
"""Shape (2, dims): row 0 the per-dimension minimum, row 1 the maximum."""


def postprocess(raw: Floats, dims: int | None, normalize: bool) -> Floats:
    """Keep the first ``dims`` columns, then L2-normalize rows when ``normalize``: the
    same steps, in the same order and precision, as the embedding service applies."""
    vectors = raw
    if dims is not None and dims < vectors.shape[1]:
        vectors = vectors[:, :dims]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def ranges_of(calibration: Floats) -> Ranges:
    """Per-dimension min and max of calibration rows (exact: no arithmetic)."""
    return np.vstack((calibration.min(axis=0), calibration.max(axis=0))).astype(np.float32)


def ubinary(vectors: Floats) -> npt.NDArray[np.uint8]:
    return np.packbits(vectors > 0, axis=1)


def binary(vectors: Floats) -> npt.NDArray[np.int8]:
    # As sentence-transformers: uint8 minus 128 (widened, so nothing wraps), as int8.
    return (ubinary(vectors).astype(np.int16) - 128).astype(np.int8)


def uint8(vectors: Floats, ranges: Ranges) -> npt.NDArray[np.uint8]:
    if ranges.shape != (2, vectors.shape[1]):
        raise ValueError(f"ranges of shape {ranges.shape} for {vectors.shape[1]} dimensions")
    ranges = ranges.astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    # A dimension that never varied in calibration has no scale: step 1, as
    # sentence-transformers does, instead of dividing by zero.
    steps = np.where(steps == 0, np.float32(1), steps)
    return np.clip(np.floor((vectors - starts) / steps), 0, 255).astype(np.uint8)


def int8(vectors: Floats, ranges: Ranges) -> npt.NDArray[np.int8]:
    return (uint8(vectors, ranges).astype(np.int16) - 128).astype(np.int8)


def b64_rows(vectors: Floats) -> list[str]:
    le = vectors.astype("<f4", copy=False)
    return [base64.b64encode(le[i].tobytes()).decode() for i in range(len(le))]


def encode(
    vectors: Floats, types: list[str] | tuple[str, ...], ranges: Ranges | None = None
) -> dict[str, Any]:
    """Each asked-for type of ``vectors``: numpy rows (orjson writes them as lists of
    numbers), or a list of strings for ``base64``. ``ranges`` is needed for int8/uint8."""
    out: dict[str, Any] = {}
    for t in types:
        if t == "float":
            out[t] = vectors
        elif t == "base64":
            out[t] = b64_rows(vectors)
        elif t == "binary":
            out[t] = binary(vectors)
        elif t == "ubinary":
            out[t] = ubinary(vectors)
        elif t in CALIBRATED:
            if ranges is None:
                raise ValueError(f"{t} needs calibration ranges")
            out[t] = int8(vectors, ranges) if t == "int8" else uint8(vectors, ranges)
        else:
            raise ValueError(f"unknown embedding type {t!r}")
    return out

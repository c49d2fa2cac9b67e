"""Compact vectors for the HTTP routes: a result's rows in the embedding types a request
asked for (``embedding_types`` on ``/v2/embed``, ``/embed`` and ``/v1/embeddings``), with
the version's calibration ranges (:mod:`embedhost.calibration`) for int8/uint8.

Definitions are in :mod:`embedhost.quantize`. ``dimensions`` and normalization have been
applied by the service already, so quantizing always sees the vectors the client would
have got as floats; the ranges are those of calibration rows shaped the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from embedhost.calibration import Calibrations
from embedhost.quantize import CALIBRATED, encode
from embedhost.service import EmbedResult

# Above this many numbers, quantizing and base64 run in a thread, off the event loop.
_INLINE_VALUES = 65_536


def unique_types(types: Sequence[str]) -> list[str]:
    """The asked-for types in order, each once."""
    return list(dict.fromkeys(types))


async def by_type(
    calibrations: Calibrations,
    result: EmbedResult,
    types: list[str],
    normalize: bool | None = None,
) -> dict[str, Any]:
    """``{type: rows}`` for each of ``types`` (rows: numpy, or base64 strings).
    ``normalize``: what the request asked (None: the model's default), which the service
    applied and so the ranges must match."""
    vectors = result.vectors
    ranges = None
    if CALIBRATED.intersection(types):
        info = result.model.info
        assert info is not None
        normalized = info.normalize if normalize is None else normalize
        ranges = await calibrations.ranges(result.model, int(vectors.shape[1]), normalized)
    if vectors.size <= _INLINE_VALUES:
        return encode(vectors, types, ranges)
    return await asyncio.to_thread(encode, vectors, types, ranges)

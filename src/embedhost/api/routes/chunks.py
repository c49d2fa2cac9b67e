"""``/embed``'s long-document parts: the request's ``chunking`` as the service takes it,
and the per-chunk vectors of the answer (see :mod:`embedhost.longdocs`)."""

from __future__ import annotations

from typing import Any

from embedhost.longdocs import ChunkingSpec
from embedhost.protocol import Chunking
from embedhost.service import EmbedResult


def chunking_spec(body: Chunking | None) -> ChunkingSpec | None:
    if body is None:
        return None
    return ChunkingSpec(
        mode=body.mode,
        max_tokens=body.max_tokens,
        overlap_tokens=body.overlap_tokens,
        spans=[[(s[0], s[1]) for s in per] for per in body.spans]
        if body.spans is not None
        else None,
    )


def chunk_payload(result: EmbedResult) -> dict[str, Any]:
    """``chunk_embeddings``: each input's chunks (start, end, tokens, embedding), when asked."""
    if result.chunk_vectors is None:
        return {}
    return {"chunk_embeddings": [[c.to_dict() for c in per] for per in result.chunk_vectors]}

"""Embedding routes: ``POST /v1/embeddings`` (OpenAI-compatible) and ``POST /embed`` (native).

Responses are written straight to bytes with orjson (numpy rows serialize natively), which
is most of a response's cost on the hot path; the response models document them.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from embedhost.api.deps import AdmissionDep, ServiceDep, require_scope
from embedhost.api.observability import note_inputs, timing_headers
from embedhost.errors import InvalidRequest
from embedhost.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
)
from embedhost.service import EmbedOptions, EmbedResult

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)
}


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected.

    Once the body is read, the server's ``receive`` only returns to say the client left.
    """
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _as_batch(inp: str | list[str] | list[int] | list[list[int]]) -> list[str] | list[list[int]]:
    """OpenAI's four input shapes as a list of texts or a list of token-id sequences."""
    if isinstance(inp, str):
        return [inp]
    if inp and isinstance(inp[0], int):
        return [inp]
    return inp  # type: ignore[return-value]


def routing_key(request: Request, user: str | None = None) -> str:
    """Who is asking, for sticky A/B splits: the API key (and, within it, the ``user`` the
    key's application names), else ``user``, else the client address.

    ``request.state.key_id`` is set by API-key authentication; None without keys."""
    key_id = getattr(request.state, "key_id", None)
    if key_id:
        return f"key:{key_id}" + (f"\x00user:{user}" if user else "")
    if user:
        return f"user:{user}"
    # The admission's address honours server.trusted_proxies (X-Forwarded-For).
    admission = getattr(request.state, "admission", None)
    address = getattr(admission, "address", None) or (
        request.client.host if request.client is not None else "unknown"
    )
    return f"addr:{address}"


def _headers(result: EmbedResult) -> dict[str, str]:
    return {"X-Embedhost-Model": f"{result.model.name}@{result.model.version}"}


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=_ERRORS,
    summary="Create embeddings (OpenAI-compatible)",
    tags=["embeddings"],
    dependencies=[Depends(require_scope("embed"))],
)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, service: ServiceDep, admission: AdmissionDep
) -> Response:
    inputs = _as_batch(body.input)
    handle = service.resolve(body.model, routing_key(request, body.user))
    note_inputs(request, handle.name, inputs)
    result = await service.embed(
        handle,
        inputs,
        EmbedOptions(truncate=body.truncate, dimensions=body.dimensions),
        admission=admission,
        disconnected=lambda: _client_gone(request),
    )
    vecs = result.vectors
    data: list[dict[str, Any]]
    if body.encoding_format == "base64":
        le = vecs.astype("<f4", copy=False)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(le[i].tobytes()).decode(),
            }
            for i in range(len(le))
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": vecs[i]} for i in range(len(vecs))]
    total = result.tokens.total
    payload = {
        "object": "list",
        "data": data,
        "model": body.model or handle.name,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={**_headers(result), **timing_headers(request, result)},
    )


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=_ERRORS,
    summary="Embed texts (native API)",
    tags=["embeddings"],
    dependencies=[Depends(require_scope("embed"))],
)
async def embed(
    body: EmbedRequest, request: Request, service: ServiceDep, admission: AdmissionDep
) -> Response:
    if (body.text is None) == (body.texts is None):
        raise InvalidRequest("give exactly one of 'text' or 'texts'", param="text")
    texts = [body.text] if body.text is not None else list(body.texts or [])
    handle = service.resolve(body.model, routing_key(request))
    note_inputs(request, handle.name, texts)
    result = await service.embed(
        handle,
        texts,
        EmbedOptions(truncate=body.truncate, dimensions=body.dimensions, normalize=body.normalize),
        admission=admission,
        disconnected=lambda: _client_gone(request),
    )
    vecs: np.ndarray[Any, Any] = result.vectors
    total = result.tokens.total
    payload = {
        "model": handle.name,
        "version": handle.version,
        "dimensions": int(vecs.shape[1]),
        "embeddings": vecs,
        "tokens": result.tokens.counts,
        "truncated": result.tokens.truncated,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers={**_headers(result), **timing_headers(request, result)},
    )

"""Embedding routes: ``POST /v1/embeddings`` (OpenAI-compatible) and ``POST /embed`` (native).

Each route parses its body and shapes its payload; :func:`_embed_response` does the rest,
the same for both: resolve the model, note the inputs on the request's record, call the
service (which watches for the client going away), and answer with the model and timing
headers. Responses are written straight to bytes with orjson (numpy rows serialize
natively), which is most of a response's cost on the hot path; the response models
document them.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from embedhost.api.body import BodyRoute
from embedhost.api.compact import by_type, unique_types
from embedhost.api.deps import EmbedAdmission, ServiceDep, get_calibrations
from embedhost.api.observability import note_inputs, timing_headers
from embedhost.api.priority import request_priority
from embedhost.api.routes.chunks import chunk_payload, chunking_spec
from embedhost.cache import CachePolicy
from embedhost.errors import InvalidRequest
from embedhost.models.version import ModelVersion
from embedhost.protocol import (
    EmbeddingRequest,
    EmbeddingResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
)
from embedhost.security.admission import Admission
from embedhost.service import EmbeddingService, EmbedOptions, EmbedResult

router = APIRouter(route_class=BodyRoute)  # large bodies parsed off the loop

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


def request_timeout(value: str) -> float:
    """``X-Request-Timeout``: seconds, a positive finite number (the service caps it)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidRequest(
            f"X-Request-Timeout must be a positive number of seconds, not {value[:32]!r}",
            param="X-Request-Timeout",
        )
    return seconds


def routing_key(admission: Admission, user: str | None = None) -> str:
    """Who is asking, for sticky A/B splits: the API key (and, within it, the ``user`` the
    key's application names), else ``user``, else the client address (which honours
    ``server.trusted_proxies``)."""
    key_id = admission.key_id
    if key_id:
        return f"key:{key_id}" + (f"\x00user:{user}" if user else "")
    if user:
        return f"user:{user}"
    return f"addr:{admission.address}"


async def _embed_response(
    request: Request,
    service: EmbeddingService,
    admission: Admission,
    *,
    model: str | None,
    user: str | None,
    inputs: list[str] | list[list[int]],
    options: EmbedOptions | Callable[[ModelVersion], EmbedOptions],
    payload: Callable[[EmbedResult], Awaitable[dict[str, Any]]],
) -> Response:
    """Embed ``inputs`` with the model ``model`` names for this caller and answer with
    ``await payload(result)``. ``options`` may depend on the version that serves the call."""
    handle = service.resolve(model, routing_key(admission, user))
    if not isinstance(options, EmbedOptions):
        options = options(handle)
    note_inputs(request, handle.name, inputs)
    cache_control = request.headers.get("cache-control")
    if cache_control:
        options = dataclasses.replace(options, cache=CachePolicy.from_header(cache_control))
    options = dataclasses.replace(options, priority=request_priority(request.headers, admission))
    timeout = request.headers.get("x-request-timeout")
    if timeout is not None:
        options = dataclasses.replace(options, timeout_s=request_timeout(timeout))
    result = await service.embed(
        handle,
        inputs,
        options,
        admission=admission,
        disconnected=lambda: _client_gone(request),
    )
    body = orjson.dumps(await payload(result), option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(
        body,
        media_type="application/json",
        headers={
            "X-Embedhost-Model": f"{result.model.name}@{result.model.version}",
            **({"X-Embedhost-Cache": result.cache} if result.cache else {}),
            # Windows per input, in input order (chunked inputs only).
            **(
                {"X-Embedhost-Chunks": ",".join(map(str, result.chunks))}
                if result.chunks is not None
                else {}
            ),
            **timing_headers(request, result),
        },
    )


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    responses=_ERRORS,
    summary="Create embeddings (OpenAI-compatible)",
    tags=["embeddings"],
)
async def create_embeddings(
    admission: EmbedAdmission, body: EmbeddingRequest, request: Request, service: ServiceDep
) -> Response:
    async def payload(result: EmbedResult) -> dict[str, Any]:
        vecs = result.vectors
        data: list[dict[str, Any]]
        types = unique_types(body.embedding_types or ["float"])
        if "float" not in types:
            data = [{"object": "embedding", "index": i} for i in range(len(vecs))]
        elif body.encoding_format == "base64":
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
            data = [
                {"object": "embedding", "index": i, "embedding": vecs[i]} for i in range(len(vecs))
            ]
        # Extension: the other types by name, beside OpenAI's float `embedding`.
        others = [t for t in types if t != "float"]
        if others:
            # Looked up only here: no extra dependency on the plain float path.
            typed = await by_type(await get_calibrations(request), result, others)
            for i, item in enumerate(data):
                item["embeddings"] = {t: rows[i] for t, rows in typed.items()}
        total = result.tokens.total
        return {
            "object": "list",
            "data": data,
            "model": body.model or result.model.name,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }

    return await _embed_response(
        request,
        service,
        admission,
        model=body.model,
        user=body.user,
        inputs=_as_batch(body.input),
        options=EmbedOptions(
            truncate=body.truncate,
            dimensions=body.dimensions,
            input_type=body.input_type,
            prompt_name=body.prompt_name,
        ),
        payload=payload,
    )


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=_ERRORS,
    summary="Embed texts (native API)",
    tags=["embeddings"],
)
async def embed(
    admission: EmbedAdmission, body: EmbedRequest, request: Request, service: ServiceDep
) -> Response:
    if (body.text is None) == (body.texts is None):
        raise InvalidRequest("give exactly one of 'text' or 'texts'", param="text")

    async def payload(result: EmbedResult) -> dict[str, Any]:
        vecs: np.ndarray[Any, Any] = result.vectors
        total = result.tokens.total
        embeddings: Any = vecs
        if body.embedding_types is not None:  # Cohere's shape: {type: rows}
            types = unique_types(body.embedding_types)
            calibrations = await get_calibrations(request)
            embeddings = await by_type(calibrations, result, types, body.normalize)
        return {
            "model": result.model.name,
            "version": result.model.version,
            "dimensions": int(vecs.shape[1]),
            "embeddings": embeddings,
            "tokens": result.tokens.counts,
            "truncated": result.tokens.truncated,
            "usage": {"prompt_tokens": total, "total_tokens": total},
            "chunks": result.chunks or [1] * len(vecs),
            **chunk_payload(result),
        }

    return await _embed_response(
        request,
        service,
        admission,
        model=body.model,
        user=None,
        inputs=[body.text] if body.text is not None else list(body.texts or []),
        options=EmbedOptions(
            truncate=body.truncate,
            dimensions=body.dimensions,
            normalize=body.normalize,
            input_type=body.input_type,
            prompt_name=body.prompt_name,
            chunking=chunking_spec(body.chunking),
        ),
        payload=payload,
    )

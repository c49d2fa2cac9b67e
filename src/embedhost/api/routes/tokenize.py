"""``POST /tokenize`` and ``POST /decode`` in TEI's shapes, with the embedding routes' key
scope (``embed``) and limits; the work is :mod:`embedhost.tokenizing`'s."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from embedhost import tokenizing
from embedhost.api.deps import EmbedAdmission, ServiceDep
from embedhost.api.routes.embeddings import routing_key
from embedhost.protocol import DecodeRequest, ErrorResponse, SimpleToken, TokenizeRequest

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429)
}


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post(
    "/tokenize",
    response_model=list[list[SimpleToken]],
    responses=_ERRORS,
    summary="Tokenize texts with a model's tokenizer (TEI's shape)",
    tags=["tokenize"],
)
async def tokenize(
    admission: EmbedAdmission, body: TokenizeRequest, service: ServiceDep
) -> Response:
    handle = service.resolve(body.model, routing_key(admission))
    admission.check_model(handle.name)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    out = await tokenizing.tokenize(
        handle,
        service.limits,
        texts,
        add_special=body.add_special_tokens,
        prompt_name=body.prompt_name,
        char_offsets=body.char_offsets,
    )
    return _json(out)


@router.post(
    "/decode",
    response_model=list[str],
    responses=_ERRORS,
    summary="Decode token ids to text (TEI's shape)",
    tags=["tokenize"],
)
async def decode(admission: EmbedAdmission, body: DecodeRequest, service: ServiceDep) -> Response:
    handle = service.resolve(body.model, routing_key(admission))
    admission.check_model(handle.name)
    ids = body.ids
    seqs: list[list[int]] = [ids] if ids and isinstance(ids[0], int) else ids  # type: ignore[assignment]
    return _json(
        await tokenizing.decode(handle, service.limits, seqs, skip_special=body.skip_special_tokens)
    )

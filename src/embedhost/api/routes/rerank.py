"""Rerank and score routes, in the shapes their clients send:

* ``POST /v2/rerank``: Cohere v2 (what ``cohere.ClientV2.rerank`` posts): ``id``,
  ``results`` of ``{index, relevance_score}`` best first, ``meta``;
* ``POST /v1/rerank``: Jina and Cohere v1: string or ``{text}`` documents,
  ``return_documents``, ``top_n``, ``usage``;
* ``POST /rerank``: Hugging Face TEI: ``texts``, ``raw_scores``, ``return_text``,
  ``truncate``, ``truncation_direction``; answers TEI's bare list, best first;
* ``POST /score``: vLLM: ``text_1``/``text_2`` (or ``queries``/``documents``), one to
  many or pairwise, on a reranker (its score) or an embedding model (the cosine).

Parsing and shaping only: :class:`~embedhost.scoring.ScoringService` does the work, and
refuses bad input (empty query or list, too many documents, a long document with
truncation off) with a 4xx naming the request's own field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from embedhost.api.context import context_of
from embedhost.api.deps import EmbedAdmission, ScoringDep
from embedhost.api.observability import note_inputs
from embedhost.errors import InvalidRequest
from embedhost.protocol import ErrorResponse
from embedhost.protocol_rerank import (
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    TEIRank,
    TEIRerankRequest,
)
from embedhost.scoring import Fields, ScoreOptions, ScoreResult, ScoringService
from embedhost.security.admission import Admission

router = APIRouter(tags=["rerank"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)
}


async def _client_gone(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _key(admission: Admission) -> str:
    return f"key:{admission.key_id}" if admission.key_id else f"addr:{admission.address}"


def _json(body: Any, result: ScoreResult, request: Request) -> Response:
    metrics = context_of(request).metrics
    if metrics is not None:
        task = ScoringService.task_of(result.model)
        metrics.scored_documents.labels(result.model.name, task).inc(len(result.scores))
        metrics.scored_tokens.labels(result.model.name, task).inc(result.tokens)
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={
            "X-Embedhost-Model": f"{result.model.name}@{result.model.version}",
            **({"X-Embedhost-Cache": result.cache} if result.cache else {}),
        },
    )


def _ranked(result: ScoreResult, top_n: int | None, raw: bool = False) -> list[int]:
    """Document indexes best first (ties: the earlier document), at most ``top_n``."""
    scores = result.raw if raw else result.scores
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order if top_n is None else order[:top_n]


async def _rerank(
    request: Request,
    scoring: ScoringDep,
    admission: Admission,
    model: str | None,
    query: str,
    texts: list[str],
    options: ScoreOptions,
    fields: Fields,
) -> ScoreResult:
    scoring.check_documents(len(texts), fields)
    handle = scoring.resolve(model, _key(admission))
    note_inputs(request, handle.name, texts)
    return await scoring.rerank(
        handle,
        query,
        texts,
        options,
        fields=fields,
        admission=admission,
        disconnected=lambda: _client_gone(request),
    )


async def _cohere_jina(
    body: RerankRequest,
    request: Request,
    scoring: ScoringDep,
    admission: Admission,
    version: str,
) -> Response:
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    result = await _rerank(
        request,
        scoring,
        admission,
        body.model,
        body.query,
        texts,
        ScoreOptions(truncate=body.truncate, max_tokens_per_doc=body.max_tokens_per_doc),
        Fields(),
    )
    results: list[dict[str, Any]] = []
    for i in _ranked(result, body.top_n):
        item: dict[str, Any] = {"index": i, "relevance_score": float(result.scores[i])}
        if body.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    payload = {
        "id": str(uuid.uuid4()),
        "model": body.model or result.model.name,
        "results": results,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        "meta": {
            "api_version": {"version": version},
            "billed_units": {"search_units": 1, "input_tokens": result.tokens},
            "tokens": {"input_tokens": result.tokens},
        },
    }
    return _json(payload, result, request)


@router.post(
    "/v2/rerank",
    response_model=RerankResponse,
    responses=_ERRORS,
    summary="Rerank documents (Cohere v2)",
)
async def rerank_v2(
    admission: EmbedAdmission, body: RerankRequest, request: Request, scoring: ScoringDep
) -> Response:
    return await _cohere_jina(body, request, scoring, admission, "2")


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    responses=_ERRORS,
    summary="Rerank documents (Jina, Cohere v1)",
)
async def rerank_v1(
    admission: EmbedAdmission, body: RerankRequest, request: Request, scoring: ScoringDep
) -> Response:
    return await _cohere_jina(body, request, scoring, admission, "1")


@router.post(
    "/rerank",
    response_model=list[TEIRank],
    responses=_ERRORS,
    summary="Rerank texts (text-embeddings-inference)",
)
async def rerank_tei(
    admission: EmbedAdmission, body: TEIRerankRequest, request: Request, scoring: ScoringDep
) -> Response:
    direction = body.truncation_direction
    result = await _rerank(
        request,
        scoring,
        admission,
        body.model,
        body.query,
        body.texts,
        ScoreOptions(
            truncate=body.truncate,
            direction="left" if direction in ("Left", "left") else None,
        ),
        Fields(documents="texts"),
    )
    scores = result.raw if body.raw_scores else result.scores
    ranks: list[dict[str, Any]] = []
    for i in _ranked(result, None, body.raw_scores):
        item: dict[str, Any] = {"index": i, "score": float(scores[i])}
        if body.return_text:
            item["text"] = body.texts[i]
        ranks.append(item)
    return _json(ranks, result, request)


def _texts(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else value


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=_ERRORS,
    summary="Score text pairs (vLLM): a reranker's score or an embedding model's cosine",
)
async def score(
    admission: EmbedAdmission, body: ScoreRequest, request: Request, scoring: ScoringDep
) -> Response:
    if body.text_1 is not None or body.text_2 is not None:
        fields = Fields(query="text_1", documents="text_2")
        first, second = _texts(body.text_1), _texts(body.text_2)
    else:
        fields = Fields(query="queries", documents="documents")
        first, second = _texts(body.queries), _texts(body.documents)
    if first is None:
        raise InvalidRequest(f"{fields.query} is required", param=fields.query)
    if second is None:
        raise InvalidRequest(f"{fields.documents} is required", param=fields.documents)
    if not first:
        raise InvalidRequest(f"{fields.query} must not be empty", param=fields.query)
    scoring.check_documents(len(second), fields)
    handle = scoring.resolve(body.model, _key(admission))
    note_inputs(request, handle.name, first + second)
    result = await scoring.pairs(
        handle,
        first,
        second,
        ScoreOptions(max_tokens_per_doc=body.truncate_prompt_tokens),
        fields=fields,
        admission=admission,
        disconnected=lambda: _client_gone(request),
        any_task=True,
    )
    payload = {
        "id": f"score-{uuid.uuid4().hex}",
        "object": "list",
        "created": int(time.time()),
        "model": body.model or result.model.name,
        "data": [
            {"index": i, "object": "score", "score": float(s)} for i, s in enumerate(result.scores)
        ],
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    }
    return _json(payload, result, request)

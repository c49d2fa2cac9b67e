"""``POST /v2/embed``: Cohere's v2 embed, as its SDK (``cohere.ClientV2(base_url=...)
.embed``) posts it and reads the answer.

The request's ``input_type`` picks the model's prompt the way ``input_type`` does on the
other routes: a prompt of that very name if the model has one, else ``search_query`` and
``search_document`` take the model's query and document prompts (``query`` and
``document`` on the other routes), and ``classification`` / ``clustering`` without a prompt
of their own take the model's default. ``truncate`` is ``NONE`` (refuse an input over the
limit), ``START`` (cut its start) or ``END`` (cut its end, the default, as Cohere);
``max_tokens`` lowers the limit; ``output_dimension`` keeps the first N dimensions
(Matryoshka) before any quantizing. The answer is always ``embeddings_by_type``, float by
default. Only text is embedded: ``images`` and ``inputs`` are refused naming the field;
``priority`` is accepted and ignored.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from embedhost.api.compact import by_type, unique_types
from embedhost.api.deps import CalibrationsDep, EmbedAdmission, ServiceDep
from embedhost.api.routes.embeddings import _ERRORS, _embed_response
from embedhost.errors import InvalidRequest
from embedhost.models.version import ModelVersion
from embedhost.protocol import EmbeddingType
from embedhost.service import EmbedOptions, EmbedResult

router = APIRouter()

CohereInputType = Literal["search_document", "search_query", "classification", "clustering"]
_TRUNCATE: dict[str, bool | Literal["left", "right"]] = {
    "NONE": False,
    "START": "left",
    "END": "right",
}
_ALIASES = {"search_query": "query", "search_document": "document"}


class CohereEmbedRequest(BaseModel):
    """Cohere's ``POST /v2/embed`` body (text only)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        default=None, description="Model name (name@version pins one). Default: the first."
    )
    input_type: CohereInputType = Field(description="Picks the model's prompt.")
    texts: list[str] | None = Field(default=None, description="The texts to embed.")
    images: list[str] | None = Field(default=None, description="Not supported (text only).")
    inputs: list[Any] | None = Field(default=None, description="Not supported (text only).")
    embedding_types: list[EmbeddingType] | None = Field(
        default=None, min_length=1, max_length=6, description="Default: float."
    )
    truncate: Literal["NONE", "START", "END"] = "END"
    output_dimension: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    priority: int | None = Field(default=None, description="Accepted and ignored.")


class EmbeddingsByType(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    float_: list[list[float]] | None = Field(default=None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
    embeddings: EmbeddingsByType
    texts: list[str]
    meta: dict[str, Any]


def prompt_input_type(handle: ModelVersion, input_type: str) -> str | None:
    """The ``input_type`` of the other routes that Cohere's ``input_type`` means for this
    model (None: its default prompt)."""
    if input_type in handle.prompts.texts:
        return input_type
    return _ALIASES.get(input_type)


@router.post(
    "/v2/embed",
    response_model=CohereEmbedResponse,
    responses=_ERRORS,
    summary="Embed texts (Cohere v2-compatible)",
    tags=["embeddings"],
)
async def cohere_embed(
    admission: EmbedAdmission,
    body: CohereEmbedRequest,
    request: Request,
    service: ServiceDep,
    calibrations: CalibrationsDep,
) -> Response:
    for name in ("images", "inputs"):
        if getattr(body, name) is not None:
            raise InvalidRequest(
                f"'{name}' is not supported: this server embeds text; send 'texts'", param=name
            )
    if not body.texts:
        raise InvalidRequest("'texts' must be a non-empty list of strings", param="texts")
    texts = body.texts
    types = unique_types(body.embedding_types or ["float"])

    def options(handle: ModelVersion) -> EmbedOptions:
        dims = handle.info.dims if handle.info is not None else None
        if body.output_dimension is not None and dims is not None and body.output_dimension > dims:
            raise InvalidRequest(
                f"output_dimension={body.output_dimension} is larger than this model's {dims}",
                param="output_dimension",
            )
        return EmbedOptions(
            truncate=_TRUNCATE[body.truncate],
            dimensions=body.output_dimension,
            input_type=prompt_input_type(handle, body.input_type),
            max_tokens=body.max_tokens,
        )

    async def payload(result: EmbedResult) -> dict[str, Any]:
        total = result.tokens.total
        return {
            "id": str(uuid.uuid4()),
            "response_type": "embeddings_by_type",
            "embeddings": await by_type(calibrations, result, types),
            "texts": texts,
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"input_tokens": total},
                "tokens": {"input_tokens": total},
            },
        }

    return await _embed_response(
        request,
        service,
        admission,
        model=body.model,
        user=None,
        inputs=texts,
        options=options,
        payload=payload,
    )

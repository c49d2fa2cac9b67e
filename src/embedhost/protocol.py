"""Request and response models of the HTTP API: OpenAI-compatible and native.

These models are the contract clients see (and the OpenAPI schema at ``/docs``). Responses on
the hot path are serialized straight to bytes with orjson (see ``api/routes``); the response
models here document them.

This module imports nothing from the package.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict

_INPUT_TYPE_DOC = (
    "Extension: the use of the inputs, which picks the model's prompt: 'query', "
    "'document', or any prompt name the model lists (GET /v1/models). Default: the "
    "model's default prompt, if any."
)
_PROMPT_NAME_DOC = "One of the model's prompt names, as TEI spells it (or use input_type)."

Truncate = bool | Literal["left", "right", "chunk"]
"""Per-request truncation: ``true`` uses the model's side (right unless configured),
``"left"``/``"right"`` pick the side, ``false`` refuses inputs over the limit, ``"chunk"``
embeds overlapping windows and pools them into one vector."""

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
_EMBEDDING_TYPES_DOC = (
    "Extension (Cohere's): the types to return: float, int8, uint8, binary, ubinary, base64 "
    "(see the README's Compact vectors)."
)

TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]

# The documented contract is stricter than the parsing: empty strings and empty lists are
# refused by the service with a 400 naming the input (not a generic 422), so the schema
# says what is accepted while validation stays lenient enough to produce that message.
_TEXT: JsonDict = {"type": "string", "minLength": 1}
_TEXTS: JsonDict = {"type": "array", "items": _TEXT, "minItems": 1}
_IDS: JsonDict = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0},
    "minItems": 1,
}
_INPUT_SCHEMA = WithJsonSchema(
    {"anyOf": [_TEXT, _TEXTS, _IDS, {"type": "array", "items": _IDS, "minItems": 1}]}
)
# Exactly one of text and texts (null counts as absent).
_TEXT_OR_TEXTS: JsonDict = {
    "oneOf": [
        {"required": ["text"], "properties": {"texts": {"type": "null"}}},
        {"required": ["texts"], "properties": {"text": {"type": "null"}}},
    ]
}


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``, as OpenAI defines it, plus ``truncate``."""

    # strict: the schema says boolean and integer, so "1", 0 and 1.0 are refused, not coerced.
    model_config = ConfigDict(extra="ignore", strict=True)

    input: Annotated[str | list[str] | TokenIds | list[TokenIds], _INPUT_SCHEMA] = Field(
        description=(
            "Text or texts to embed, or token ids of the model's own vocabulary "
            "(one list, or a list of lists). Token ids are used as given: no special "
            "tokens are added."
        ),
    )
    model: str | None = Field(
        default=None,
        description="Model name, optionally pinned as name@version. Default: the first configured model.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="base64: little-endian float32, as OpenAI's SDK decodes it."
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Matryoshka: keep the first N dimensions, then re-normalize.",
    )
    user: str | None = Field(default=None, max_length=256)
    truncate: Truncate | None = Field(
        default=None,
        description="Override the model's truncation policy for this request.",
    )
    input_type: str | None = Field(
        default=None, min_length=1, max_length=128, description=_INPUT_TYPE_DOC
    )
    prompt_name: str | None = Field(
        default=None, min_length=1, max_length=128, description=_PROMPT_NAME_DOC
    )
    embedding_types: list[EmbeddingType] | None = Field(
        default=None, min_length=1, max_length=6, description=_EMBEDDING_TYPES_DOC
    )


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str | None = Field(
        default=None, description="Absent when embedding_types leaves out float."
    )
    embeddings: dict[str, list[float] | list[int] | str] | None = Field(
        default=None, description="Extension: the other embedding_types asked for."
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class EmbedRequest(BaseModel):
    """``POST /embed``: the native API. Give ``text`` or ``texts``."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_TEXT_OR_TEXTS)

    text: Annotated[str | None, WithJsonSchema({"anyOf": [_TEXT, {"type": "null"}]})] = None
    texts: Annotated[list[str] | None, WithJsonSchema({"anyOf": [_TEXTS, {"type": "null"}]})] = None
    model: str | None = None
    normalize: bool = True
    truncate: Truncate | None = None
    dimensions: int | None = Field(default=None, ge=1)
    input_type: str | None = Field(
        default=None, min_length=1, max_length=128, description=_INPUT_TYPE_DOC
    )
    prompt_name: str | None = Field(
        default=None, min_length=1, max_length=128, description=_PROMPT_NAME_DOC
    )
    chunking: Chunking | None = Field(
        default=None, description="Return one vector per chunk of each input (see Chunking)."
    )
    embedding_types: list[EmbeddingType] | None = Field(
        default=None, min_length=1, max_length=6, description=_EMBEDDING_TYPES_DOC
    )


class EmbedResponse(BaseModel):
    model: str
    version: str
    dimensions: int
    embeddings: list[list[float]] | dict[str, list[list[float]] | list[list[int]] | list[str]] = (
        Field(description="Float rows; by type ({int8: rows, ...}) when embedding_types is given.")
    )
    tokens: list[int] = Field(description="Token count of each input after truncation.")
    truncated: list[bool]
    usage: Usage
    chunks: list[int] = Field(description="Windows (or chunks) each input took.")
    chunk_embeddings: list[list[ChunkVector]] | None = Field(
        default=None, description="With chunking: each input's chunks, in order."
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "embedhost"
    version: str | None = Field(
        default=None, description="Extension: the version that serves this id."
    )
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Extension: the model's prompts by name (input_type / prompt_name).",
    )
    default_prompt: str | None = Field(
        default=None, description="Extension: the prompt applied when a request names none."
    )
    task: str | None = Field(
        default=None,
        description="Extension: embed or rerank (known once the model has loaded).",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- long documents and tokenizing (issue 22) ----------------------------------------------

Span = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]


class Chunking(BaseModel):
    """``/embed``'s ``chunking``: ``windows`` embeds overlapping token windows of each input
    (as ``truncate: chunk`` does) and returns each one; ``late`` runs each input through the
    model once and pools one vector per chunk from its token states (the input must fit
    the model's window). Late chunks are the client's ``spans`` (character ``[start,
    end)`` per input) or, without them, sentences grouped up to ``max_tokens``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Literal["windows", "late"] = "windows"
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per window or sentence chunk. Default: the model's window.",
    )
    overlap_tokens: int | None = Field(
        default=None, ge=0, description="windows: tokens shared. Default: the model's."
    )
    spans: list[list[Span]] | None = Field(
        default=None, description="late: per input, the chunks as [start, end) characters."
    )


class ChunkVector(BaseModel):
    start: int | None = Field(description="Character offset of the chunk in its input.")
    end: int | None
    tokens: int
    embedding: list[float]


class TokenizeRequest(BaseModel):
    """``POST /tokenize``, in TEI's shape."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Annotated[str | list[str], WithJsonSchema({"anyOf": [_TEXT, _TEXTS]})]
    model: str | None = None
    add_special_tokens: bool = True
    prompt_name: str | None = Field(default=None, min_length=1, max_length=128)
    char_offsets: bool = Field(
        default=False, description="Extension: add char_start/char_stop (character offsets)."
    )


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(description="UTF-8 byte offset in the input (TEI's).")
    stop: int | None
    char_start: int | None = None
    char_stop: int | None = None


class DecodeRequest(BaseModel):
    """``POST /decode``, in TEI's shape."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ids: TokenIds | list[TokenIds]
    model: str | None = None
    skip_special_tokens: bool = True


EmbedRequest.model_rebuild()
EmbedResponse.model_rebuild()

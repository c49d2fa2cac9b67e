"""Request and response models of the rerank and score routes (``api/routes/rerank.py``):
the shapes of Cohere (v1 and v2), Jina, Hugging Face TEI and vLLM, so that their clients
work unchanged.

Requests ignore fields they do not know (a client of another version may send more);
fields that some of these APIs define and embedhost does not use (Cohere's ``priority``,
``relevant_spans``, ``rank_fields``) are accepted and ignored. This module imports
nothing from the package.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TextDocument(BaseModel):
    """A document as an object (Jina, Cohere v1): its ``text``."""

    model_config = ConfigDict(extra="ignore")
    text: str


class RerankRequest(BaseModel):
    """``POST /v1/rerank`` (Jina, Cohere v1) and ``POST /v2/rerank`` (Cohere v2)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="A reranker's name (default: the first reranker served)."
    )
    query: str
    documents: list[str | TextDocument] = Field(
        description="Texts, or objects with a 'text' (Jina, Cohere v1)."
    )
    top_n: int | None = Field(
        default=None, ge=1, description="Return the best n only (default: all)."
    )
    return_documents: bool = Field(
        default=False, description="Include each document in its result (Jina, Cohere v1)."
    )
    max_tokens_per_doc: int | None = Field(
        default=None, ge=1, description="Cohere v2: each document is cut to this many tokens."
    )
    truncate: bool | None = Field(
        default=None,
        description=(
            "Extension: true cuts long documents, false refuses them; unset: the model's "
            "rule (best of overlapping windows by default)."
        ),
    )
    priority: int | None = Field(default=None, description="Cohere v2: accepted, ignored.")
    relevant_spans: object | None = Field(default=None, description="Accepted, ignored.")
    rank_fields: list[str] | None = Field(default=None, description="Accepted, ignored.")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: TextDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    """Both rerank routes: ``results`` sorted by score, best first."""

    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: dict[str, object]


class TEIRerankRequest(BaseModel):
    """``POST /rerank``, as Hugging Face's text-embeddings-inference defines it."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, description="Extension: which reranker.")
    query: str
    texts: list[str]
    raw_scores: bool = Field(default=False, description="The logits, not the sigmoid.")
    return_text: bool = False
    truncate: bool | None = Field(
        default=None,
        description="true cuts long texts, false refuses them; unset: the model's rule.",
    )
    truncation_direction: Literal["Right", "Left", "right", "left"] | None = None


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ScoreRequest(BaseModel):
    """``POST /score``, as vLLM defines it: ``text_1`` against each ``text_2`` (one to
    many) or pairwise (as many of each); ``queries``/``documents`` are the same."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    truncate_prompt_tokens: int | None = Field(
        default=None, ge=1, description="vLLM: each document cut to this many tokens."
    )


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: RerankUsage

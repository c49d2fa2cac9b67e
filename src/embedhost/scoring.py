"""Rerank and score, transport-free: the service behind ``/v1/rerank``, ``/v2/rerank``,
``/rerank`` and ``/score`` (``api/routes/rerank.py``).

A reranker (``task: rerank``, a cross-encoder) scores query-document pairs. The call goes
the way an embedding call goes, on the same parts: resolve the version (A/B, leases,
stats), check the key's models, tokenize off the loop when large, lay out the pairs and
their windows (:mod:`embedhost.pairs`), check the request's token limit, charge the key's
token budget, look the pairs up in the cache (keyed on model version + pair token ids,
i.e. query ids + document ids) and queue the misses on a replica's batcher (token budget,
length-sorted, bounded queue). The engine answers raw logits; here they become relevance
scores (sigmoid for one label, as ``CrossEncoder.predict`` does; softmax's last label
otherwise), the best window of each document counting.

``/score`` on an embedding model answers the cosine of the two texts' vectors, through
:class:`~embedhost.service.EmbeddingService`.

A route on the other task's model is a 400 that names the model's task; bad input (empty
query or list, too many documents) is refused before anything is tokenized.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from embedhost.cache import BYPASS, DEFAULT_POLICY, CachePolicy
from embedhost.engines.base import Vectors
from embedhost.engines.rerank import EMBED, RERANK, PairTemplate
from embedhost.errors import EmbedhostError, InvalidRequest, PayloadTooLarge
from embedhost.models.replica import Ticket
from embedhost.models.version import ModelVersion
from embedhost.pairs import Mode, Pairs, build, content_ids, load_template
from embedhost.security.admission import Admission
from embedhost.service import EmbeddingService, EmbedOptions, ReplicaBatch, mark_gone

Scores = npt.NDArray[np.float32]

# As in the embedding service: small requests tokenize inline, large ones in a thread.
_INLINE_CHARS = 8192


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    """How to score, as the request asks (None: the model's rule)."""

    truncate: bool | None = None
    """True: cut long documents (``direction``); False: refuse them; None: the model's
    rule (windows, unless ``rerank_windows: false``)."""
    direction: Literal["right", "left"] | None = None
    max_tokens_per_doc: int | None = None
    """Cohere's: each document cut to this many tokens first."""
    cache: CachePolicy = DEFAULT_POLICY


@dataclass(frozen=True, slots=True)
class Fields:
    """The request's names for its parts, for error messages (``query``/``documents``,
    TEI's ``texts``, vLLM's ``text_1``/``text_2``)."""

    query: str = "query"
    documents: str = "documents"


@dataclass(slots=True)
class ScoreResult:
    model: ModelVersion
    scores: Scores
    """Relevance per document (sigmoid of the logit; for an embedding model, the cosine)."""
    raw: Scores
    """The logit per document (the cosine again for an embedding model)."""
    tokens: int
    windows: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    cache: str | None = None
    elapsed_s: float = 0.0


class ScoringService:
    def __init__(self, embeddings: EmbeddingService) -> None:
        self.embeddings = embeddings
        self.limits = embeddings.limits
        self._templates: dict[tuple[str, str], PairTemplate] = {}

    def resolve(self, model: str | None, key: str | None = None) -> ModelVersion:
        """The version serving ``model`` for ``key``; no model named: the first reranker
        served (TEI's clients name none), else the default model (its task decides)."""
        if model is None:
            registry = self.embeddings.registry
            for name, handle in registry.handles.items():
                if self.task_of(handle) == RERANK:
                    return registry.route(name, key)
        return self.embeddings.resolve(model, key)

    def check_documents(self, n: int, fields: Fields) -> None:
        """An empty list or too many documents: refused before anything else."""
        if n == 0:
            raise InvalidRequest(f"{fields.documents} must not be empty", param=fields.documents)
        limit = self.limits.max_documents
        if n > limit:
            raise PayloadTooLarge(
                f"{n} {fields.documents} in one request; the limit is {limit} (max_documents)",
                param=fields.documents,
            )

    async def rerank(
        self,
        handle: ModelVersion,
        query: str,
        documents: list[str],
        options: ScoreOptions = ScoreOptions(),
        *,
        fields: Fields = Fields(),
        admission: Admission | None = None,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> ScoreResult:
        """Each document's score against ``query``, in the documents' order."""
        if not query:
            raise InvalidRequest(f"{fields.query} must not be empty", param=fields.query)
        return await self.pairs(
            handle,
            [query],
            documents,
            options,
            fields=fields,
            admission=admission,
            disconnected=disconnected,
        )

    async def pairs(
        self,
        handle: ModelVersion,
        queries: list[str],
        documents: list[str],
        options: ScoreOptions = ScoreOptions(),
        *,
        fields: Fields = Fields(),
        admission: Admission | None = None,
        disconnected: Callable[[], Awaitable[object]] | None = None,
        any_task: bool = False,
    ) -> ScoreResult:
        """The score of ``documents[i]`` against ``queries[i]`` (or against the one query).
        ``any_task``: an embedding model answers cosines (``/score``) instead of a 400."""
        self.check_documents(len(documents), fields)
        if len(queries) not in (1, len(documents)):
            raise InvalidRequest(
                f"{fields.query} has {len(queries)} texts and {fields.documents} "
                f"{len(documents)}: give one, or as many as {fields.documents}",
                param=fields.query,
            )
        for i, q in enumerate(queries):
            if not q:
                where = fields.query if len(queries) == 1 else f"{fields.query}[{i}]"
                raise InvalidRequest(f"{where} must not be empty", param=where)
        if admission is not None:
            admission.check_model(handle.name)
        task = self.task_of(handle)
        if task != RERANK and not any_task:
            raise InvalidRequest(
                f"model {handle.name!r} is an embedding model (task {task}); rerank needs "
                "a reranker (task rerank); /score takes either",
                param="model",
            )
        if task == EMBED:
            return await self._cosines(handle, queries, documents, admission, disconnected)
        ticket = Ticket()
        watcher = None
        if disconnected is not None:
            watcher = asyncio.get_running_loop().create_task(mark_gone(ticket, disconnected))
        start = time.perf_counter()
        try:
            with handle.lease():
                try:
                    result = await self._score(
                        handle, queries, documents, options, fields, ticket, admission
                    )
                except EmbedhostError as exc:
                    handle.stats.error(exc.code)
                    raise
                result.elapsed_s = time.perf_counter() - start
                handle.stats.ok(result.elapsed_s, len(documents), result.tokens)
        finally:
            if watcher is not None:
                watcher.cancel()
        return result

    @staticmethod
    def task_of(handle: ModelVersion) -> str:
        """What the version's engine reported at load (``embed`` before it has loaded: a
        503 follows from ``pick`` anyway)."""
        info = handle.info
        return info.task if info is not None else (handle.config.task or EMBED)

    def _template(self, handle: ModelVersion) -> PairTemplate:
        key = (handle.ref, handle.config.path)
        found = self._templates.get(key)
        if found is None:
            found = self._templates[key] = load_template(handle.config)
        return found

    async def _score(
        self,
        handle: ModelVersion,
        queries: list[str],
        documents: list[str],
        options: ScoreOptions,
        fields: Fields,
        ticket: Ticket,
        admission: Admission | None,
    ) -> ScoreResult:
        replica = handle.pick()
        info = replica.info
        assert info is not None
        mode = _mode(handle, options)
        chars = sum(map(len, queries)) + sum(map(len, documents))

        def prepare() -> Pairs:
            # The layout is read once per version (a file read: in the thread when large).
            template = self._template(handle)
            tok = handle.tokenizer
            q_ids = content_ids(tok, queries, fields.query)
            d_ids = content_ids(tok, documents, fields.documents)
            return build(
                template,
                q_ids,
                d_ids,
                info.max_tokens,
                mode,
                max_doc_tokens=options.max_tokens_per_doc,
                query_param=fields.query,
                doc_param=fields.documents,
            )

        pairs = prepare() if chars <= _INLINE_CHARS else await asyncio.to_thread(prepare)
        if pairs.tokens > self.limits.max_request_tokens:
            raise PayloadTooLarge(
                f"the request has {pairs.tokens} tokens to score (windows included); the "
                f"limit is {self.limits.max_request_tokens} per request",
                param=fields.documents,
            )
        cache = self.embeddings.cache
        if cache is not None and (
            not cache.enabled or not handle.config.cache or options.cache == BYPASS
        ):
            cache = None
        charge_all = cache is None or cache.config.charge_hits
        if admission is not None and charge_all:
            await admission.charge_tokens(pairs.tokens)
        compute = ReplicaBatch(replica, ticket, None if charge_all else admission)
        state = None
        if cache is None:
            rows = await compute(pairs.seqs)
        else:
            rows, state = await cache.embed(
                cache.namespace(handle.config, info),
                cache.scope_for(admission.key_id if admission is not None else None),
                pairs.seqs,
                info.dims,
                compute,
                options.cache,
            )
        logits = np.stack(rows).astype(np.float32, copy=False)
        relevance, raw = _activate(logits)
        n = len(documents)
        best = np.full(n, -np.inf, dtype=np.float32)
        best_raw = np.full(n, -np.inf, dtype=np.float32)
        owner = np.asarray(pairs.owner)
        np.maximum.at(best, owner, relevance)
        np.maximum.at(best_raw, owner, raw)
        return ScoreResult(
            handle, best, best_raw, pairs.tokens, pairs.windows, pairs.truncated, state
        )

    async def _cosines(
        self,
        handle: ModelVersion,
        queries: list[str],
        documents: list[str],
        admission: Admission | None,
        disconnected: Callable[[], Awaitable[object]] | None,
    ) -> ScoreResult:
        """An embedding model's answer to ``/score``: the cosine of the two texts."""
        start = time.perf_counter()
        result = await self.embeddings.embed(
            handle,
            queries + documents,
            EmbedOptions(normalize=True),
            admission=admission,
            disconnected=disconnected,
        )
        vecs = result.vectors
        q, d = vecs[: len(queries)], vecs[len(queries) :]
        cos = (d @ q[0] if len(queries) == 1 else (d * q).sum(axis=1)).astype(np.float32)
        return ScoreResult(
            handle,
            cos,
            cos,
            result.tokens.total,
            [1] * len(documents),
            result.tokens.truncated[len(queries) :],
            result.cache,
            time.perf_counter() - start,
        )


def _mode(handle: ModelVersion, options: ScoreOptions) -> Mode:
    config = handle.config
    if options.truncate is False:
        return "refuse"
    if options.truncate is True:
        if options.direction is not None:
            return options.direction
        return config.truncation if config.truncation in ("right", "left") else "right"
    if options.direction is not None:
        return options.direction
    if config.rerank_windows or config.truncation == "chunk":
        # chunk (embedding models' windows) means the same for a reranker: the best window.
        return "window"
    return config.truncation


def _activate(logits: Vectors) -> tuple[Scores, Scores]:
    """Relevance and raw score of each row: sigmoid of a single logit (CrossEncoder's
    default for one label), else the softmax of the last label."""
    if logits.shape[1] == 1:
        raw = logits[:, 0]
        rel = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        return rel.astype(np.float32), raw
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    soft = e[:, -1] / e.sum(axis=1)
    return soft.astype(np.float32), logits[:, -1]

"""One embedding call, transport-free: resolve the model, pick its prompt (``input_type``
/ ``prompt_name``), tokenize and count, truncate or refuse, check limits, look the
inputs up in the embedding cache (:mod:`embedhost.cache`), queue the misses on a
replica's batcher, await the vectors, then apply Matryoshka ``dimensions`` and
normalization.

Both HTTP routes (OpenAI and native) call :meth:`EmbeddingService.embed`. It holds a
lease on the version for the whole call (a retiring version drains until none is left),
counts the call on the version's stats, and, when the model has a shadow version, sends
a copy of the texts there in the background: only the shadow's latency and its cosine
agreement with the answer are recorded, the client never waits for it or sees it.

How to embed is one :class:`EmbedOptions` value (truncation, ``dimensions``,
normalization); who is asking is the ``admission`` (its allowed models and token budget).
The service makes the batch :class:`~embedhost.models.replica.Ticket` of each call itself. The
caller, which alone knows its transport, may pass ``disconnected``: an awaitable factory
that returns once the client has gone (for HTTP, the server's ``receive`` saying
``http.disconnect``). The service awaits it in a task for the length of the call and marks
the ticket gone when it returns, so the batcher skips what nobody will read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedhost import longdocs
from embedhost.cache import BYPASS, DEFAULT_POLICY, CachePolicy, EmbeddingCache
from embedhost.config import Priority, RequestLimitsConfig
from embedhost.engines.base import Vectors
from embedhost.errors import DeadlineExceeded, EmbedhostError, InvalidRequest, PayloadTooLarge
from embedhost.longdocs import ChunkingSpec, ChunkPlan, ChunkVector
from embedhost.models.registry import ModelRegistry
from embedhost.models.replica import Replica, Ticket
from embedhost.models.version import ModelVersion
from embedhost.protocol import Truncate
from embedhost.security.admission import Admission
from embedhost.tokenization import (
    Policy,
    Prompt,
    Tokenized,
    check_input_chars,
    input_char_limit,
    prepare_ids,
    prepare_texts,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from embedhost.tracing import Tracing

# Below this many characters, tokenizing inline costs less than a hop to a thread
# (tens of microseconds); above it, the Rust tokenizer runs in a thread, off the loop.
_INLINE_CHARS = 8192


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """How to embed, as the request asks (None: the model's configured behaviour)."""

    truncate: Truncate | None = None
    dimensions: int | None = None
    """Keep the first ``dimensions`` of each vector (Matryoshka)."""
    normalize: bool | None = None
    input_type: str | None = None
    """A prompt name, or ``query``/``document`` (see :meth:`Prompts.resolve`)."""
    prompt_name: str | None = None
    """TEI's spelling: a prompt name of the model."""
    cache: CachePolicy = DEFAULT_POLICY
    """What the request lets the cache do (``Cache-Control: no-cache`` / ``no-store``)."""
    priority: Priority = "online"
    """The batcher lane (``batch``: the capacity online work leaves; see embedhost.lanes)."""
    chunking: ChunkingSpec | None = None
    """Per-chunk vectors (``/embed``'s ``chunking``; see :mod:`embedhost.longdocs`)."""
    max_tokens: int | None = None
    """Cap each input at this many tokens (below the model's limit; Cohere's ``max_tokens``)."""
    timeout_s: float | None = None
    """The request's own deadline (``X-Request-Timeout``), capped by
    ``limits.max_request_timeout_s``; past it: :class:`DeadlineExceeded` (504)."""


_DEFAULT = EmbedOptions()


@dataclass(slots=True)
class EmbedResult:
    model: ModelVersion
    vectors: Vectors
    tokens: Tokenized
    # Where the time went, in seconds: tokenizing, waiting for the first batch to run,
    # and from then until the last batch answered.
    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    cache: str | None = None
    """``hit``, ``miss`` or ``partial``; None when the cache was not used."""
    chunks: list[int] | None = None
    """Windows (or chunks) per input, when chunked."""
    chunk_vectors: list[list[ChunkVector]] | None = None


class EmbeddingService:
    def __init__(
        self,
        registry: ModelRegistry,
        limits: RequestLimitsConfig,
        *,
        tracing: Tracing | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.tracing = tracing
        self.cache = cache

    def resolve(self, model: str | None, key: str | None = None) -> ModelVersion:
        """The version that serves ``model`` for caller ``key`` (sticky A/B)."""
        return self.registry.route(model, key)

    async def embed(
        self,
        handle: ModelVersion,
        inputs: list[str] | list[list[int]],
        options: EmbedOptions = _DEFAULT,
        *,
        admission: Admission | None = None,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> EmbedResult:
        """``admission`` (from ``require_scope``): the key's allowed models are checked once
        the model is resolved, and its token budget is charged once the tokens are counted.
        ``disconnected``: see the module docstring."""
        ticket = Ticket(priority=options.priority)
        watcher = None
        if disconnected is not None:
            watcher = asyncio.get_running_loop().create_task(mark_gone(ticket, disconnected))
        try:
            if admission is not None:
                admission.check_model(handle.name)
            start = time.perf_counter()
            with handle.lease():
                try:
                    result = await self._deadline(
                        options.timeout_s,
                        self._embed(handle, inputs, options, ticket, admission),
                        ticket,
                    )
                except EmbedhostError as exc:
                    handle.stats.error(exc.code)
                    raise
                handle.stats.ok(time.perf_counter() - start, len(inputs), result.tokens.total)
        finally:
            if watcher is not None:
                watcher.cancel()
        self._mirror(handle, inputs, result, options)
        return result

    async def _deadline(
        self, timeout_s: float | None, work: Awaitable[EmbedResult], ticket: Ticket
    ) -> EmbedResult:
        """``work`` within the request's own deadline, if it set one."""
        if timeout_s is None:
            return await work
        limit = min(timeout_s, self.limits.max_request_timeout_s)
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                return await work
        except TimeoutError:
            if not deadline.expired():
                raise
            # Its sequences still queued are dropped when the next batch is formed (and no
            # longer count toward max_queue_items); a batch already in the engine finishes.
            ticket.gone = True
            raise DeadlineExceeded(
                f"the request was not answered within its X-Request-Timeout of {limit:g} s; "
                "its queued work was dropped"
            ) from None

    def _mirror(
        self,
        handle: ModelVersion,
        inputs: list[str] | list[list[int]],
        result: EmbedResult,
        options: EmbedOptions,
    ) -> None:
        # Token ids belong to one vocabulary; only texts can be mirrored to another version.
        if not isinstance(inputs[0], str):
            return
        target = self.registry.shadow_for(handle)
        if target is None:
            return
        if target.shadow_in_flight >= self.registry.settings.lifecycle.shadow_max_in_flight:
            target.stats.shadow_dropped += 1
            return
        target.shadow_in_flight += 1
        texts: list[str] = inputs  # type: ignore[assignment,unused-ignore]
        self.registry.spawn(
            self._shadow(target, texts, result.vectors, options), name=f"shadow-{target.ref}"
        )

    async def _shadow(
        self, target: ModelVersion, texts: list[str], answer: Vectors, original: EmbedOptions
    ) -> None:
        dimensions = original.dimensions
        start = time.perf_counter()
        try:
            with target.lease():
                # Not through the cache: the shadow's latency is what is measured.
                options = EmbedOptions(
                    dimensions=dimensions,
                    normalize=True,
                    input_type=original.input_type,
                    prompt_name=original.prompt_name,
                    cache=BYPASS,
                )
                shadow = await self._embed(target, texts, options, Ticket())
        except Exception as exc:
            target.stats.shadow_errors += 1
            log.debug("shadow %s failed: %s", target.ref, exc)
            return
        finally:
            target.shadow_in_flight -= 1
        cosines = None
        if shadow.vectors.shape == answer.shape:
            a = answer / np.maximum(np.linalg.norm(answer, axis=1, keepdims=True), 1e-12)
            cosines = np.sum(a * shadow.vectors, axis=1)  # the shadow's are normalized
        target.stats.shadow_ok(time.perf_counter() - start, cosines)

    async def _embed(
        self,
        handle: ModelVersion,
        inputs: list[str] | list[list[int]],
        options: EmbedOptions,
        ticket: Ticket,
        admission: Admission | None = None,
    ) -> EmbedResult:
        dimensions = options.dimensions
        if not inputs:
            raise InvalidRequest("input must not be empty", param="input")
        split = handle.config.split_oversized
        if len(inputs) > self.limits.max_inputs_per_request and not split:
            raise PayloadTooLarge(
                f"{len(inputs)} inputs in one request; the limit is "
                f"{self.limits.max_inputs_per_request}",
                param="input",
            )
        replica = handle.pick()
        info = replica.info
        assert info is not None
        if info.task != "embed":
            raise InvalidRequest(
                f"model {handle.name!r} is a reranker (task {info.task}), not an embedding "
                "model; use /v1/rerank, /v2/rerank, /rerank or /score",
                param="model",
            )
        if dimensions is not None and dimensions > info.dims:
            raise InvalidRequest(
                f"dimensions={dimensions} is larger than this model's {info.dims}",
                param="dimensions",
            )
        policy = _policy(handle.config.truncation, options.truncate)
        max_tokens = min(info.max_tokens, options.max_tokens or info.max_tokens)
        prompt = self._prompt(handle, inputs, options)
        t_tok = time.monotonic()
        if (policy == "chunk" or options.chunking is not None) and isinstance(inputs[0], str):
            # Issue 20's character limit, for inputs that may take many windows: without
            # a model's own max_input_chars, the default per token of max_chunks_per_input
            # windows (a chunked input is tokenized whole, in a thread, before its windows
            # are counted; this bounds that work).
            configured = handle.config.max_input_chars or self.limits.max_input_chars
            window = info.max_tokens * max(1, self.limits.max_chunks_per_input)
            check_input_chars(inputs, input_char_limit(configured, window))
        if options.chunking is not None and options.chunking.mode == "late":
            late = await longdocs.late(
                handle, replica, inputs, prompt, options, self.limits, admission
            )
            return EmbedResult(
                handle,
                late.vectors,
                late.tokens,
                tokenize_s=late.tokenize_s,
                inference_s=late.inference_s,
                chunks=[len(k) for k in late.chunks],
                chunk_vectors=late.chunks,
            )
        chunked: ChunkPlan | None = None
        if policy == "chunk" or options.chunking is not None:
            chunked = await longdocs.plan_for(
                handle, inputs, max_tokens, prompt, options.chunking, self.limits
            )
            tokens = chunked.windows
        elif self.tracing is None:
            tokens = await self._tokenize(
                handle, inputs, max_tokens, policy, prompt, window=info.max_tokens
            )
        else:
            with self.tracing.span("tokenize", inputs=len(inputs)) as span:
                tokens = await self._tokenize(
                    handle, inputs, max_tokens, policy, prompt, window=info.max_tokens
                )
                span.set_attribute("tokens", tokens.total)
        tokenize_s = time.monotonic() - t_tok
        if tokens.total > self.limits.max_request_tokens:
            raise PayloadTooLarge(
                f"the request has {tokens.total} tokens; the limit is "
                f"{self.limits.max_request_tokens} per request",
                param="input",
            )
        # The cache sits here: only its misses reach the batcher (see embedhost.cache).
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        if cache is not None and (not handle.config.cache or options.cache == BYPASS):
            cache = None
        charge_all = cache is None or cache.config.charge_hits
        if admission is not None and charge_all:
            await admission.charge_tokens(tokens.total)
        t_submit = time.monotonic()
        part = handle.config.batching.max_batch_size if split else None
        batch = ReplicaBatch(replica, ticket, None if charge_all else admission, part)
        cache_state = None
        if cache is None:
            results = await batch(tokens.ids)
        else:
            results, cache_state = await cache.embed(
                cache.namespace(handle.config, info),
                cache.scope_for(admission.key_id if admission is not None else None),
                tokens.ids,
                info.dims,
                batch,
                options.cache,
            )
        # Every item resolved with a result, so its batch stamped the ticket.
        dispatched = max(ticket.dispatched, t_submit)
        done = max(ticket.done, dispatched)
        if self.tracing is not None:
            self.tracing.record("queue", t_submit, dispatched, model=handle.config.ref)
            self.tracing.record("inference", dispatched, done, model=handle.config.ref)
        vectors = np.stack(results)
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = vectors[:, :dimensions]
        do_norm = info.normalize if options.normalize is None else options.normalize
        if do_norm:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        chunks = chunk_vectors = None
        if chunked is not None:
            keep = options.chunking is not None
            vectors, tokens, chunks, chunk_vectors = chunked.finish(vectors, do_norm, keep)
        return EmbedResult(
            handle,
            np.ascontiguousarray(vectors, dtype=np.float32),
            tokens,
            tokenize_s=tokenize_s,
            queue_s=dispatched - t_submit,
            inference_s=done - dispatched,
            cache=cache_state,
            chunks=chunks,
            chunk_vectors=chunk_vectors,
        )

    @staticmethod
    def _prompt(
        handle: ModelVersion, inputs: list[str] | list[list[int]], options: EmbedOptions
    ) -> Prompt | None:
        """The prompt the request asks for (or the model's default); token-id input is
        used as given, so it takes none."""
        if isinstance(inputs[0], str):
            return handle.prompts.resolve(options.input_type, options.prompt_name)
        if options.input_type is not None or options.prompt_name is not None:
            raise InvalidRequest(
                "prompts apply to text input; token ids are used as given",
                param="input_type" if options.input_type is not None else "prompt_name",
            )
        return None

    async def _tokenize(
        self,
        handle: ModelVersion,
        inputs: list[str] | list[list[int]],
        max_tokens: int,
        policy: Policy,
        prompt: Prompt | None = None,
        *,
        window: int | None = None,
    ) -> Tokenized:
        """``window``: the model's own limit, which sizes the default max_input_chars
        (``max_tokens`` may be a request's lower cap, under which long inputs are cut)."""
        if isinstance(inputs[0], str):
            texts: list[str] = inputs
            for i, t in enumerate(texts):
                if not t:
                    raise InvalidRequest(f"input {i} is an empty string", param="input")
            # Issue 20: refuse an absurd input before any work proportional to it.
            configured = handle.config.max_input_chars or self.limits.max_input_chars
            # The model's window, not a request's lower max_tokens cap: a long input under
            # a small cap is cut, not refused.
            check_input_chars(texts, input_char_limit(configured, window or max_tokens))
            if sum(len(t) for t in texts) <= _INLINE_CHARS:
                return prepare_texts(handle.tokenizer, texts, max_tokens, policy, prompt)
            return await asyncio.to_thread(
                prepare_texts, handle.tokenizer, texts, max_tokens, policy, prompt
            )
        seqs: list[list[int]] = inputs
        if sum(len(s) for s in seqs) <= _INLINE_CHARS:
            return prepare_ids(handle.tokenizer, seqs, max_tokens, policy)
        # The vocabulary check walks every id: a thread for long sequences (issue 20).
        return await asyncio.to_thread(prepare_ids, handle.tokenizer, seqs, max_tokens, policy)


@dataclass(slots=True)
class ReplicaBatch:
    """Embeds sequences on one replica (scoring.py scores pairs through it too) (what the cache calls for its misses);
    ``admission``, when set, is charged the tokens of what is computed."""

    replica: Replica
    ticket: Ticket
    admission: Admission | None
    part: int | None = None
    """``split_oversized``: submit in parts of this many sequences."""

    async def __call__(self, seqs: list[list[int]]) -> list[Vectors]:
        if self.admission is not None:
            await self.admission.charge_tokens(sum(len(s) for s in seqs))
        size = self.part if self.part is not None else max(len(seqs), 1)
        # An oversized request (split_oversized) goes in parts, joined in order, at most
        # two queued at a time (the engine has the next part while one is answered): a
        # part waits for its predecessors while the queue has no room for it.
        pending: list[list[asyncio.Future[Vectors]]] = []
        out: list[Vectors] = []
        try:
            for start in range(0, len(seqs), size):
                part = seqs[start : start + size]
                while pending and (len(pending) == 2 or self.replica.refuses(len(part))):
                    out.extend(await self._collect(pending.pop(0)))
                pending.append(self.replica.submit(part, self.ticket))
            for futures in pending:
                out.extend(await self._collect(futures))
        except BaseException:
            self.ticket.gone = True  # the parts still queued are dropped
            raise
        return out

    async def _collect(self, futures: list[asyncio.Future[Vectors]]) -> list[Vectors]:
        try:
            results = await asyncio.gather(*futures, return_exceptions=True)
        except asyncio.CancelledError:
            self.ticket.gone = True
            raise
        for r in results:
            if isinstance(r, BaseException):
                self.ticket.gone = True
                raise r
        return results  # type: ignore[return-value]


async def mark_gone(ticket: Ticket, disconnected: Callable[[], Awaitable[object]]) -> None:
    """Mark ``ticket`` gone once its client disconnects (its queued work is dropped)."""
    await disconnected()
    ticket.gone = True


def _policy(configured: Policy, requested: Truncate | None) -> Policy:
    if requested is None:
        return configured
    if requested is True:
        return configured if configured not in ("refuse", "chunk") else "right"
    if requested is False:
        return "refuse"
    return requested

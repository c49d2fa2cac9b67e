"""Long documents in the service: chunk-and-pool (``truncation``/``truncate: chunk``),
per-window vectors (``chunking: {mode: windows}``) and late chunking (``mode: late``).

Chunk-and-pool and windows turn each input into token windows (:func:`plan`): the model's
special tokens and the prompt around at most a window of content, consecutive windows
sharing ``chunk_overlap_tokens``. The service embeds the windows as ordinary sequences,
through the cache (one entry per window) and the batcher, in the same batches as every
other request; :meth:`ChunkPlan.finish` then pools each input's windows (token-count
weighted mean, re-normalized when the model normalizes) or returns them one by one.

Late chunking (:func:`embed_late`) runs each whole input through the model once and pools
one vector per chunk from the token states of the chunk's characters (mean pooling), so
each chunk's vector carries the context of the whole input.

The pure part (windows, spans, sentences, pooling) is ``embedhost.chunking``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from embedhost import chunking
from embedhost.chunking import Encoding, Offset, Window
from embedhost.config import RequestLimitsConfig
from embedhost.engines.base import Vectors
from embedhost.errors import InputTooLong, InvalidRequest, PayloadTooLarge
from embedhost.models.replica import Replica
from embedhost.models.version import ModelVersion
from embedhost.security.admission import Admission
from embedhost.tokenization import Prompt, Tokenized, Tokenizer, check_texts


class _Options(Protocol):
    """What :func:`late` reads of the service's ``EmbedOptions`` (a layer above)."""

    @property
    def chunking(self) -> ChunkingSpec | None: ...
    @property
    def dimensions(self) -> int | None: ...
    @property
    def normalize(self) -> bool | None: ...


# As in the service: below this many characters tokenizing inline beats a thread hop.
_INLINE_CHARS = 8192


@dataclass(frozen=True, slots=True)
class ChunkingSpec:
    """What ``/embed``'s ``chunking`` asks for (see ``protocol.Chunking``)."""

    mode: Literal["windows", "late"] = "windows"
    max_tokens: int | None = None
    overlap_tokens: int | None = None
    spans: list[list[Offset]] | None = None


@dataclass(frozen=True, slots=True)
class ChunkVector:
    """One chunk of one input: its character span, token count and vector."""

    start: int | None
    end: int | None
    tokens: int
    vector: Vectors

    def to_dict(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "tokens": self.tokens,
            "embedding": self.vector,
        }


@dataclass(slots=True)
class _Split:
    """One input as the model's head (specials + prompt), content and tail."""

    head: list[int]
    body: list[int]
    tail: list[int]
    offsets: list[Offset | None] | None
    """Character spans of the content tokens in the input text (None: token-id input)."""


@dataclass(slots=True)
class ChunkPlan:
    windows: Tokenized
    """Every input's windows, in order: what the service embeds."""
    groups: list[range]
    """The windows of each input (indices into ``windows``)."""
    spans: list[Window]

    def finish(
        self, vectors: Vectors, normalize: bool, keep: bool
    ) -> tuple[Vectors, Tokenized, list[int], list[list[ChunkVector]] | None]:
        """The pooled vector of each input, its tokens (every window's, summed), its window
        count, and with ``keep`` the windows themselves."""
        counts = self.windows.counts
        pooled = np.stack(
            [chunking.pool(vectors[g], counts[g.start : g.stop], normalize) for g in self.groups]
        )
        tokens = Tokenized(
            ids=[[] for _ in self.groups],
            counts=[sum(counts[g.start : g.stop]) for g in self.groups],
            truncated=[False] * len(self.groups),
        )
        kept = None
        if keep:
            kept = [
                [
                    ChunkVector(self.spans[k].start, self.spans[k].end, counts[k], vectors[k])
                    for k in g
                ]
                for g in self.groups
            ]
        return pooled, tokens, [len(g) for g in self.groups], kept


def _split_texts(
    tokenizer: Tokenizer, texts: list[str], prompt: Prompt | None, max_tokens: int
) -> tuple[list[_Split], int]:
    """Each text tokenized with offsets and split; also the content room of a window."""
    check_texts(texts)
    pre, suf = tokenizer.prefix_specials, tokenizer.suffix_specials
    p = prompt.text if prompt is not None else ""
    n_prompt = 0
    if p:
        n_prompt = max(0, len(tokenizer.encode_batch([p])[0]) - pre - suf)
    room = max_tokens - pre - n_prompt - suf
    if room <= 0:
        raise InputTooLong(
            f"the prompt takes {n_prompt} tokens, leaving no room for input within "
            f"{max_tokens} tokens",
            param="input_type",
        )
    out = []
    for enc in tokenizer.encode_offsets([p + t for t in texts]):
        out.append(_split(enc, pre + n_prompt, suf, len(p)))
    return out, room


def _split(enc: Encoding, head: int, tail: int, shift: int) -> _Split:
    n = len(enc.ids)
    stop = n - tail
    offsets: list[Offset | None] = []
    for o in enc.offsets[head:stop]:
        offsets.append(None if o is None or o[1] <= shift else (max(o[0] - shift, 0), o[1] - shift))
    return _Split(enc.ids[:head], enc.ids[head:stop], enc.ids[stop:], offsets)


def plan(
    tokenizer: Tokenizer,
    inputs: list[str] | list[list[int]],
    max_tokens: int,
    prompt: Prompt | None,
    overlap: int,
    max_chunks: int,
) -> ChunkPlan:
    """The windows of every input (an input that fits is one window, as it is)."""
    if isinstance(inputs[0], str):
        texts: list[str] = inputs
        splits, room = _split_texts(tokenizer, texts, prompt, max_tokens)
    else:
        seqs: list[list[int]] = inputs
        for i, s in enumerate(seqs):
            bad = next((t for t in s if t >= tokenizer.vocab_size), None)
            if bad is not None:
                raise InvalidRequest(
                    f"input {i}: token id {bad} is outside this model's vocabulary",
                    param="input",
                )
        splits, room = [_Split([], list(s), [], None) for s in seqs], max_tokens
    ids: list[list[int]] = []
    groups: list[range] = []
    spans: list[Window] = []
    for i, sp in enumerate(splits):
        windows = chunking.plan_windows(len(sp.body), room, overlap, sp.offsets)
        if len(windows) > max_chunks:
            raise PayloadTooLarge(
                f"input {i} has {len(sp.body)} tokens: {len(windows)} windows of at most "
                f"{max_tokens} tokens, more than the limit of {max_chunks} per input "
                "(limits.max_chunks_per_input)",
                param=f"input[{i}]",
            )
        groups.append(range(len(ids), len(ids) + len(windows)))
        for w in windows:
            ids.append(sp.head + sp.body[w.first : w.stop] + sp.tail)
            spans.append(w)
    tokens = Tokenized(ids=ids, counts=[len(s) for s in ids], truncated=[False] * len(ids))
    return ChunkPlan(tokens, groups, spans)


async def plan_async(
    tokenizer: Tokenizer,
    inputs: list[str] | list[list[int]],
    max_tokens: int,
    prompt: Prompt | None,
    overlap: int,
    max_chunks: int,
) -> ChunkPlan:
    """:func:`plan`, in a thread when the inputs are long (never on the event loop)."""
    if isinstance(inputs[0], str) and sum(len(t) for t in inputs) > _INLINE_CHARS:
        return await asyncio.to_thread(
            plan, tokenizer, inputs, max_tokens, prompt, overlap, max_chunks
        )
    return plan(tokenizer, inputs, max_tokens, prompt, overlap, max_chunks)


def _no_empty(inputs: list[str] | list[list[int]]) -> None:
    for i, t in enumerate(inputs):
        if isinstance(t, str) and not t:
            raise InvalidRequest(f"input {i} is an empty string", param="input")


async def plan_for(
    handle: ModelVersion,
    inputs: list[str] | list[list[int]],
    max_tokens: int,
    prompt: Prompt | None,
    spec: ChunkingSpec | None,
    limits: RequestLimitsConfig,
) -> ChunkPlan:
    """The windows of a request: ``spec`` (``/embed``'s chunking) may ask for smaller
    windows or another overlap than the model's."""
    spec = spec or ChunkingSpec()
    _no_empty(inputs)
    overlap = spec.overlap_tokens
    return await plan_async(
        handle.tokenizer,
        inputs,
        min(spec.max_tokens or max_tokens, max_tokens),
        prompt,
        handle.config.chunk_overlap_tokens if overlap is None else overlap,
        limits.max_chunks_per_input,
    )


# -- late chunking ---------------------------------------------------------------------------


@dataclass(slots=True)
class LatePlan:
    ids: list[list[int]]
    """Each input whole, as the model sees it."""
    chunks: list[list[Offset]]
    index: list[list[list[int]]]
    """Per input, per chunk: the positions of its tokens in the sequence."""

    @property
    def tokens(self) -> Tokenized:
        return Tokenized(
            ids=self.ids, counts=[len(s) for s in self.ids], truncated=[False] * len(self.ids)
        )


def plan_late(
    tokenizer: Tokenizer,
    texts: list[str],
    max_tokens: int,
    prompt: Prompt | None,
    spec: ChunkingSpec,
) -> LatePlan:
    if spec.spans is not None and len(spec.spans) != len(texts):
        raise InvalidRequest(
            f"chunking.spans has {len(spec.spans)} lists for {len(texts)} inputs; give one per input",
            param="chunking.spans",
        )
    splits, room = _split_texts(tokenizer, texts, prompt, max_tokens)
    out = LatePlan([], [], [])
    for i, (text, sp) in enumerate(zip(texts, splits, strict=True)):
        n = len(sp.head) + len(sp.body) + len(sp.tail)
        if n > max_tokens:
            raise PayloadTooLarge(
                f"input {i} has {n} tokens, more than this model's window of {max_tokens}; "
                "late chunking runs the whole input in one pass (use mode windows, or "
                "truncate: chunk, for longer inputs)",
                param=f"input[{i}]",
            )
        offsets = sp.offsets or []
        if spec.spans is not None:
            chunks = [(int(a), int(b)) for a, b in spec.spans[i]]
            for j, (a, b) in enumerate(chunks):
                if not 0 <= a < b <= len(text):
                    raise InvalidRequest(
                        f"chunking.spans[{i}][{j}] = [{a}, {b}] is not a span of input {i} "
                        f"(0 <= start < end <= {len(text)} characters)",
                        param=f"chunking.spans[{i}][{j}]",
                    )
        else:
            chunks = chunking.sentence_chunks(text, offsets, min(spec.max_tokens or room, room))
        index = []
        for j, span in enumerate(chunks):
            idx = chunking.tokens_in(offsets, span)
            if not idx:
                raise InvalidRequest(
                    f"chunk {j} of input {i} ({span[0]}..{span[1]}) holds no token",
                    param=f"chunking.spans[{i}][{j}]",
                )
            index.append([len(sp.head) + k for k in idx])
        out.ids.append(sp.head + sp.body + sp.tail)
        out.chunks.append(chunks)
        out.index.append(index)
    return out


async def embed_late(
    replica: Replica, late: LatePlan, dimensions: int | None, normalize: bool
) -> tuple[Vectors, list[list[ChunkVector]]]:
    """Each input's token states in one pass, pooled per chunk; also each input's
    token-weighted mean of its chunks."""
    states = await asyncio.gather(*(replica.token_states(ids) for ids in late.ids))
    pooled = []
    kept = []
    for s, chunks, index in zip(states, late.chunks, late.index, strict=True):
        vecs = chunking.late_pool(s, index)
        if dimensions is not None:
            vecs = vecs[:, :dimensions]
        if normalize:
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        counts = [len(x) for x in index]
        pooled.append(chunking.pool(vecs, counts, normalize))
        kept.append(
            [
                ChunkVector(a, b, n, np.ascontiguousarray(v, dtype=np.float32))
                for (a, b), n, v in zip(chunks, counts, vecs, strict=True)
            ]
        )
    return np.stack(pooled), kept


@dataclass(slots=True)
class LateResult:
    vectors: Vectors
    tokens: Tokenized
    chunks: list[list[ChunkVector]]
    tokenize_s: float
    inference_s: float


async def late(
    handle: ModelVersion,
    replica: Replica,
    inputs: list[str] | list[list[int]],
    prompt: Prompt | None,
    options: _Options,
    limits: RequestLimitsConfig,
    admission: Admission | None,
) -> LateResult:
    """A late-chunking request: checked, planned (off the loop), charged, run."""
    info = replica.info
    spec = options.chunking
    assert info is not None and spec is not None
    if not isinstance(inputs[0], str):
        raise InvalidRequest("late chunking takes texts, not token ids", param="chunking")
    if not info.token_states:
        raise InvalidRequest(
            f"model {handle.name}'s engine does not return token states; "
            "late chunking needs them (use mode windows)",
            param="chunking.mode",
        )
    texts: list[str] = inputs
    _no_empty(texts)
    t_tok = time.monotonic()
    plan = await asyncio.to_thread(
        plan_late, handle.tokenizer, texts, info.max_tokens, prompt, spec
    )
    tokens = plan.tokens
    if tokens.total > limits.max_request_tokens:
        raise PayloadTooLarge(
            f"the request has {tokens.total} tokens; the limit is "
            f"{limits.max_request_tokens} per request",
            param="input",
        )
    if admission is not None:
        await admission.charge_tokens(tokens.total)
    t_run = time.monotonic()
    do_norm = info.normalize if options.normalize is None else options.normalize
    vectors, kept = await embed_late(replica, plan, options.dimensions, do_norm)
    return LateResult(
        np.ascontiguousarray(vectors, dtype=np.float32),
        tokens,
        kept,
        t_run - t_tok,
        time.monotonic() - t_run,
    )

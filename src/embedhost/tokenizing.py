"""``/tokenize`` and ``/decode`` without the transport: a model's own tokenizer (the one the
API process counts and truncates with), answered in TEI's shapes.

``/tokenize`` gives, per input, every token as ``{id, text, special, start, stop}`` with
TEI's UTF-8 *byte* offsets into the input (null for special tokens, and for the tokens
of a prompt, which is not part of the input); ``char_offsets`` adds ``char_start`` and
``char_stop``, Python string indices, so that ``text[char_start:char_stop]`` slices.
The limits are the embedding routes': inputs per request and tokens per request.
"""

from __future__ import annotations

import asyncio
from itertools import accumulate
from typing import Any

from embedhost.chunking import Encoding
from embedhost.config import RequestLimitsConfig
from embedhost.errors import InvalidRequest, PayloadTooLarge
from embedhost.models.version import ModelVersion
from embedhost.tokenization import Prompt, Tokenizer, check_texts

# Below this many characters the work is cheaper inline than a hop to a thread.
_INLINE_CHARS = 8192


def _byte_index(text: str) -> list[int] | None:
    """UTF-8 byte offset of each character index (0..len); None for ASCII (the same)."""
    if text.isascii():
        return None
    return [0, *accumulate(len(c.encode("utf-8", "surrogatepass")) for c in text)]


def _tokens(text: str, enc: Encoding, shift: int, char_offsets: bool) -> list[dict[str, Any]]:
    where = _byte_index(text)
    out: list[dict[str, Any]] = []
    for tid, tok, special, off in zip(enc.ids, enc.tokens, enc.special, enc.offsets, strict=True):
        span = None
        if off is not None and off[1] > shift:
            span = (max(off[0] - shift, 0), off[1] - shift)
        item: dict[str, Any] = {"id": tid, "special": special}
        if span is None:
            item.update(text=tok, start=None, stop=None)
        else:
            a, b = span
            item.update(
                text=text[a:b],
                start=a if where is None else where[a],
                stop=b if where is None else where[b],
            )
        if char_offsets:
            item.update(char_start=span[0] if span else None, char_stop=span[1] if span else None)
        out.append(item)
    return out


def tokenize_texts(
    tokenizer: Tokenizer,
    texts: list[str],
    add_special: bool,
    prompt: Prompt | None,
    char_offsets: bool,
    max_tokens: int,
) -> list[list[dict[str, Any]]]:
    check_texts(texts)
    p = prompt.text if prompt is not None else ""
    encs = tokenizer.encode_offsets([p + t for t in texts], add_special)
    total = sum(len(e.ids) for e in encs)
    if total > max_tokens:
        raise PayloadTooLarge(
            f"the request has {total} tokens; the limit is {max_tokens} per request",
            param="inputs",
        )
    return [_tokens(t, e, len(p), char_offsets) for t, e in zip(texts, encs, strict=True)]


async def tokenize(
    handle: ModelVersion,
    limits: RequestLimitsConfig,
    texts: list[str],
    *,
    add_special: bool = True,
    prompt_name: str | None = None,
    char_offsets: bool = False,
) -> list[list[dict[str, Any]]]:
    _check_count(len(texts), limits, "inputs")
    for i, t in enumerate(texts):
        if not t:
            raise InvalidRequest(f"input {i} is an empty string", param="inputs")
    prompt = handle.prompts.resolve(None, prompt_name) if prompt_name is not None else None
    args = (handle.tokenizer, texts, add_special, prompt, char_offsets, limits.max_request_tokens)
    if sum(len(t) for t in texts) <= _INLINE_CHARS:
        return tokenize_texts(*args)
    return await asyncio.to_thread(tokenize_texts, *args)


async def decode(
    handle: ModelVersion,
    limits: RequestLimitsConfig,
    seqs: list[list[int]],
    *,
    skip_special: bool = True,
) -> list[str]:
    _check_count(len(seqs), limits, "ids")
    total = sum(len(s) for s in seqs)
    if total > limits.max_request_tokens:
        raise PayloadTooLarge(
            f"the request has {total} tokens; the limit is {limits.max_request_tokens}",
            param="ids",
        )
    vocab = handle.tokenizer.vocab_size
    for i, s in enumerate(seqs):
        bad = next((t for t in s if t >= vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"ids[{i}]: token id {bad} is outside this model's vocabulary (size {vocab})",
                param="ids",
            )
    if total <= _INLINE_CHARS // 4:
        return handle.tokenizer.decode(seqs, skip_special)
    return await asyncio.to_thread(handle.tokenizer.decode, seqs, skip_special)


def _check_count(n: int, limits: RequestLimitsConfig, param: str) -> None:
    if n == 0:
        raise InvalidRequest(f"{param} must not be empty", param=param)
    if n > limits.max_inputs_per_request:
        raise PayloadTooLarge(
            f"{n} inputs in one request; the limit is {limits.max_inputs_per_request}",
            param=param,
        )

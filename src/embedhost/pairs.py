"""Query-document pairs for a cross-encoder, built in the API process as token ids.

A reranker reads ``prefix + query + middle + document + suffix`` (``[CLS] q [SEP] d
[SEP]`` for BERT; the layout is the model tokenizer's own: :func:`load_template`). The
API process tokenizes query and documents once, without special tokens, and lays out
each pair itself, so that it counts every token (usage, limits), decides what happens to
a document longer than the model's window before anything is queued, and the worker and
the cache (keyed on the token ids: model version + query ids + document ids) only see
finished pairs.

A document longer than the window is, by the model's rule (:data:`Mode`): split into
overlapping windows, each scored, the best one counting (``window``, Cohere's behaviour);
cut at the end or the start (``right``/``left``); or refused (``refuse``, 4xx naming the
document). A query takes at most half the window (cut at the end past that, refused
under ``refuse``), so that every window has room for the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from embedhost import catalog
from embedhost.config import ModelConfig
from embedhost.engines.gguf import GGUFModel
from embedhost.engines.gguf_rerank import gguf_pair_template
from embedhost.engines.rerank import PairTemplate, pair_template
from embedhost.errors import InputTooLong, InvalidRequest
from embedhost.tokenization import Tokenizer, check_texts

Mode = Literal["window", "right", "left", "refuse"]

OVERLAP = 4
"""Consecutive windows share a quarter (1/OVERLAP) of the room for the document, so that
a passage cut by one window's edge is whole in the next."""


@dataclass(slots=True)
class Pairs:
    """The sequences to score and which document each belongs to."""

    seqs: list[list[int]]
    owner: list[int]
    """For each sequence, the index of its document (several when windowed)."""
    windows: list[int]
    """Sequences per document."""
    truncated: list[bool]
    """Per document: some of it (or of its query) was not scored."""

    @property
    def tokens(self) -> int:
        """Every token scored, windows and special tokens included (usage)."""
        return sum(len(s) for s in self.seqs)


def load_template(config: ModelConfig) -> PairTemplate:
    """The model tokenizer's pair layout (the same file the API process tokenizes with)."""
    tok = config.engine_options.get("tokenizer")
    path = config.resolved_path()
    if tok:
        file = Path(str(tok))
        return pair_template(file / "tokenizer.json" if file.is_dir() else file)
    if catalog.row(config.engine).tokenizer is catalog.TokenizerKind.GGUF:
        model = GGUFModel(path, vocab_only=True)
        try:
            return gguf_pair_template(model)
        finally:
            model.free()
    return pair_template(path / "tokenizer.json")


def content_ids(tokenizer: Tokenizer, texts: list[str], param: str) -> list[list[int]]:
    """Each text's token ids without the model's special tokens."""
    try:
        check_texts(texts)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message.replace("input", param, 1), param=param) from None
    pre, suf = tokenizer.prefix_specials, tokenizer.suffix_specials
    out = []
    for ids in tokenizer.encode_batch(texts):
        out.append(ids[pre : len(ids) - suf] if suf else ids[pre:])
    return out


def build(
    template: PairTemplate,
    queries: list[list[int]],
    docs: list[list[int]],
    max_tokens: int,
    mode: Mode,
    *,
    max_doc_tokens: int | None = None,
    query_param: str = "query",
    doc_param: str = "documents",
) -> Pairs:
    """The pairs of ``docs[i]`` with ``queries[i]`` (one query for all: pass it once),
    laid out by ``template`` within ``max_tokens``."""
    one_query = len(queries) == 1
    room_for_query = max_tokens // 2 - template.overhead
    if room_for_query < 1:
        raise InvalidRequest(f"the model's window of {max_tokens} tokens leaves no room")
    cut_queries: list[tuple[list[int], bool]] = []
    for qi, q in enumerate(queries):
        if len(q) <= room_for_query:
            cut_queries.append((q, False))
            continue
        where = query_param if one_query else f"{query_param}[{qi}]"
        if mode == "refuse":
            raise InputTooLong(
                f"{where} has {len(q)} tokens, more than half of this model's window of "
                f"{max_tokens}; shorten it or allow truncation",
                param=where,
            )
        cut_queries.append((q[:room_for_query], True))
    seqs: list[list[int]] = []
    owner: list[int] = []
    windows: list[int] = []
    truncated: list[bool] = []
    for i, d in enumerate(docs):
        q, q_cut = cut_queries[0 if one_query else i]
        cut = q_cut
        if max_doc_tokens is not None and len(d) > max_doc_tokens:
            d, cut = d[:max_doc_tokens], True
        room = max_tokens - template.overhead - len(q)
        if len(d) <= room:
            parts = [d]
        elif mode == "refuse":
            raise InputTooLong(
                f"{doc_param}[{i}] has {len(d)} tokens; with the query it is over this "
                f"model's window of {max_tokens} tokens, and truncation is off",
                param=f"{doc_param}[{i}]",
            )
        elif mode == "right":
            parts, cut = [d[:room]], True
        elif mode == "left":
            parts, cut = [d[len(d) - room :]], True
        else:
            parts = [d[s : s + room] for s in window_starts(len(d), room)]
        for part in parts:
            seqs.append(template.build(q, part))
            owner.append(i)
        windows.append(len(parts))
        truncated.append(cut)
    return Pairs(seqs, owner, windows, truncated)


def window_starts(n: int, room: int) -> list[int]:
    """Starts of windows of ``room`` tokens over ``n`` tokens, overlapping by a
    1/:data:`OVERLAP` of ``room``; the last one ends at the end."""
    if n <= room:
        return [0]
    stride = max(room - room // OVERLAP, 1)
    starts = list(range(0, n - room, stride))
    starts.append(n - room)
    return starts

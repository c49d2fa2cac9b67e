"""Every API-process tokenizer, token counting and truncation.

The API process tokenizes so that it can count (usage, limits), truncate or refuse before
anything is queued, and so that the worker only ever receives token ids. Truncation keeps
the model's special tokens (``[CLS] ... [SEP]``) and cuts the content between them.

Two tokenizers: :class:`HFTokenizer` (a Hugging Face ``tokenizer.json``, the fast Rust
tokenizer) and :class:`GGUFTokenizer`, which loads only a GGUF file's vocabulary
(``vocab_only``, so the API process stays small) and tokenizes with llama.cpp's own
tokenizer, so that counting and truncation agree with what the engine sees.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from embedhost.config import ModelConfig
from embedhost.engines.gguf import GGUFModel
from embedhost.errors import InputTooLong, InvalidRequest

Policy = Literal["right", "left", "refuse"]

# A lone UTF-16 surrogate (U+D800..U+DFFF) is legal in a JSON string ("\ud800") but is no
# character: it cannot be encoded as UTF-8, so no tokenizer can take it.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer(Protocol):
    """What the API process needs from a model's tokenizer."""

    vocab_size: int
    prefix_specials: int
    """Special tokens the model adds before the content (e.g. [CLS])."""
    suffix_specials: int
    """Special tokens the model adds after the content (e.g. [SEP])."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the model's special tokens, without truncation."""
        ...


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (the fast Rust tokenizer)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer as _Tok

        file = path / "tokenizer.json" if path.is_dir() else path
        self._tok = _Tok.from_file(str(file))
        # Truncation and padding are ours to do: the file's own settings would cut silently.
        self._tok.no_truncation()
        self._tok.no_padding()
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        probe = self._tok.encode("a")
        mask = probe.special_tokens_mask
        self.prefix_specials = _leading_ones(mask)
        self.suffix_specials = _leading_ones(mask[::-1]) if self.prefix_specials < len(mask) else 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if len(texts) == 1:
            return [self._tok.encode(texts[0]).ids]
        return [e.ids for e in self._tok.encode_batch(texts)]


def _leading_ones(mask: list[int]) -> int:
    n = 0
    for v in mask:
        if v != 1:
            break
        n += 1
    return n


class GGUFTokenizer:
    """The model's own llama.cpp tokenizer, vocabulary only (no weights)."""

    def __init__(self, path: Path) -> None:
        self._model = GGUFModel(path, vocab_only=True)
        self._lock = threading.Lock()  # one token buffer per model
        self.vocab_size = self._model.n_vocab
        with_specials = self._model.tokenize("a", add_special=True)
        content = self._model.tokenize("a", add_special=False)
        self.prefix_specials, self.suffix_specials = _special_counts(with_specials, content)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        with self._lock:
            return [self._model.tokenize(t, add_special=True) for t in texts]

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.free()


def _special_counts(with_specials: list[int], content: list[int]) -> tuple[int, int]:
    """How many special tokens the model adds before and after the content."""
    n = len(content)
    for start in range(len(with_specials) - n + 1):
        if with_specials[start : start + n] == content:
            return start, len(with_specials) - start - n
    return 0, 0


@dataclass(slots=True)
class Tokenized:
    ids: list[list[int]]
    counts: list[int]
    truncated: list[bool]

    @property
    def total(self) -> int:
        return sum(self.counts)


def fit(
    ids: list[int], max_tokens: int, policy: Policy, prefix: int, suffix: int, index: int
) -> tuple[list[int], bool]:
    """Cut one sequence to ``max_tokens`` keeping its special tokens, or refuse."""
    n = len(ids)
    if n <= max_tokens:
        return ids, False
    if policy == "refuse":
        raise InputTooLong(
            f"input {index} has {n} tokens, more than this model's limit of {max_tokens}; "
            "shorten it or send truncate=true",
            param="input",
        )
    keep = max_tokens - prefix - suffix
    if keep <= 0:
        raise InvalidRequest(f"max_input_tokens {max_tokens} leaves no room for content")
    head, body, tail = ids[:prefix], ids[prefix : n - suffix], ids[n - suffix :] if suffix else []
    body = body[:keep] if policy == "right" else body[len(body) - keep :]
    return head + body + tail, True


def check_texts(texts: list[str]) -> None:
    """Refuse a text no tokenizer can take (a lone surrogate, as a client that cut a UTF-16
    string in half sends), naming the input, before any tokenizer sees it."""
    for i, t in enumerate(texts):
        # isascii() is O(1) on CPython's compact strings: only non-ASCII texts are scanned.
        if not t.isascii() and (m := _SURROGATE.search(t)) is not None:
            raise InvalidRequest(
                f"input {i} contains a lone UTF-16 surrogate (U+{ord(m.group()):04X}) at "
                f"character {m.start()}, which is not valid Unicode text; "
                "send the whole character (a surrogate pair) or drop it",
                param=f"input[{i}]",
            )


def prepare_texts(
    tokenizer: Tokenizer, texts: list[str], max_tokens: int, policy: Policy
) -> Tokenized:
    check_texts(texts)
    raw = tokenizer.encode_batch(texts)
    return _fit_all(raw, max_tokens, policy, tokenizer.prefix_specials, tokenizer.suffix_specials)


def prepare_ids(
    tokenizer: Tokenizer, seqs: list[list[int]], max_tokens: int, policy: Policy
) -> Tokenized:
    """Token-id input is used as given (no special tokens added); ids must be in the vocabulary."""
    vocab = tokenizer.vocab_size
    for i, s in enumerate(seqs):
        bad = next((t for t in s if t >= vocab), None)
        if bad is not None:
            raise InvalidRequest(
                f"input {i}: token id {bad} is outside this model's vocabulary (size {vocab})",
                param="input",
            )
    return _fit_all(seqs, max_tokens, policy, 0, 0)


def _fit_all(
    raw: list[list[int]], max_tokens: int, policy: Policy, prefix: int, suffix: int
) -> Tokenized:
    ids: list[list[int]] = []
    truncated: list[bool] = []
    for i, seq in enumerate(raw):
        cut, was = fit(seq, max_tokens, policy, prefix, suffix, i)
        ids.append(cut)
        truncated.append(was)
    return Tokenized(ids=ids, counts=[len(s) for s in ids], truncated=truncated)


def load_tokenizer(config: ModelConfig) -> Tokenizer:
    """The tokenizer the API process uses for one model."""
    path = config.resolved_path()
    tok_path = config.engine_options.get("tokenizer")
    if tok_path:
        return HFTokenizer(Path(str(tok_path)))
    if config.engine == "llama_cpp":
        return GGUFTokenizer(path)
    return HFTokenizer(path)
